"""Losses of certified training."""

from __future__ import annotations

import keras
from keras import ops


def standard_loss(labels, logits):
    """Per-sample cross-entropy of the clean logits."""
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def certified_loss(labels, margin_lower):
    """Per-sample cross-entropy on the negated margin lower bounds.

    `-margin_lower` are the worst-case logits relative to the label (the label's entry
    is 0), so the loss is log(1 + sum over j != y of exp(-margin_lower_j)): it upper
    bounds the cross-entropy at every input in the box, and is small only when every
    margin is provably large.
    """
    return keras.losses.sparse_categorical_crossentropy(labels, -margin_lower, from_logits=True)


def certified_mask(labels, margin_lower):
    """True per sample where every margin against another class is positive."""
    own = ops.one_hot(labels, ops.shape(margin_lower)[-1], dtype="bool")
    return ops.all(ops.logical_or(own, margin_lower > 0), axis=-1)
