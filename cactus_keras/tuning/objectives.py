"""Search objectives of CACTUS tuning: certified accuracy of the full network, of the
network at target compressions, and their mean, logged as epoch metrics.

The metrics are written into the epoch logs by `CompressedCertification` (a Keras
callback that `CactusHyperModel.fit` adds), so every KerasTuner tuner can use them as
`objective` with direction "max". Nothing here imports keras_tuner at module level.
"""

from __future__ import annotations


import keras
import numpy as np

from cactus_keras import validation, vocabulary
# The target parser lives below tuning so that the compression search can share it.
from cactus_keras.compression.targets import (  # noqa: F401
    TARGET_FORMS,
    CompressionTarget,
    _parse_target,
    parse_targets,
)

# The metric names (validation split, hence `val_`) and their short aliases.
CERTIFIED = "val_certified_accuracy"
COMPRESSED = "val_certified_accuracy_compressed"
MEAN = "val_certified_accuracy_mean"
CLEAN = "val_clean_accuracy"
OBJECTIVES = {"certified": CERTIFIED, "compressed": COMPRESSED, "mean": MEAN}
# The suffix of an objective's value in an epoch still at a ramped training epsilon.
DURING_RAMP = "_during_ramp"
DEFAULT_OBJECTIVE = "mean"


def metric_names(targets):
    """Every metric `CompressedCertification` writes for these targets."""
    names = [CERTIFIED]
    if targets:
        names += [COMPRESSED, MEAN]
        for target in targets:
            names += [f"{CERTIFIED}_{target.key}", f"{CLEAN}_{target.key}"]
    return names


def _valid_objectives_text():
    return ", ".join(f"{alias!r} ({name})" for alias, name in OBJECTIVES.items())


def check_objective_name(name, targets=None):
    """The metric name of an objective name or alias; a ValueError naming the valid
    ones if it is not one. `targets` (parsed) checks that compressed objectives have a
    compression to measure."""
    if not isinstance(name, str):
        raise TypeError(f"An objective name must be a string, got {name!r}.")
    key = name.strip()
    metric = OBJECTIVES.get(key.lower(), key if key in OBJECTIVES.values() else None)
    if metric is None:
        raise ValueError(
            f"Unknown objective {name!r}; expected one of {_valid_objectives_text()}. "
            "They are maximized."
        )
    if targets is not None and not targets and metric != CERTIFIED:
        raise ValueError(
            f"The objective {name!r} needs a compression target (e.g. prune:0.7 or quantize:8); "
            f"without one only {CERTIFIED!r} is measured."
        )
    return metric


def resolve_objective(objective=DEFAULT_OBJECTIVE, targets=None):
    """A `keras_tuner.Objective` (or a list of them) for a CACTUS search.

    Accepts an alias ("certified", "compressed", "mean"), a metric name
    ("val_certified_accuracy_mean"), a `keras_tuner.Objective` with one of those names
    and direction "max", a comma-separated string or a list of these (KerasTuner sums a
    list). Raises ValueError naming the valid objectives for anything else.
    """
    import keras_tuner

    if isinstance(objective, str) and "," in objective:
        objective = [o for o in objective.split(",") if o.strip()]
    if isinstance(objective, (list, tuple)):
        if not objective:
            raise ValueError(f"No objective given; expected one of {_valid_objectives_text()}.")
        resolved = [resolve_objective(o, targets) for o in objective]
        names = [o.name for o in resolved]
        if len(set(names)) != len(names):
            raise ValueError(f"Objectives are repeated: {', '.join(names)}.")
        return resolved if len(resolved) > 1 else resolved[0]
    if isinstance(objective, keras_tuner.Objective):
        metric = check_objective_name(objective.name, targets)
        if objective.direction != "max":
            raise ValueError(
                f"The objective {objective.name!r} is an accuracy: its direction must be "
                f"'max', got {objective.direction!r}."
            )
        return keras_tuner.Objective(metric, "max")
    return keras_tuner.Objective(check_objective_name(objective, targets), "max")


def objective_names(objective):
    """The metric names of a resolved objective (one or a list)."""
    if isinstance(objective, (list, tuple)):
        return [o.name for o in objective]
    return [objective.name]


class CompressedCertification(keras.callbacks.Callback):
    """Writes certified accuracies at the target epsilon into the epoch logs.

    At the end of each epoch it certifies the network (`model.network`) on the
    validation samples at the model's target epsilon (not the ramped training one), and
    each compressed copy of it (pruned by magnitude, or with fake-quantized kernels) with
    `cactus_keras.evaluate_compressed`. It writes:

    - `val_certified_accuracy`: the full network (this replaces the model's own
      validation metric, which is measured at the current, possibly ramped, epsilon);
    - `val_certified_accuracy_<target>` and `val_clean_accuracy_<target>` per target
      (`prune70`, `quantize8`, ...);
    - `val_certified_accuracy_compressed`: the worst target;
    - `val_certified_accuracy_mean`: the mean of the full and the compressed value.

    The objectives are read only at full epsilon: in an epoch whose training epsilon
    (`model.epsilon`, at its last batch) is still below the target, the three values
    above are written as `<name>_during_ramp` instead, and the model's own
    `val_certified_accuracy` (at the ramped epsilon) is taken out of the logs, so that
    no tuner picks a warm-up or ramp epoch as the best. `records` keeps each epoch's
    logs and whether it was at full epsilon (`CactusHyperModel.fit` reports from it).

    Add it before other callbacks that read these logs (KerasTuner's, CSVLogger).

    Example:

    ```python
    targets = cactus_keras.tuning.parse_targets("prune:0.7,quantize:8")
    history = model.fit(x, y, epochs=1, verbose=0, validation_data=(x_val, y_val), callbacks=[
        cactus_keras.tuning.CompressedCertification((x_val, y_val), targets)])
    print(sorted(history.history))    # val_certified_accuracy, ... per target and their mean
    ```
    """

    def __init__(self, validation_data, targets=(), epsilon=None, bound="ibp", batch_size=None,
                 input_range="auto"):
        super().__init__()
        x, y = validation_data[:2]
        self.x = np.asarray(x, "float32")
        self.y = np.asarray(y).reshape(-1)
        if len(self.x) == 0:
            raise ValueError("CompressedCertification needs at least one validation sample.")
        self.targets = parse_targets(list(targets))
        self.epsilon = None if epsilon is None else validation.check_epsilon(epsilon)
        self.bound = bound
        self.batch_size = batch_size
        self.input_range = input_range
        self.records = []

    def measure(self, model):
        """The metrics (a dict) of a CactusModel or network, at this callback's epsilon
        (default: the model's target epsilon)."""
        from cactus_keras.certification import certify, evaluate_compressed

        network = getattr(model, "network", model)
        epsilon = self.epsilon
        if epsilon is None:
            epsilon = float(getattr(model, "epsilon_target"))
        input_range = self.input_range
        if isinstance(input_range, str) and input_range == "auto":
            input_range = getattr(model, "input_range", (0.0, 1.0))
        full = certify(network, self.x, self.y, epsilon, bound=self.bound,
                       batch_size=self.batch_size, input_range=input_range, verbose=0)
        logs = {CERTIFIED: float(full.certified_accuracy)}
        compressed = []
        for target in self.targets:
            if target.form == vocabulary.PRUNE:
                table = evaluate_compressed(network, self.x, self.y, epsilon,
                                            ratios=[target.ratio],
                                            pruning_method=target.pruning_method,
                                            bound=self.bound, batch_size=self.batch_size,
                                            input_range=input_range)
            else:
                table = evaluate_compressed(network, self.x, self.y, epsilon, ratios=[],
                                            bits=[target.bits], bound=self.bound,
                                            batch_size=self.batch_size, input_range=input_range)
            row = table.rows[0]
            logs[f"{CERTIFIED}_{target.key}"] = float(row["certified_accuracy"])
            logs[f"{CLEAN}_{target.key}"] = float(row["clean_accuracy"])
            compressed.append(float(row["certified_accuracy"]))
        if compressed:
            logs[COMPRESSED] = min(compressed)
            logs[MEAN] = 0.5 * (logs[CERTIFIED] + logs[COMPRESSED])
        return logs

    @staticmethod
    def at_full_epsilon(model):
        """Whether the model's training epsilon has reached its target (True for a
        model without an epsilon schedule)."""
        variable, target = getattr(model, "epsilon", None), getattr(model, "epsilon_target", None)
        if not isinstance(variable, keras.Variable) or target is None:
            return True
        value = float(keras.ops.convert_to_numpy(variable.value))
        return value >= float(target) * (1.0 - 1e-6)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        measured = self.measure(self.model)
        full = self.at_full_epsilon(self.model)
        if not full:
            for name in (CERTIFIED, COMPRESSED, MEAN):
                logs.pop(name, None)
                if name in measured:
                    measured[f"{name}{DURING_RAMP}"] = measured.pop(name)
        # The same dict goes on to the callbacks after this one (History included).
        logs.update(measured)
        self.records.append((epoch, dict(logs), full))


def full_epsilon_history(records):
    """A `keras.callbacks.History` of the epochs at full epsilon among `records`
    (`CompressedCertification.records`), which a tuner picks the best epoch from.

    A fit that never reaches full epsilon (a Hyperband round shorter than the ramp, or
    a one-epoch trial) reports its last epoch, with the objectives measured at the
    target epsilon on the network as it is.
    """
    chosen = [(epoch, logs) for epoch, logs, full in records if full]
    if not chosen and records:
        epoch, logs, _ = records[-1]
        logs = dict(logs)
        for name in (CERTIFIED, COMPRESSED, MEAN):
            if f"{name}{DURING_RAMP}" in logs:
                logs[name] = logs[f"{name}{DURING_RAMP}"]
        chosen = [(epoch, logs)]
    history = keras.callbacks.History()
    keys = set.intersection(*(set(logs) for _, logs in chosen)) if chosen else set()
    history.epoch = [epoch for epoch, _ in chosen]
    history.history = {k: [logs[k] for _, logs in chosen] for k in sorted(keys)
                       if not k.endswith(DURING_RAMP)}
    return history
