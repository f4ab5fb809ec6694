"""Magnitude pruning masks, computed in `keras.ops` from the current weights.

A mask is a constant multiplied into a kernel (`kernel * mask`), so gradients reach the
original weights through the kept entries and the network's variables never change.
"""

from __future__ import annotations

import keras
from keras import ops

from cactus_keras.compression import tfmot_interop

PRUNING_METHODS = ("global_l1", "local_l1", "global_l2_structured")


def check_pruning_method(method):
    if method not in PRUNING_METHODS:
        raise ValueError(
            f"Unknown pruning method {method!r}. Expected one of "
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


def output_is_excluded(method, exclude_output):
    """Structured pruning never removes output units: each one is a class."""
    return exclude_output or method == "global_l2_structured"


def prunable_kernels(network, exclude_output=False):
    """Kernel variables of the Dense and Conv layers of `network`, in graph order.

    Biases and batch norm are never pruned. With `exclude_output`, the kernel of the
    layer producing the logits is left out.
    """
    from cactus_keras.bounds.graph import parse_network

    graph = parse_network(network)
    kernels = []
    output_layer = None
    for node in graph.nodes:
        layer = node.rule.layer
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
            output_layer = layer
            if all(layer.kernel is not k for k in kernels):
                kernels.append(layer.kernel)
    if exclude_output and output_layer is not None:
        kernels = [k for k in kernels if k is not output_layer.kernel]
    if not kernels:
        raise ValueError(
            f"Network '{network.name}' has no prunable kernel (Dense or Conv layers"
            + (", other than the output layer" if exclude_output else "")
            + "); pruning needs at least one."
        )
    return kernels


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


def magnitude_masks(kernels, ratio, method="global_l1"):
    """Masks for `kernels` (tensors) pruning a fraction `ratio` of them.

    `ratio` may be a tensor (sampled in the graph). For the structured method the
    ratio counts output units (channels), which all have their whole fan-in removed.

    Example:

    ```python
    masks = magnitude_masks([layer.kernel for layer in dense_layers], 0.5)
    ```
    """
    check_pruning_method(method)
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
    """Fraction of zeros over all masks (a float)."""
    total = sum(int(ops.size(m)) for m in masks)
    zeros = sum(float(ops.convert_to_numpy(ops.sum(1.0 - m))) for m in masks)
    return zeros / total


@keras.saving.register_keras_serializable(package="cactus_keras")
class Pruning:
    """Pruned members of the CACTUS compression set.

    Each training step adds `num_samples` members whose kernels are the network's
    kernels times magnitude masks recomputed from the current weights, at a ratio that
    is fixed or drawn uniformly from `ratio=(low, high)` per batch. The masks are
    constants: gradients reach the original weights through the kept entries.

    Args:
        ratio: a fraction in [0, 1), or a `(low, high)` range sampled per batch. In
            evaluation a range uses its midpoint.
        method: "global_l1", "local_l1" or "global_l2_structured".
        num_samples: pruned members per step (each with its own sampled ratio).
        refresh_every: recompute masks (and resample the ratio) every this many steps;
            in between the last masks are reused.
        exclude_output: leave the kernel of the output layer unpruned (always so for
            "global_l2_structured", where an output unit is a whole class).
        schedule: optional callable `schedule(step) -> ratio`, or a TF-MOT pruning
            schedule (`tfmot.sparsity.keras.PolynomialDecay`, `ConstantSparsity`); it
            replaces `ratio` and drives the ratio over training.
        name: member name used in metrics (`certified_accuracy_<name>`).

    Example:

    ```python
    model = cactus_keras.CactusModel(
        net, epsilon=0.1, compression=[cactus_keras.Pruning(ratio=(0.25, 0.75))]
    )
    ```
    """

    def __init__(
        self,
        ratio=(0.25, 0.75),
        method="global_l1",
        num_samples=1,
        refresh_every=1,
        exclude_output=False,
        schedule=None,
        name="pruned",
    ):
        if isinstance(ratio, (tuple, list)):
            if len(ratio) != 2:
                raise ValueError(f"`ratio` range must be (low, high), got {ratio!r}.")
            low, high = (check_ratio(r) for r in ratio)
            if low > high:
                raise ValueError(f"`ratio` range must have low <= high, got {ratio!r}.")
            self.ratio = (low, high)
        else:
            self.ratio = check_ratio(ratio)
        self.method = check_pruning_method(method)
        for value, arg in ((num_samples, "num_samples"), (refresh_every, "refresh_every")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer, got {value!r}.")
        self.num_samples = num_samples
        self.refresh_every = refresh_every
        self.exclude_output = bool(exclude_output)
        self.excludes_output = output_is_excluded(self.method, self.exclude_output)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"`schedule` must be callable (step -> ratio), got {schedule!r}.")
        self.schedule = schedule
        self.name = name

    def member_names(self):
        if self.num_samples == 1:
            return [self.name]
        return [f"{self.name}_{i + 1}" for i in range(self.num_samples)]

    def sample_ratio(self, step, seed_generator, training):
        if self.schedule is not None:
            value = self.schedule(step)
            # TF-MOT schedules return (should_prune, sparsity).
            if isinstance(value, (tuple, list)):
                value = value[1]
            return ops.cast(value, "float32")
        if not isinstance(self.ratio, tuple):
            return ops.convert_to_tensor(self.ratio, "float32")
        low, high = self.ratio
        if not training or low == high:
            return ops.convert_to_tensor((low + high) / 2, "float32")
        return keras.random.uniform((), low, high, seed=seed_generator)

    def get_config(self):
        if self.schedule is None:
            schedule = None
        elif tfmot_interop.is_tfmot_schedule(self.schedule):
            schedule = tfmot_interop.schedule_to_config(self.schedule)
        else:
            schedule = keras.saving.serialize_keras_object(self.schedule)
        return {
            "ratio": list(self.ratio) if isinstance(self.ratio, tuple) else self.ratio,
            "method": self.method,
            "num_samples": self.num_samples,
            "refresh_every": self.refresh_every,
            "exclude_output": self.exclude_output,
            "schedule": schedule,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = config.get("schedule")
        if isinstance(schedule, dict) and "tfmot_schedule" in schedule:
            config["schedule"] = tfmot_interop.schedule_from_config(schedule)
        elif schedule is not None:
            config["schedule"] = keras.saving.deserialize_keras_object(schedule)
        if isinstance(config["ratio"], list):
            config["ratio"] = tuple(config["ratio"])
        return cls(**config)
