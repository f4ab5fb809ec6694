"""Magnitude pruning masks, computed in `keras.ops` from the current weights.

A mask is a constant multiplied into a kernel (`kernel * mask`), so gradients reach the
original weights through the kept entries and the network's variables never change.
"""

from __future__ import annotations

from keras import ops

from cactus_keras.vocabulary import PRUNING_METHODS


def check_pruning_method(pruning_method, name="pruning_method"):
    method = pruning_method
    if method not in PRUNING_METHODS:
        raise ValueError(
            f"Unknown `{name}` {method!r}. Expected one of "
            f"{', '.join(PRUNING_METHODS)}: 'global_l1' (smallest |w| over all pruned "
            "kernels), 'local_l1' (the same ratio in each kernel), "
            "'global_l2_structured' (whole output channels/units with the smallest L2 "
            "norm per sqrt(fan-in) over all pruned kernels)."
        )
    return method


def check_ratio(ratio, name="ratio"):
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number in [0, 1), got {ratio!r}.") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1) (the fraction of weights removed), got {ratio!r}."
        )
    return value


def output_is_excluded(pruning_method, exclude_output):
    """Structured pruning never removes output units: each one is a class."""
    return exclude_output or pruning_method == "global_l2_structured"


def _keep_largest(scores, count_pruned):
    """Mask (same shape as the 1-D `scores`) that zeroes the `count_pruned` smallest.

    One sort finds the threshold; ties at the threshold are broken by position (as a
    stable sort would), so ties never change the number pruned.
    """
    count_pruned = ops.cast(count_pruned, "int32")
    threshold = ops.take(ops.sort(scores), ops.maximum(count_pruned - 1, 0))
    below = scores < threshold
    at = scores == threshold
    rank_among_ties = ops.cumsum(ops.cast(at, "int32"))
    from_ties = count_pruned - ops.sum(ops.cast(below, "int32"))
    pruned = ops.logical_or(below, ops.logical_and(at, rank_among_ties <= from_ties))
    pruned = ops.logical_and(pruned, count_pruned > 0)
    return 1.0 - ops.cast(pruned, "float32")


def _count(ratio, total):
    return ops.cast(ops.round(ops.cast(ratio, "float32") * total), "int32")


def magnitude_masks(kernels, ratio, pruning_method="global_l1"):
    """Masks for `kernels` (tensors) pruning a fraction `ratio` of them.

    `ratio` may be a tensor (sampled in the graph). For the structured method the
    ratio counts output units (channels), which all have their whole fan-in removed.

    Example:

    ```python
    from cactus_keras.compression import magnitude_masks, compressible_kernels, sparsity

    masks = magnitude_masks(compressible_kernels(net), 0.5)   # one 0/1 mask per kernel
    print(sparsity(masks))                                # 0.5
    ```
    """
    method = check_pruning_method(pruning_method)
    kernels = [ops.convert_to_tensor(k) for k in kernels]
    if method == "local_l1":
        masks = []
        for kernel in kernels:
            flat = ops.reshape(ops.abs(kernel), (-1,))
            size = int(flat.shape[0])
            masks.append(ops.reshape(_keep_largest(flat, _count(ratio, size)), kernel.shape))
        return masks
    if method == "global_l1":
        scores = [ops.reshape(ops.abs(k), (-1,)) for k in kernels]
        sizes = [int(s.shape[0]) for s in scores]
        keep = _keep_largest(ops.concatenate(scores, axis=0), _count(ratio, sum(sizes)))
        masks, start = [], 0
        for kernel, size in zip(kernels, sizes):
            masks.append(ops.reshape(keep[start : start + size], kernel.shape))
            start += size
        return masks
    # Structured: one score per output unit (the kernel's last axis), its L2 norm over
    # sqrt(fan-in), i.e. the RMS of its weights. Raw norms grow with the fan-in, and
    # ranking them globally would remove whole early layers of a CNN.
    norms = [
        ops.sqrt(ops.mean(ops.square(ops.reshape(k, (-1, k.shape[-1]))), axis=0)) for k in kernels
    ]
    sizes = [int(n.shape[0]) for n in norms]
    keep = _keep_largest(ops.concatenate(norms, axis=0), _count(ratio, sum(sizes)))
    masks, start = [], 0
    for kernel, size in zip(kernels, sizes):
        unit = keep[start : start + size]
        masks.append(ops.broadcast_to(unit, kernel.shape))
        start += size
    return masks


def sparsity(masks):
    """Fraction of zeros over all masks (a float).

    Example:

    ```python
    from cactus_keras.compression import magnitude_masks, compressible_kernels, sparsity

    masks = magnitude_masks(compressible_kernels(net), 0.7, pruning_method="local_l1")
    print(sparsity(masks))                     # about 0.7
    ```
    """
    total = sum(int(ops.size(m)) for m in masks)
    zeros = sum(float(ops.convert_to_numpy(ops.sum(1.0 - m))) for m in masks)
    return zeros / total
