"""Schedules of certified training as callbacks writing non-trainable variables.

The variables live in the model (`model.epsilon`, `model.standard_weight`,
`model.member_weight`), so
compiled train steps read them and never retrace when a schedule changes them.
"""

from __future__ import annotations

import keras

SHAPES = ("linear", "smooth")


def smooth_ramp(progress, beta=4.0, mid=0.25):
    """The smoothed ramp of CROWN-IBP (Zhang et al. 2020, Shi et al. 2021).

    Polynomial growth (power `beta`) for the first `mid` of the ramp, then linear, with
    matching value and slope at `mid`: small epsilons grow gently while the bounds are
    still loose.
    """
    progress = min(max(progress, 0.0), 1.0)
    scale = 1.0 / (mid ** (beta - 1) * (beta * (1 - mid) + mid))
    if progress <= mid:
        return scale * progress**beta
    at_mid = scale * mid**beta
    return at_mid + (1 - at_mid) * (progress - mid) / (1 - mid)


class VariableRamp(keras.callbacks.Callback):
    """Moves a scalar variable of the model from `start` to `end` during training.

    Before `start_epoch` the variable holds `start`; over the next `ramp_epochs` it
    follows the ramp `shape` ("linear" or "smooth"), updated every batch; then it holds
    `end`. `end=None` uses the model's target (`model.<attribute>_target`), so a resumed
    run ramps to the same value. The value at the end of each epoch is written into
    the epoch logs under the attribute's name (`epsilon`, `standard_weight`).
    """

    def __init__(self, attribute, ramp_epochs, start_epoch=0, start=0.0, end=None, shape="linear"):
        super().__init__()
        if shape not in SHAPES:
            raise ValueError(f"`shape` must be one of {', '.join(SHAPES)}, got {shape!r}.")
        if ramp_epochs < 0 or start_epoch < 0:
            raise ValueError("`ramp_epochs` and `start_epoch` must be >= 0.")
        self.attribute = attribute
        self.ramp_epochs = ramp_epochs
        self.start_epoch = start_epoch
        self.start = float(start)
        self.end = end
        self.shape = shape
        self._epoch = 0

    def _variable(self):
        variable = getattr(self.model, self.attribute, None)
        if not isinstance(variable, keras.Variable):
            raise ValueError(
                f"{type(self).__name__} needs a model with a `{self.attribute}` variable "
                "(a cactus_keras.CactusModel)."
            )
        return variable

    def on_train_begin(self, logs=None):
        self._variable()
        if self.end is None:
            self.end = float(getattr(self.model, f"{self.attribute}_target"))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def value_at(self, epoch_progress):
        """The value at a (fractional) epoch."""
        if self.ramp_epochs == 0:
            progress = 1.0 if epoch_progress >= self.start_epoch else 0.0
        else:
            progress = (epoch_progress - self.start_epoch) / self.ramp_epochs
        progress = min(max(progress, 0.0), 1.0)
        if self.shape == "smooth":
            progress = smooth_ramp(progress)
        return self.start + (self.end - self.start) * progress

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps") if self.params else None
        fraction = batch / steps if steps else 0.0
        self._variable().assign(self.value_at(self._epoch + fraction))

    def on_epoch_end(self, epoch, logs=None):
        # The value of the epoch's last batch goes into the epoch logs (CSVLogger,
        # History), so a log says at which epsilon and lambda its metrics were measured.
        if logs is not None:
            logs[self.attribute] = float(keras.ops.convert_to_numpy(self._variable().value))


class EpsilonRamp(VariableRamp):
    """Ramps the training epsilon from 0 to the model's target.

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[cactus_keras.EpsilonRamp(ramp_epochs=5,
                                                                   start_epoch=1)])
    ```
    """

    def __init__(self, ramp_epochs, start_epoch=0, shape="smooth", start=0.0, end=None):
        super().__init__("epsilon", ramp_epochs, start_epoch, start, end, shape)


class StandardWeightRamp(VariableRamp):
    """Moves lambda (the standard-loss weight) from `start` (1: standard training) to
    the model's value, typically alongside the epsilon ramp."""

    def __init__(self, ramp_epochs, start_epoch=0, shape="linear", start=1.0, end=None):
        super().__init__("standard_weight", ramp_epochs, start_epoch, start, end, shape)


class MemberWeightRamp(VariableRamp):
    """Moves the weight of the compressed members (`model.member_weight`) from `start`
    (0: the full network alone) to the model's `member_weight`: a curriculum in which
    the members come in as training goes on.

    With the epsilon ramp's epochs and shape (the defaults: "smooth"), the weight is
    proportional to the training epsilon, `w(t) = member_weight * epsilon(t) / epsilon`:
    the members count as much as the certified loss does, and not at all in the
    warm-up.

    Example:

    ```python
    model = cactus_keras.CactusModel(net, 0.1, compression=[cactus_keras.Pruning((0.5, 0.95))],
                                     member_weight=1.0)
    model.fit(x, y, epochs=10, callbacks=[cactus_keras.EpsilonRamp(5, start_epoch=1),
                                          cactus_keras.MemberWeightRamp(5, start_epoch=1)])
    ```
    """

    def __init__(self, ramp_epochs, start_epoch=0, shape="smooth", start=0.0, end=None):
        super().__init__("member_weight", ramp_epochs, start_epoch, start, end, shape)
