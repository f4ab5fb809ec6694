"""`Pruning`: pruned members whose masks come from the current weights each step."""

from __future__ import annotations

import keras
from keras import ops

from cactus_keras.compression.masks import (
    check_pruning_method,
    check_ratio,
    magnitude_masks,
    output_is_excluded,
)
from cactus_keras import vocabulary
from cactus_keras.compression.member import CompressionMember, register_member
from cactus_keras.compression.ratio_schedules import as_ratio_schedule


def check_ratio_range(ratio, name="ratio"):
    """A fraction in [0, 1), or a `(low, high)` range of them, as a float or a tuple."""
    if isinstance(ratio, (tuple, list)):
        if len(ratio) != 2:
            raise ValueError(f"`{name}` range must be (low, high), got {ratio!r}.")
        low, high = (check_ratio(r, name) for r in ratio)
        if low > high:
            raise ValueError(f"`{name}` range must have low <= high, got {ratio!r}.")
        return (low, high)
    return check_ratio(ratio, name)


@register_member(vocabulary.PRUNING)
class Pruning(CompressionMember):
    """Pruned members of the CACTUS compression set.

    Each training step adds `num_samples` members whose kernels are the network's
    kernels times magnitude masks recomputed from the current weights, at a ratio that
    is fixed or drawn uniformly from `ratio=(low, high)` per batch. The masks are
    constants: gradients reach the original weights through the kept entries.

    Args:
        ratio: a fraction in [0, 1), or a `(low, high)` range sampled per batch. In
            evaluation a range uses its midpoint.
        pruning_method: "global_l1", "local_l1" or "global_l2_structured".
        num_samples: pruned members per step (each with its own sampled ratio).
        refresh_every: recompute masks (and resample the ratio) every this many steps;
            in between the last masks are reused.
        exclude_output: leave the kernel of the output layer unpruned (always so for
            "global_l2_structured", where an output unit is a whole class).
        schedule: optional callable `schedule(step) -> ratio` (for example
            `PolynomialRatio`), or a TF-MOT pruning schedule (`PolynomialDecay`,
            `ConstantSparsity`, read into its `keras.ops` twin); it replaces `ratio`.
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
        pruning_method="global_l1",
        num_samples=1,
        refresh_every=1,
        exclude_output=False,
        schedule=None,
        name="pruned",
    ):
        super().__init__(exclude_output=exclude_output, name=name)
        self.ratio = check_ratio_range(ratio)
        self.pruning_method = check_pruning_method(pruning_method)
        for value, arg in ((num_samples, "num_samples"), (refresh_every, "refresh_every")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer, got {value!r}.")
        self.num_samples = num_samples
        self.refresh_every = refresh_every
        self.schedule = as_ratio_schedule(schedule)

    @property
    def excludes_output(self):
        return output_is_excluded(self.pruning_method, self.exclude_output)

    def names(self):
        if self.num_samples == 1:
            return [self.name]
        return [f"{self.name}_{i + 1}" for i in range(self.num_samples)]

    def sample_ratio(self, step, seed_generator, training):
        """The ratio of one member at `step` (a tensor)."""
        if self.schedule is not None:
            return ops.cast(self.schedule(step), "float32")
        if not isinstance(self.ratio, tuple):
            return ops.convert_to_tensor(self.ratio, "float32")
        low, high = self.ratio
        if not training or low == high:
            return ops.convert_to_tensor((low + high) / 2, "float32")
        return keras.random.uniform((), low, high, seed=seed_generator)

    def build(self, kernels, add_variable):
        if self.refresh_every == 1:
            return None
        # Masks kept between refreshes, one set per sampled member.
        return {
            name: [add_variable(k.shape, "ones", f"mask_{name}_{i}") for i, k in enumerate(kernels)]
            for name in self.names()
        }

    def compress(self, kernels, context):
        def fresh():
            ratio = self.sample_ratio(context.step, context.seed_generator, context.training)
            return magnitude_masks(kernels, ratio, self.pruning_method)

        store = context.state[context.name] if context.state else None
        if store is not None and context.training:
            refresh = ops.equal(context.step % self.refresh_every, 0)
            masks = ops.cond(refresh, fresh, lambda: [v.value for v in store])
            for variable, mask in zip(store, masks):
                variable.assign(mask)
        else:
            masks = fresh()
        return [k * ops.stop_gradient(m) for k, m in zip(kernels, masks)]

    def get_config(self):
        return {
            "ratio": list(self.ratio) if isinstance(self.ratio, tuple) else self.ratio,
            "pruning_method": self.pruning_method,
            "num_samples": self.num_samples,
            "refresh_every": self.refresh_every,
            "exclude_output": self.exclude_output,
            "schedule": None if self.schedule is None else keras.saving.serialize_keras_object(self.schedule),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("schedule") is not None:
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
