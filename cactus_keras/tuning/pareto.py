"""The clean versus certified accuracy trade-off of a search: Pareto fronts, JSON, plot."""

from __future__ import annotations

import json
import os

from cactus_keras import atomic_write
from cactus_keras.tuning.objectives import CERTIFIED, CLEAN, COMPRESSED, MEAN


def trial_records(tuner):
    """One dict per trial of `tuner` (in start order): id, status, hyperparameters,
    metrics (at the step KerasTuner kept: the best epoch of the objective), score."""
    oracle = tuner.oracle
    trials = getattr(oracle, "trials", {})
    order = list(getattr(oracle, "start_order", [])) or sorted(trials)
    records = []
    for trial_id in order:
        trial = trials[trial_id]
        metrics = {}
        for name in trial.metrics.metrics:
            value = trial.metrics.get_last_value(name)
            if value is not None:
                metrics[name] = float(value)
        records.append(
            {
                "trial_id": trial.trial_id,
                "status": str(trial.status),
                "hyperparameters": dict(trial.hyperparameters.values),
                "metrics": metrics,
                "score": None if trial.score is None else float(trial.score),
                "best_step": trial.best_step,
            }
        )
    return records


def pareto_front(points):
    """Indices of the points (pairs (x, y), both maximized) that no other point
    dominates (at least as good in both, better in one), sorted by x.

    Example:

    ```python
    from cactus_keras.tuning import pareto_front

    # (clean accuracy, certified accuracy) of three trials; the third is dominated.
    points = [(0.90, 0.60), (0.80, 0.70), (0.75, 0.65)]
    assert sorted(pareto_front(points)) == [0, 1]
    ```
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def pareto_report(records):
    """Fronts of clean accuracy against certified accuracy (full network, and the
    compressed worst target when measured), over the completed trials."""
    done = [r for r in records if r["status"] == "COMPLETED" and CLEAN in r["metrics"]]
    fronts = {}
    for name in (CERTIFIED, COMPRESSED, MEAN):
        measured = [r for r in done if name in r["metrics"]]
        if not measured:
            continue
        points = [(r["metrics"][CLEAN], r["metrics"][name]) for r in measured]
        fronts[name] = [
            {"trial_id": measured[i]["trial_id"], "clean_accuracy": points[i][0],
             "certified_accuracy": points[i][1],
             "hyperparameters": measured[i]["hyperparameters"]}
            for i in pareto_front(points)
        ]
    return {
        "x": CLEAN,
        "fronts": fronts,
        "trials": [
            {"trial_id": r["trial_id"], "hyperparameters": r["hyperparameters"],
             **{k: r["metrics"][k] for k in (CLEAN, CERTIFIED, COMPRESSED, MEAN) if k in r["metrics"]}}
            for r in done
        ],
    }


_LABELS = {CERTIFIED: "full network", COMPRESSED: "compressed (worst target)"}
_MARKERS = {CERTIFIED: "o", COMPRESSED: "s"}


def plot_pareto(report, path, title="", best_trial_id=None):
    """Clean against certified accuracy of every completed trial, the Pareto fronts as
    lines, the best trial circled. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(n for n in (CERTIFIED, COMPRESSED) if n in report["fronts"]):
        color = cycle[index]
        trials = [t for t in report["trials"] if name in t]
        xs, ys = [t[CLEAN] for t in trials], [t[name] for t in trials]
        ax.scatter(xs, ys, marker=_MARKERS[name], color=color, alpha=0.6,
                   label=f"{_LABELS[name]}: trials")
        front = report["fronts"][name]
        ax.plot([p["clean_accuracy"] for p in front], [p["certified_accuracy"] for p in front],
                "-", color=color, lw=1.5, label=f"{_LABELS[name]}: Pareto front")
        for t in trials:
            hp = t["hyperparameters"]
            text = f"{t['trial_id']}"
            if "standard_weight" in hp:
                text += f" λ={hp['standard_weight']:.2f}"
            if "awp_radius" in hp and name == CERTIFIED:
                text += f" η={hp['awp_radius']:.2g}"
            ax.annotate(text, (t[CLEAN], t[name]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=color)
        if best_trial_id is not None:
            best = [t for t in trials if t["trial_id"] == best_trial_id]
            if best:
                ax.scatter([best[0][CLEAN]], [best[0][name]], s=180, facecolors="none",
                           edgecolors="black", lw=1.5,
                           label="best trial (objective)" if index == 0 else None)
    ax.set_xlabel("clean accuracy (validation)")
    ax.set_ylabel("certified accuracy (validation, target epsilon)")
    ax.set_title(title or "clean vs certified accuracy of the trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(path, data):
    # Round-trip through str for the odd non-JSON value (numpy scalars in trial logs).
    return atomic_write.write_json(path, json.loads(json.dumps(data, default=str)))
