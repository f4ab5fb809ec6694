"""Batch slices of the compressed members: a cheaper compression set.

With `CactusModel(..., member_batch_fraction=f)` the full network sees the whole batch
and each compressed network only a slice of it, so that a set of the full network and
one member costs about `1 + f` IBP steps instead of 2 (the paper's open question 1).

The slice of the compressed network at `position` (0 for the first, in the order of the
members' `names()`) at training step `step` is `size = max(1, round(f * batch))`
consecutive samples starting at `((position + step) * size) mod batch`, wrapping around
the end of the batch. So different members get different slices (disjoint while
`members * size <= batch`), and the slices move by one slice each step: over a few
steps every member is trained on every position of the batch, which matters when the
batches are not in random order (`ShuffledBatches` sorts each batch by sample index).
A contiguous slice is taken rather than a strided one because it needs no divisibility
of the batch, and rotation gives the same coverage.

Under `tf.distribute` each replica slices its own part of the global batch (the union
of the replicas' slices is the member's sample, and its loss is the weighted mean over
that union); under JAX a step sees the global batch and slices it.
"""

from __future__ import annotations

import math

from keras import ops

from cactus_keras import validation


def check_member_batch_fraction(fraction, name="member_batch_fraction"):
    """A fraction in (0, 1]; 1 evaluates every member on the whole batch."""
    value = validation.as_number(fraction, name, "a number in (0, 1]")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"`{name}` must be in (0, 1] (the share of each batch a compressed member is "
            f"evaluated on; 1 = the whole batch), got {fraction!r}."
        )
    return value


def slice_size(batch_size, fraction):
    """`max(1, round(fraction * batch_size))` (half rounds up); an int for an int batch
    size, else a scalar int32 tensor."""
    if isinstance(batch_size, int):
        return max(1, math.floor(fraction * batch_size + 0.5))
    # float64: the same rounding as the int branch (float32 rounds 0.7 * 5 below 3.5).
    scaled = ops.cast(batch_size, "float64") * fraction + 0.5
    return ops.maximum(ops.cast(ops.floor(scaled), "int32"), 1)


def member_slice(batch_size, fraction, position, step):
    """The positions in the batch of the slice of the compressed network at `position`
    at training step `step` (see the module docstring).

    Example:

    ```python
    member_slice(8, 0.25, position=1, step=0)   # [2, 3]
    member_slice(8, 0.25, position=1, step=3)   # [0, 1] (starts at 8 mod 8)
    ```
    """
    size = slice_size(batch_size, fraction)
    start = ((position + ops.cast(step, "int32")) * size) % batch_size
    return (start + ops.arange(size, dtype="int32")) % batch_size
