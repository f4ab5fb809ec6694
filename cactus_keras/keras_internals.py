"""Every use of a private Keras or KerasTuner API, in one place.

Keras has no public way to read a functional model's graph (its nodes by depth), to
update the metrics passed to `compile` from an overridden `compute_metrics`, or to ask
KerasTuner whether this process is the chief of a distributed search. When a Keras
release changes one of these, this module is the only one to mend.
"""

from __future__ import annotations


def nodes_by_depth(functional):
    """`{depth: [Node]}` of a functional model, or None for other models."""
    return getattr(functional, "_nodes_by_depth", None)


def sequential_functional(model):
    """The functional model a built Sequential model wraps (None before it is built)."""
    return getattr(model, "_functional", None)


def compiled_metrics(model):
    """The `CompileMetrics` container of the metrics given to `compile`, or None."""
    return getattr(model, "_compile_metrics", None)


def tuner_has_chief():
    """True when KerasTuner runs distributed (a chief oracle is configured)."""
    from keras_tuner.src.distribute import utils

    return utils.has_chief_oracle()


def tuner_is_chief():
    """True in the chief process of a distributed KerasTuner search."""
    from keras_tuner.src.distribute import utils

    return utils.is_chief_oracle()
