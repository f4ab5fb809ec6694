"""Callbacks that keep certified training safe."""

from __future__ import annotations

import math

import keras


class NonFiniteLossError(RuntimeError):
    """Raised by `StopOnNonFiniteLoss(raise_error=True)`."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at a NaN or infinite loss and restores the last good weights.

    The weights are snapshotted at the start of every epoch; on a non-finite batch loss
    training stops, the snapshot is restored and a message says what happened and what
    to try. `CactusModel.fit` adds this callback unless one is given.

    Example:

    ```python
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[cactus_keras.training.StopOnNonFiniteLoss(raise_error=True)])
    ```
    """

    def __init__(self, raise_error=False):
        super().__init__()
        self.raise_error = raise_error
        self._snapshot = None
        self._snapshot_epoch = None
        self.stopped_at = None

    def on_epoch_begin(self, epoch, logs=None):
        self._snapshot = [v.numpy() if hasattr(v, "numpy") else keras.ops.convert_to_numpy(v) for v in self.model.weights]
        self._snapshot_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        self.stopped_at = (self._snapshot_epoch, batch)
        if self._snapshot is not None:
            for variable, value in zip(self.model.weights, self._snapshot):
                variable.assign(value)
        self.model.stop_training = True
        message = (
            f"Training stopped: the loss became {loss} at epoch {self._snapshot_epoch + 1}, "
            f"batch {batch + 1}. The weights from the start of that epoch were restored. "
            "Try a lower learning rate, a longer epsilon ramp (EpsilonRamp), gradient "
            "clipping (e.g. optimizer=keras.optimizers.Adam(clipnorm=10)), or IBP "
            "initialization (cactus_keras.training.ibp_initialize)."
        )
        print(message)
        if self.raise_error:
            raise NonFiniteLossError(message)
