"""An experiment's results as files: results.json, results.csv, runs.csv, report.md.

Rows of the same (run, compression level) over seeds are summarised as mean and sample
standard deviation (`n` seeds; the deviation is 0 for one seed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from cactus_keras import atomic_write

KEY = ("run", "method", "form", "pruning_method", "ratio", "bits", "rounding")
VALUES = ("clean_accuracy", "certified_accuracy", "sparsity")


def _key_value(row, key):
    from cactus_keras.experiments.evaluation import row_rounding

    return row_rounding(row) if key == "rounding" else row[key]


def summarize(rows):
    """Mean/std over seeds of each (run, compression level)."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(_key_value(r, k) for k in KEY), []).append(r)
    summary = []
    for key, group in groups.items():
        entry = dict(zip(KEY, key))
        entry["seeds"] = len(group)
        entry["samples"] = group[0]["samples"]
        for value in VALUES:
            numbers = np.array([g[value] for g in group], dtype=float)
            entry[f"{value}_mean"] = float(numbers.mean())
            entry[f"{value}_std"] = float(numbers.std(ddof=1)) if len(numbers) > 1 else 0.0
        summary.append(entry)
    return summary


def _cell(entry, value="certified_accuracy"):
    if entry is None:
        return "-"
    text = f"{entry[value + '_mean']:.4f}"
    if entry["seeds"] > 1:
        text += f" ± {entry[value + '_std']:.4f}"
    return text


def _pair(entry):
    if entry is None:
        return "-"
    return f"{_cell(entry, 'clean_accuracy')} / {_cell(entry)}"


def _is_uncompressed(entry):
    return entry["form"] == "prune" and abs(entry["ratio"]) < 1e-9


def _find(summary, run, form, ratio=None, bits=None, pruning_method=None, rounding=None):
    """The summary entry of `run` at a level; at ratio 0 (uncompressed) any pruning
    method, else `pruning_method` when given; an int8 file (unpruned) under `rounding`."""
    for e in summary:
        if e["run"] != run or e["form"] != form:
            continue
        if form == "tflite":
            if e.get("pruning_method") is None and e.get("rounding", "floor_ceil") == rounding:
                return e
            continue
        if form == "prune":
            if abs(e["ratio"] - ratio) >= 1e-9:
                continue
            if ratio and pruning_method is not None and e["pruning_method"] != pruning_method:
                continue
            return e
        if form != "prune" and e["bits"] == bits:
            return e
    return None


# ----- the headline: every compressed level, CACTUS against the best baseline -----

DECIMALS = 4
# TF-MOT prunes each layer by magnitude: at the same ratio it is a local_l1 network.
SAME_LEVEL_AS = {"tfmot_constant_sparsity": "local_l1"}
UNCOMPRESSED = "uncompressed (cost)"


def round_down(value):
    """`value` rounded down to DECIMALS places (a tolerance absorbs float noise:
    0.6104 stored as 0.61039999... stays 0.6104)."""
    scale = 10 ** DECIMALS
    return math.floor(value * scale + 1e-6) / scale


def round_up(value):
    scale = 10 ** DECIMALS
    return math.ceil(value * scale - 1e-6) / scale


def baseline_runs(config):
    """The runs CACTUS is compared against: every run that is not CACTUS and does not
    start from a CACTUS run (a tfmot run of a CACTUS network is CACTUS compressed by
    TF-MOT, not a baseline)."""
    def from_cactus(name):
        method = config.methods[name]
        return method.name == "cactus" or any(from_cactus(s) for s in method.sources())

    return [name for name in config.methods if not from_cactus(name)]


def _at_level(entry, level):
    if level is None:
        return _is_uncompressed(entry)
    if entry["form"] == "prune" and _is_uncompressed(entry):
        return False
    if entry["form"] == "prune" and entry["pruning_method"] in SAME_LEVEL_AS:
        entry = {**entry, "pruning_method": SAME_LEVEL_AS[entry["pruning_method"]]}
    return level.matches(entry)


def _per_seed(rows, run, level):
    return {r.get("seed", i): r["certified_accuracy"] for i, r in enumerate(rows)
            if r["run"] == run and _at_level(r, level)}


def headline(config, rows, summary):
    """One dict per (CACTUS run, level): the uncompressed network, then every
    compressed level of the grid (`grid_levels`), with CACTUS's mean certified
    accuracy, the best baseline there (highest mean certified accuracy; the first in
    config order on a tie), its mean, the difference of the means and the per-seed
    differences (seeds paired by index) that its spread is computed from."""
    from cactus_keras.experiments.evaluation import grid_levels

    baselines = baseline_runs(config)
    out = []
    for cactus in (name for name, m in config.methods.items() if m.name == "cactus"):
        for level in [None] + grid_levels(config.evaluation):
            mine = next((e for e in summary if e["run"] == cactus and _at_level(e, level)), None)
            best = None
            for run in baselines:
                for e in summary:
                    if e["run"] == run and _at_level(e, level) and (
                            best is None
                            or e["certified_accuracy_mean"] > best["certified_accuracy_mean"]):
                        best = e
            entry = {"cactus_run": cactus, "level": UNCOMPRESSED if level is None else level.label,
                     "form": "prune" if level is None else level.form,
                     "pruning_method": None if level is None else level.pruning_method,
                     "ratio": 0.0 if level is None else level.ratio,
                     "bits": None if level is None else level.bits,
                     "rounding": None if level is None else level.rounding,
                     "cactus_certified": None, "baseline_run": None, "baseline_method": None,
                     "baseline_certified": None, "difference": None, "differences": []}
            if mine is not None:
                entry["cactus_certified"] = mine["certified_accuracy_mean"]
            if best is not None:
                entry.update(baseline_run=best["run"], baseline_method=best["method"],
                             baseline_certified=best["certified_accuracy_mean"])
            if mine is not None and best is not None:
                entry["difference"] = entry["cactus_certified"] - entry["baseline_certified"]
                a, b = _per_seed(rows, cactus, level), _per_seed(rows, best["run"], level)
                entry["differences"] = [a[s] - b[s] for s in sorted(set(a) & set(b))]
            out.append(entry)
    return out


def _spread(differences):
    """The spread of per-seed differences: "± std" (3 or more seeds), "min..max"
    (2), "one seed" (1); std to the nearest, min and max down (toward the baseline)."""
    if len(differences) >= 3:
        return f"± {np.std(differences, ddof=1):.{DECIMALS}f}"
    if len(differences) == 2:
        low, high = min(differences), max(differences)
        return f"{round_down(low):+.{DECIMALS}f}..{round_down(high):+.{DECIMALS}f}"
    return "one seed" if differences else "-"


def headline_markdown(entries, baselines, seeds):
    """The headline section (markdown lines) of `headline` entries."""
    if seeds >= 3:
        spread = f"mean ± sample standard deviation of the per-seed differences over {seeds} seeds"
    elif seeds == 2:
        spread = "min..max of the per-seed differences over the 2 seeds"
    else:
        spread = "one seed, so no spread"
    lines = ["## Headline", ""]
    if not entries:
        return lines + ["No cactus run in this config: nothing to compare.", ""]
    lines += [
        "Every compressed level of the evaluation grid, and the uncompressed network: "
        "CACTUS's certified accuracy against the best baseline at that level (the run "
        "with the highest mean certified accuracy there among "
        + (", ".join(f"`{b}`" for b in baselines) or "no baseline runs")
        + "; TF-MOT's per-layer pruning counts at local_l1). Difference = CACTUS minus "
        f"that baseline (the uncompressed line: what CACTUS costs uncompressed); spread: "
        f"{spread} (seeds paired by index). Rounded toward the baseline: CACTUS and the "
        f"differences down, the baseline up, to {DECIMALS} decimals.",
        "",
        "| CACTUS run | level | CACTUS certified | best baseline | baseline certified "
        "| difference | spread over seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        mine = "-" if e["cactus_certified"] is None else f"{round_down(e['cactus_certified']):.{DECIMALS}f}"
        theirs = ("-" if e["baseline_certified"] is None
                  else f"{round_up(e['baseline_certified']):.{DECIMALS}f}")
        who = "no baseline at this level" if e["baseline_run"] is None else (
            f"{e['baseline_run']} ({e['baseline_method']})")
        diff = "-" if e["difference"] is None else f"{round_down(e['difference']):+.{DECIMALS}f}"
        lines.append(f"| {e['cactus_run']} | {e['level']} | {mine} | {who} | {theirs} | {diff} "
                     f"| {_spread(e['differences'])} |")
    return lines + [""]


def read_headline(output):
    """The headline of the experiment in `output` (from its results.json), as text."""
    with open(os.path.join(output, "results.json")) as f:
        results = json.load(f)
    return "\n".join(headline_markdown(results["headline"], results["baselines"],
                                       results["seeds"])).rstrip()


def _pruning_methods(config, summary):
    """Pruning methods of the summary's pruned rows: the grid's first, in its order."""
    found = []
    for method in list(config.evaluation["prune"]) + [e["pruning_method"] for e in summary]:
        if method is not None and method not in found and any(
                e["form"] == "prune" and e["pruning_method"] == method and not _is_uncompressed(e)
                for e in summary):
            found.append(method)
    return found


def unreached_lines(config, run_records):
    """Markdown lines naming each run whose training never reached the experiment's
    epsilon (its `epsilon_reached`, from the run's config.json), else none."""
    short = [r for r in run_records
             if r.get("epsilon_reached") is not None
             and r["epsilon_reached"] < config.epsilon * (1 - 1e-6)]
    if not short:
        return []
    runs = ", ".join(f"{r['run']} seed {r['seed']} at {r['epsilon_reached']:.4g}" for r in short)
    return [f"**Epsilon not reached in training:** {runs} (of {config.epsilon:g}): their "
            "epsilon ramp ends with training, so the last batch trained below the target "
            "(`epsilon_reached` in each run's config.json). Train for more epochs or "
            "shorten the ramp.", ""]


def report_markdown(config, summary, runs, data_note, command, timings, entries=None,
                    run_records=()):
    """The report: the headline (`headline` entries), then method-by-level tables as
    in the paper; first a warning when a run never trained at the epsilon."""
    evaluation = config.evaluation
    seeds = max((e["seeds"] for e in summary), default=0)
    lines = [f"# Experiment {config.name}", ""]
    if config.description:
        lines += [config.description, ""]
    subset = (f"on the first {evaluation['bound_samples']} test samples "
              if evaluation.get("bound_samples") else "")
    lines += [
        f"{data_note}, epsilon {config.epsilon:g}, certified by {evaluation['bound']} {subset}"
        f"(the .tflite rows: integer interval propagation through the int8 file). "
        + (f"Mean ± sample standard deviation over {seeds} seeds." if seeds > 1 else "One seed."),
        "",
        f"Command: `{command}`",
        "",
    ]
    lines += unreached_lines(config, run_records)
    lines += headline_markdown(entries or [], baseline_runs(config), seeds)
    lines += [
        "Cells below are clean / certified accuracy. Pruning ratio 0 is the uncompressed "
        "network; a `-` is a level the method does not produce (fine-tuning baselines run "
        "at their levels only).",
    ]
    for method in _pruning_methods(config, summary):
        ratios = sorted({e["ratio"] for e in summary if e["form"] == "prune"
                         and e["pruning_method"] == method and not _is_uncompressed(e)})
        members = [run for run in runs if any(
            e["run"] == run and e["form"] == "prune" and e["pruning_method"] == method
            for e in summary)]
        what = "TF-MOT, per layer" if method == "tfmot_constant_sparsity" else method
        lines += ["", f"## Pruning: {what}", "",
                  "| run | method | 0 | " + " | ".join(f"{r:g}" for r in ratios) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in ratios) + " |"]
        for run in members:
            cells = [_pair(_find(summary, run, "prune", 0.0))]
            cells += [_pair(_find(summary, run, "prune", r, pruning_method=method)) for r in ratios]
            lines.append(f"| {run} | {runs[run]} | " + " | ".join(cells) + " |")
    bits = sorted({e["bits"] for e in summary if e["form"] == "quantize"}, reverse=True)
    roundings = list(dict.fromkeys(e.get("rounding", "floor_ceil") for e in summary
                                   if e["form"] == "tflite"))
    header = (["float"] + [f"{b}-bit kernels" for b in bits]
              + [f"int8 .tflite ({r})" for r in roundings])
    lines += ["", "## Quantization", "",
              "Kernels are fake-quantized (symmetric, per channel) with float activations; "
              "the .tflite file is full-integer int8.", "",
              "| run | method | " + " | ".join(header) + " |",
              "| --- | --- | " + " | ".join("---" for _ in header) + " |"]
    for run, method in runs.items():
        cells = [_pair(_find(summary, run, "prune", 0.0))]
        cells += [_pair(_find(summary, run, "quantize", bits=b)) for b in bits]
        cells += [_pair(_find(summary, run, "tflite", bits=8, rounding=r)) for r in roundings]
        lines.append(f"| {run} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", f"Shared training settings: `{json.dumps(config.training, sort_keys=True)}`.", "",
              "| run | method | own options | seconds per seed |",
              "| --- | --- | --- | --- |"]
    for run, method in runs.items():
        options = config.methods[run].describe()
        seconds = ", ".join(f"{t:.0f}" for t in timings.get(run, []))
        lines.append(f"| {run} | {method} | `{json.dumps(options, sort_keys=True)}` | {seconds} |")
    lines += ["", "Plots: `certified_vs_pruning.png`, `clean_vs_certified.png`. "
              "Data: `results.json`, `results.csv` (summary), `runs.csv` (per seed).", ""]
    return "\n".join(lines)


def _write_csv(path, rows, fields):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write.write_text(path, text.getvalue())


def write_results(output, config, run_records, data_note, command):
    """Writes results.json, results.csv, runs.csv, report.md and the plots; returns
    the report's path."""
    from cactus_keras.experiments import plots

    rows = [r for record in run_records for r in record["rows"]]
    summary = summarize(rows)
    runs = {name: config.methods[name].name for name in config.methods}
    timings = {}
    for record in run_records:
        timings.setdefault(record["run"], []).append(record["seconds"])
    entries = headline(config, rows, summary)
    seeds = max((e["seeds"] for e in summary), default=0)
    atomic_write.write_json(os.path.join(output, "results.json"),
                            {"config": config.to_dict(), "command": command, "data": data_note,
                             "runs": run_records, "summary": summary, "headline": entries,
                             "baselines": baseline_runs(config), "seeds": seeds})
    _write_csv(os.path.join(output, "results.csv"), summary,
               list(KEY) + ["seeds", "samples"] + [f"{v}_{s}" for v in VALUES for s in ("mean", "std")])
    _write_csv(os.path.join(output, "runs.csv"), [{**r} for r in rows],
               list(KEY) + ["seed", "samples", *VALUES, "simulation_agreement", "rounding"])
    plots.certified_vs_pruning(summary, runs, os.path.join(output, "certified_vs_pruning.png"),
                               title=f"{config.name}: epsilon {config.epsilon:g}")
    plots.clean_vs_certified(summary, runs, os.path.join(output, "clean_vs_certified.png"),
                             title=f"{config.name}: epsilon {config.epsilon:g}")
    path = os.path.join(output, "report.md")
    atomic_write.write_text(path, report_markdown(config, summary, runs, data_note, command,
                                                  timings, entries, run_records))
    return path
