"""Pruning-ratio schedules: the ratio of a `Pruning` member as a function of the step.

They are plain `keras.ops` callables, so they run on every backend and save with the
model. TF-MOT's `PolynomialDecay` and `ConstantSparsity` are read into their twins here
(`as_ratio_schedule`) from their configs alone: TF-MOT is never imported, and a saved
model loads without it.

Example:

```python
schedule = cactus_keras.compression.PolynomialRatio(0.1, 0.9, begin_step=0, end_step=1000)
member = cactus_keras.Pruning(schedule=schedule)
```
"""

from __future__ import annotations

import keras
from keras import ops

from cactus_keras.compression.masks import check_ratio


def _check_steps(begin_step, end_step):
    for value, name in ((begin_step, "begin_step"), (end_step, "end_step")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` must be an integer step, got {value!r}.")
    if begin_step < 0:
        raise ValueError(f"`begin_step` must be >= 0, got {begin_step}.")


@keras.saving.register_keras_serializable(package="cactus_keras")
class ConstantRatio:
    """The same ratio at every step (TF-MOT's `ConstantSparsity`).

    Example:

    ```python
    member = cactus_keras.Pruning(schedule=cactus_keras.compression.ConstantRatio(0.7))
    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[member])
    ```
    """

    def __init__(self, ratio, begin_step=0, end_step=-1):
        self.ratio = check_ratio(ratio)
        _check_steps(begin_step, end_step)
        self.begin_step, self.end_step = begin_step, end_step

    def __call__(self, step):
        return ops.convert_to_tensor(self.ratio, "float32")

    def get_config(self):
        return {"ratio": self.ratio, "begin_step": self.begin_step, "end_step": self.end_step}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="cactus_keras")
class PolynomialRatio:
    """`final + (initial - final) * (1 - p) ** power` with p the progress from
    `begin_step` to `end_step`, clipped to [0, 1] (TF-MOT's `PolynomialDecay`).

    Example:

    ```python
    schedule = cactus_keras.compression.PolynomialRatio(0.1, 0.9, begin_step=0, end_step=1000)
    print(float(schedule(500)))          # 0.9 + (0.1 - 0.9) * 0.5 ** 3 = 0.8
    member = cactus_keras.Pruning(schedule=schedule)
    ```
    """

    def __init__(self, initial_ratio, final_ratio, begin_step, end_step, power=3):
        self.initial_ratio = check_ratio(initial_ratio, "initial_ratio")
        self.final_ratio = check_ratio(final_ratio, "final_ratio")
        _check_steps(begin_step, end_step)
        if end_step <= begin_step:
            raise ValueError(
                f"`end_step` must be after `begin_step`, got {begin_step} and {end_step}."
            )
        self.begin_step, self.end_step = begin_step, end_step
        self.power = float(power)

    def __call__(self, step):
        progress = ops.cast(step - self.begin_step, "float32") / float(self.end_step - self.begin_step)
        progress = ops.clip(progress, 0.0, 1.0)
        return self.final_ratio + (self.initial_ratio - self.final_ratio) * (1.0 - progress) ** self.power

    def get_config(self):
        return {"initial_ratio": self.initial_ratio, "final_ratio": self.final_ratio,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _is_tfmot(schedule):
    return type(schedule).__module__.startswith("tensorflow_model_optimization")


def as_ratio_schedule(schedule):
    """`schedule` as a callable `step -> ratio`: TF-MOT schedules become their twins
    above, other callables are kept (they must be Keras-serializable to be saved)."""
    if schedule is None:
        return None
    if _is_tfmot(schedule):
        name, config = type(schedule).__name__, schedule.get_config()["config"]
        if name == "PolynomialDecay":
            return PolynomialRatio(config["initial_sparsity"], config["final_sparsity"],
                                   config["begin_step"], config["end_step"], config["power"])
        if name == "ConstantSparsity":
            return ConstantRatio(config["target_sparsity"], config["begin_step"], config["end_step"])
        raise TypeError(
            f"TF-MOT schedule {name} is not supported as a pruning `schedule`; use "
            "PolynomialDecay, ConstantSparsity or a callable step -> ratio."
        )
    if not callable(schedule):
        raise TypeError(f"`schedule` must be callable (step -> ratio), got {schedule!r}.")
    return schedule
