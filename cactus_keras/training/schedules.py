"""Schedules of certified training as callbacks writing variables.

The ramps write non-trainable variables of the model (`model.epsilon`,
`model.standard_weight`, `model.member_weight`), and `EpochLearningRate` the
optimizer's learning rate, so compiled train steps read them and never retrace when a
schedule changes them.
"""

from __future__ import annotations

import math

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
    the epoch logs under the attribute's name (`epsilon`, `standard_weight`,
    `member_weight`).

    Example:

    ```python
    # Ramp lambda (the standard-loss weight) from 1 down to 0.25 over the first epoch.
    model = cactus_keras.CactusModel(net, epsilon=0.1, standard_weight=0.25)
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[
        cactus_keras.training.VariableRamp("standard_weight", ramp_epochs=1, start=1.0)])
    ```
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

    def final_value(self, epochs, steps_per_epoch):
        """The value the last batch of `epochs` epochs of `steps_per_epoch` batches
        trains at (batch b of epoch e trains at `value_at(e + b / steps_per_epoch)`):
        below `end` when the ramp ends with training or later.

        Example:

        ```python
        EpsilonRamp(1, start_epoch=1, end=0.1).final_value(epochs=2, steps_per_epoch=1)  # 0.0
        ```
        """
        steps = max(int(steps_per_epoch), 1)
        return self.value_at(epochs - 1 + (steps - 1) / steps)

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
    model.fit(x, y, epochs=3, verbose=0, callbacks=[
        cactus_keras.EpsilonRamp(ramp_epochs=1, start_epoch=1)])   # epsilon 0, then 0.1
    ```
    """

    def __init__(self, ramp_epochs, start_epoch=0, shape="smooth", start=0.0, end=None):
        super().__init__("epsilon", ramp_epochs, start_epoch, start, end, shape)
        # The epsilon the last batch trains at, once `fit` says how long it trains.
        self.reached = None

    def on_train_begin(self, logs=None):
        """Says at the start, in one line, when the ramp cannot reach its target
        (it ends with training or later, or one batch per epoch leaves its last
        epoch at the epoch's start value); `reached` holds the final epsilon."""
        super().on_train_begin(logs)
        epochs = self.params.get("epochs") if self.params else None
        steps = self.params.get("steps") if self.params else None
        if not epochs or not steps:
            return
        self.reached = self.final_value(epochs, steps)
        message = unreached_message(self, epochs, steps, self.reached)
        if message:
            print(message)


def unreached_message(ramp, epochs, steps_per_epoch, reached):
    """One warning line when `reached` (the final epsilon) is below the ramp's target,
    else None."""
    target = float(ramp.end)
    if not reached < target * (1 - 1e-6):
        return None
    last = ramp.start_epoch + ramp.ramp_epochs
    fix = f"train at least {last + 1} epochs, or give a shorter ramp"
    if steps_per_epoch < 10:
        fix += " or more batches per epoch (a smaller batch size)"
    return (
        f"Warning: epsilon cannot reach its target {target:g}: the ramp ends at epoch "
        f"{last} of {epochs} ({steps_per_epoch} batch{'es' if steps_per_epoch > 1 else ''} "
        f"per epoch), so the last batch trains at epsilon {reached:.4g}. To train at the "
        f"target, {fix}."
    )


class StandardWeightRamp(VariableRamp):
    """Moves lambda (the standard-loss weight) from `start` (1: standard training) to
    the model's value, typically alongside the epsilon ramp.

    Example:

    ```python
    model = cactus_keras.CactusModel(net, epsilon=0.1, standard_weight=0.25)
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cactus_keras.EpsilonRamp(1),
                                                    cactus_keras.StandardWeightRamp(1)])
    ```
    """

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
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[
        cactus_keras.EpsilonRamp(1, start_epoch=1),
        cactus_keras.MemberWeightRamp(1, start_epoch=1)])
    ```
    """

    def __init__(self, ramp_epochs, start_epoch=0, shape="smooth", start=0.0, end=None):
        super().__init__("member_weight", ramp_epochs, start_epoch, start, end, shape)


# Learning-rate schedules (API `lr_schedule`, TOML `lr_schedule`, CLI `--lr-schedule`).
LR_SCHEDULES = ("constant", "step", "cosine")
# Shi et al. (2021) and CTBench decay the learning rate x0.2 at about 70% and 85% of
# training; the step schedule's defaults.
DEFAULT_LR_DECAY_AT = (0.7, 0.85)
DEFAULT_LR_DECAY_FACTOR = 0.2


def default_lr_decay_epochs(epochs):
    """The step schedule's decay epochs when none are given: about 70% and 85% of
    `epochs` (rounded half up; those at 0 or `epochs` or repeated dropped)."""
    found = []
    for fraction in DEFAULT_LR_DECAY_AT:
        epoch = int(fraction * epochs + 0.5)
        if 1 <= epoch < epochs and epoch not in found:
            found.append(epoch)
    return tuple(found)


def check_lr_schedule(lr_schedule, epochs, lr_decay_epochs=None, lr_decay_factor=None):
    """Validates a learning-rate schedule; returns `(lr_decay_epochs, lr_decay_factor)`
    with the step schedule's defaults filled in ((), None for the others).

    A decay epoch k means: after k epochs the learning rate is multiplied by
    `lr_decay_factor` (PyTorch's MultiStepLR milestones), so k must lie in
    [1, epochs - 1]. The step options are errors with another schedule (they would be
    silently ignored).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"Unknown `lr_schedule` {lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)} "
            "('constant'; 'step': multiplied by `lr_decay_factor` at `lr_decay_epochs`; "
            "'cosine': cosine decay to 0 over the epochs)."
        )
    if lr_schedule != "step":
        for name, value in (("lr_decay_epochs", lr_decay_epochs), ("lr_decay_factor", lr_decay_factor)):
            if value is not None:
                raise ValueError(
                    f"`{name}` is an option of the 'step' `lr_schedule`, not of "
                    f"{lr_schedule!r}; remove it or use `lr_schedule` 'step'."
                )
        return (), None
    if lr_decay_factor is None:
        lr_decay_factor = DEFAULT_LR_DECAY_FACTOR
    ok = isinstance(lr_decay_factor, (int, float)) and not isinstance(lr_decay_factor, bool)
    if not ok or not 0 < lr_decay_factor <= 1:
        raise ValueError(
            "`lr_decay_factor` (the learning rate is multiplied by it at each decay epoch) "
            f"must be a number in (0, 1], got {lr_decay_factor!r}."
        )
    if lr_decay_epochs is None:
        return default_lr_decay_epochs(epochs), float(lr_decay_factor)
    given = lr_decay_epochs
    if isinstance(given, int) and not isinstance(given, bool):
        given = (given,)
    valid = isinstance(given, (list, tuple)) and all(
        isinstance(e, int) and not isinstance(e, bool) for e in given)
    if valid:
        given = tuple(given)
        valid = all(1 <= e < epochs for e in given) and list(given) == sorted(set(given))
    if not valid:
        raise ValueError(
            "`lr_decay_epochs` must be increasing whole numbers of epochs in [1, epochs - 1] "
            f"= [1, {epochs - 1}] (the learning rate decays after that many epochs), got "
            f"{lr_decay_epochs!r}."
        )
    return given, float(lr_decay_factor)


def learning_rate_at(epoch, learning_rate, lr_schedule, epochs, lr_decay_epochs=(),
                     lr_decay_factor=None):
    """The learning rate of (0-based) `epoch`: `learning_rate` times the schedule's
    factor. "step": `lr_decay_factor` to the number of decay epochs <= `epoch`;
    "cosine": `(1 + cos(pi * epoch / epochs)) / 2`.

    Example:

    ```python
    from cactus_keras.training import learning_rate_at

    rates = [learning_rate_at(e, 1e-3, "step", 20, lr_decay_epochs=(14, 17), lr_decay_factor=0.2)
             for e in range(20)]
    assert rates[0] == 1e-3 and abs(rates[14] - 2e-4) < 1e-12
    ```
    """
    if lr_schedule == "step":
        return learning_rate * lr_decay_factor ** sum(1 for e in lr_decay_epochs if e <= epoch)
    if lr_schedule == "cosine":
        return learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return learning_rate


class EpochLearningRate(keras.callbacks.LearningRateScheduler):
    """Sets the optimizer's learning rate at the start of every epoch from the epoch
    alone (`learning_rate_at`), and writes it into the epoch logs (`learning_rate`).

    The rate depends on the epoch number, not on the optimizer's state or on earlier
    calls, so a run resumed at epoch E (`keras.callbacks.BackupAndRestore`, `cactus-keras
    train --resume`) trains each epoch at the rate of an uninterrupted run. It works on
    every backend: the rate is a variable of the optimizer, assigned between epochs.

    Args:
        lr_schedule: "constant", "step" or "cosine".
        epochs: the epochs of the whole run (cosine's period; checks the decay epochs).
        learning_rate: the initial learning rate (of epoch 0).
        lr_decay_epochs: step: after how many epochs the rate is multiplied by
            `lr_decay_factor` (default: about 70% and 85% of `epochs`).
        lr_decay_factor: step: the factor, in (0, 1] (default 0.2).

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, y, epochs=3, verbose=0, callbacks=[
        cactus_keras.EpochLearningRate("step", epochs=3, learning_rate=1e-3,
                                       lr_decay_epochs=(2,), lr_decay_factor=0.2)])
    ```
    """

    def __init__(self, lr_schedule, epochs, learning_rate, lr_decay_epochs=None,
                 lr_decay_factor=None, verbose=0):
        epochs = int(epochs)
        if epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
        ok = isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool)
        if not ok or not learning_rate > 0:
            raise ValueError(f"`learning_rate` must be a number > 0, got {learning_rate!r}.")
        decay_epochs, decay_factor = check_lr_schedule(lr_schedule, epochs, lr_decay_epochs,
                                                       lr_decay_factor)
        self.lr_schedule = lr_schedule
        self.epochs = epochs
        self.learning_rate = float(learning_rate)
        self.lr_decay_epochs = decay_epochs
        self.lr_decay_factor = decay_factor
        super().__init__(self.rate, verbose=verbose)

    def rate(self, epoch, current=None):
        """The learning rate of `epoch` (`current`, the optimizer's, is not used)."""
        return float(learning_rate_at(epoch, self.learning_rate, self.lr_schedule, self.epochs,
                                      self.lr_decay_epochs, self.lr_decay_factor))
