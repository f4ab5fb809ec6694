"""One short line per epoch, and a per-member table at the end of training.

Keras's `verbose=2` prints every metric: with a CactusModel of several members that
is the full network's and every member's accuracies, each with a `val_` twin (about
700 characters an epoch). `EpochLine` prints the full network's (what is deployed
uncompressed) and leaves the members' to the CSV log, then sums them up per member
once training ends.
"""

from __future__ import annotations

import time

import keras

# Each member's metrics (the full network's have no suffix: `clean_accuracy`).
MEMBER_METRICS = ("clean_accuracy", "certified_accuracy")


def _format(value):
    value = float(value)
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.4g}"


class EpochLine(keras.callbacks.Callback):
    """Prints `epoch E/N - Ts - loss: ... - clean_accuracy: ... - ...` with the full
    network's metrics, the schedules' values and the learning rate; the members'
    metrics and the loss's parts go to the CSV log only. At the end of training, a
    table of the last epoch's accuracies per member.

    ```python
    model.fit(x, y, epochs=5, verbose=0, callbacks=[EpochLine(5)])
    ```
    """

    def __init__(self, epochs, print_fn=print):
        super().__init__()
        self.epochs = epochs
        self.print_fn = print_fn
        self._start = None
        self._last = None

    def _members(self):
        return [n for n in getattr(self.model, "member_names", []) if n is not None]

    def _member_keys(self):
        keys = set()
        for name in self._members():
            for metric in MEMBER_METRICS:
                keys.update((f"{metric}_{name}", f"val_{metric}_{name}"))
        return keys

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._last = logs
        hidden = self._member_keys()
        shown = [(k, v) for k, v in logs.items()
                 if k not in hidden and not k.startswith(("loss_", "val_loss_"))]
        seconds = time.perf_counter() - (self._start or time.perf_counter())
        self.print_fn(f"epoch {epoch + 1}/{self.epochs} - {seconds:.0f}s - "
                      + " - ".join(f"{k}: {_format(v)}" for k, v in shown))

    def on_train_end(self, logs=None):
        members = self._members()
        if not members or not self._last:
            return
        logs = self._last
        columns = [k for k in ("clean_accuracy", "certified_accuracy")
                   if k in logs] + [f"val_{k}" for k in ("clean_accuracy", "certified_accuracy")
                                    if f"val_{k}" in logs]
        if not columns:
            return
        width = max(len("full network"), *(len(m) for m in members))
        rows = [f"  {'member':<{width}}  " + "  ".join(f"{c:>{len(c)}}" for c in columns)]
        for name in [None, *members]:
            cells = []
            for column in columns:
                key = column if name is None else f"{column}_{name}"
                value = logs.get(key)
                cells.append(f"{'-' if value is None else _format(value):>{len(column)}}")
            rows.append(f"  {name or 'full network':<{width}}  " + "  ".join(cells))
        self.print_fn("last epoch, per member (every epoch's in the CSV log):\n" + "\n".join(rows))
