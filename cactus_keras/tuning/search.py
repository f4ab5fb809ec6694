"""Tuners for a `CactusHyperModel`, resumable searches and their written results."""

from __future__ import annotations

import json
import os

from cactus_keras import keras_internals, validation
from cactus_keras.tuning.objectives import objective_names, resolve_objective
from cactus_keras.tuning.pareto import pareto_report, plot_pareto, trial_records, write_json

TUNERS = ("random", "bayesian", "hyperband")
SEARCH_FILE = "cactus_search.json"


def check_tuner_name(tuner):
    if tuner not in TUNERS:
        raise ValueError(f"Unknown tuner {tuner!r}; expected one of {', '.join(TUNERS)}.")
    return tuner


def is_distributed_worker():
    """True in KerasTuner's distributed mode on a worker (not the chief)."""
    return keras_internals.tuner_has_chief() and not keras_internals.tuner_is_chief()


def is_distributed_chief():
    return keras_internals.tuner_is_chief()


class _CactusTunerMixin:
    """KerasTuner's Keras tuners, with a distributed worker saying which trial it runs
    (the chief's display shows the values, not who runs them)."""

    def on_trial_begin(self, trial):
        if is_distributed_worker():
            print(f"{self.tuner_id}: running trial {trial.trial_id} "
                  f"{dict(trial.hyperparameters.values)}", flush=True)
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if is_distributed_worker():
            print(f"{self.tuner_id}: trial {trial.trial_id} {trial.status}", flush=True)


def _tuner_classes():
    import keras_tuner

    return {
        name: type(f"Cactus{base.__name__}", (_CactusTunerMixin, base), {})
        for name, base in (("random", keras_tuner.RandomSearch),
                           ("bayesian", keras_tuner.BayesianOptimization),
                           ("hyperband", keras_tuner.Hyperband))
    }


def make_tuner(
    hypermodel,
    tuner="random",
    objective="mean",
    *,
    max_trials=10,
    directory="tuning",
    project_name="cactus",
    overwrite=False,
    seed=0,
    hyperband_factor=3,
    hyperband_iterations=1,
    executions_per_trial=1,
    max_consecutive_failed_trials=3,
):
    """A KerasTuner tuner ("random", "bayesian" or "hyperband") for `hypermodel`.

    The objective is validated (`cactus_keras.tuning.resolve_objective`) against the
    hypermodel's targets. An existing project in `directory/project_name` is resumed
    unless `overwrite=True`: finished trials are kept and not rerun. In KerasTuner's
    distributed mode (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`,
    `KERASTUNER_ORACLE_PORT`) the chief serves the oracle and the workers train.

    For "hyperband" the tuner decides each trial's epochs (up to `hypermodel.epochs`,
    its `max_epochs`) and the number of trials; `max_trials` is not used.

    Example:

    ```python
    from cactus_keras.tuning import CactusHyperModel, make_tuner

    hypermodel = CactusHyperModel(lambda: cactus_keras.models.cnn3((28, 28, 1), 10),
                                  epsilon=0.1, targets="prune:0.7", epochs=6)
    tuner = make_tuner(hypermodel, "hyperband", objective="certified", max_trials=20,
                       directory="runs/tune")   # resumes if runs/tune/cactus exists
    tuner.search_space_summary()
    ```
    """
    check_tuner_name(tuner)
    classes = _tuner_classes()
    resolved = resolve_objective(objective, hypermodel.targets)
    common = dict(
        hypermodel=hypermodel,
        objective=resolved,
        seed=seed,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        executions_per_trial=validation.check_positive_int(executions_per_trial, "executions_per_trial"),
        max_consecutive_failed_trials=max_consecutive_failed_trials,
    )
    if tuner == "hyperband":
        if hypermodel.epochs is None:
            raise ValueError(
                "The hyperband tuner needs `CactusHyperModel(epochs=...)`: it is the most "
                "epochs a trial gets (Hyperband's max_epochs), and the ramps are laid out over it."
            )
        if hypermodel.epochs < 2:
            raise ValueError(
                f"The hyperband tuner needs at least 2 epochs (max_epochs), got {hypermodel.epochs}."
            )
        return classes["hyperband"](
            max_epochs=hypermodel.epochs,
            factor=validation.check_positive_int(hyperband_factor, "hyperband_factor"),
            hyperband_iterations=validation.check_positive_int(hyperband_iterations, "hyperband_iterations"),
            **common,
        )
    max_trials = validation.check_positive_int(max_trials, "max_trials")
    if tuner == "bayesian":
        return classes["bayesian"](max_trials=max_trials, **common)
    return classes["random"](max_trials=max_trials, **common)


def check_resume(project_dir, search_config, save=True):
    """Writes `search_config` (a JSON-able dict of what defines the search) into the
    project (unless `save=False`), or, when it is there already, checks that a resumed
    search is the same one. Keys that may change between calls (`max_trials`) are not
    compared. Returns True when the project holds a search."""
    path = os.path.join(project_dir, SEARCH_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differ = {
            k: (saved.get(k), v) for k, v in search_config.items()
            if k not in ("max_trials",) and json.loads(json.dumps(v)) != saved.get(k)
        }
        if differ:
            details = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"{project_dir} holds a search with other settings ({details}). Resume it "
                "with the same settings, or use another --directory (or --overwrite to "
                "start over)."
            )
        return True
    if save:
        os.makedirs(project_dir, exist_ok=True)
        write_json(path, search_config)
    return False


def summarize(tuner, directory, *, command=None, search_config=None, title=""):
    """Writes the search's results into `directory`: `tuning_summary.json` (every trial,
    the best one, the Pareto fronts), `pareto.json`, `pareto.png` and
    `best_hyperparameters.json`. Returns the summary dict.

    Example:

    ```python
    import os
    from cactus_keras.tuning import CactusHyperModel, make_tuner, summarize

    hypermodel = CactusHyperModel(lambda: cactus_keras.models.cnn3((28, 28, 1), 10),
                                  epsilon=0.01, targets="prune:0.7", epochs=1)
    tuner = make_tuner(hypermodel, "random", max_trials=1, directory="runs/tune")
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), batch_size=128, verbose=0)
    summary = summarize(tuner, "runs/tune/report")
    print(sorted(os.listdir("runs/tune/report")))   # best_hyperparameters.json, pareto.json, ...
    ```
    """
    records = trial_records(tuner)
    names = objective_names(tuner.oracle.objective) if not hasattr(tuner.oracle.objective, "objectives") \
        else [o.name for o in tuner.oracle.objective.objectives]
    best_trials = [t for t in tuner.oracle.get_best_trials(1)]
    best = None
    if best_trials:
        trial = best_trials[0]
        best = {
            "trial_id": trial.trial_id,
            "hyperparameters": dict(trial.hyperparameters.values),
            "score": None if trial.score is None else float(trial.score),
            "metrics": next(r["metrics"] for r in records if r["trial_id"] == trial.trial_id),
        }
    report = pareto_report(records)
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {
        "command": command,
        "search": search_config,
        "objective": names,
        "trials_by_status": counts,
        "best": best,
        "pareto": report["fronts"],
        "trials": records,
    }
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, "tuning_summary.json"), summary)
    write_json(os.path.join(directory, "pareto.json"), report)
    if best is not None:
        write_json(os.path.join(directory, "best_hyperparameters.json"),
                   {"trial_id": best["trial_id"], "objective": names, "score": best["score"],
                    "hyperparameters": best["hyperparameters"]})
    if report["trials"]:
        plot_pareto(report, os.path.join(directory, "pareto.png"), title=title,
                    best_trial_id=best and best["trial_id"])
    return summary
