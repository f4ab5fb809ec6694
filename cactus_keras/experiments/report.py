"""An experiment's results as files: results.json, results.csv, runs.csv, report.md.

Rows of the same (run, compression level) over seeds are summarised as mean and sample
standard deviation (`n` seeds; the deviation is 0 for one seed).
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from cactus_keras import atomic_write

KEY = ("run", "method", "form", "pruning_method", "ratio", "bits")
VALUES = ("clean_accuracy", "certified_accuracy", "sparsity")


def summarize(rows):
    """Mean/std over seeds of each (run, compression level)."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in KEY), []).append(r)
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


def _level(entry):
    if entry["form"] == "prune":
        return f"pruned {entry['ratio']:g}"
    if entry["form"] == "quantize":
        return f"{entry['bits']}-bit kernels"
    return "int8 .tflite"


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


def _find(summary, run, form, ratio=None, bits=None):
    for e in summary:
        if e["run"] != run or e["form"] != form:
            continue
        if form == "prune" and abs(e["ratio"] - ratio) < 1e-9:
            return e
        if form != "prune" and e["bits"] == bits:
            return e
    return None


def headline(summary, runs, ratio):
    """(comparison, CACTUS run, baseline run, CACTUS entry, baseline entry) for each
    CACTUS run: against plain IBP at ratio 0, against every other run at pruning
    `ratio` and at the int8 file."""
    cactus = [name for name, method in runs.items() if method == "cactus"]
    out = []
    for c in cactus:
        others = [name for name in runs if name != c]
        for other in others:
            if runs[other] == "ibp-then-compress":
                out.append(("uncompressed", c, other, _find(summary, c, "prune", 0.0),
                            _find(summary, other, "prune", 0.0)))
        for other in others:
            mine, theirs = _find(summary, c, "prune", ratio), _find(summary, other, "prune", ratio)
            if mine and theirs:
                out.append((f"pruned {ratio:g}", c, other, mine, theirs))
        for other in others:
            mine, theirs = _find(summary, c, "tflite", bits=8), _find(summary, other, "tflite", bits=8)
            if mine and theirs:
                out.append(("int8 .tflite", c, other, mine, theirs))
    return out


def report_markdown(config, summary, runs, data_note, command, timings):
    """The report: headline comparisons, then method-by-level tables as in the paper."""
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
        "Cells are clean / certified accuracy. Pruning ratio 0 is the uncompressed network; "
        "a `-` is a level the method does not produce (fine-tuning baselines run at the "
        "listed levels only).",
        "",
        "## Headline",
        "",
        "| comparison | CACTUS run | baseline run | CACTUS certified | baseline certified | difference |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for what, mine, other, a, b in headline(summary, runs, evaluation["headline_ratio"]):
        diff = "-" if a is None or b is None else f"{a['certified_accuracy_mean'] - b['certified_accuracy_mean']:+.4f}"
        lines.append(f"| {what} | {mine} | {other} ({runs[other]}) | {_cell(a)} | {_cell(b)} | {diff} |")
    ratios = sorted({e["ratio"] for e in summary if e["form"] == "prune"})
    lines += ["", f"## Pruning ({evaluation['pruning_method']}; TF-MOT prunes per layer)", "",
              "| run | method | " + " | ".join(f"{r:g}" for r in ratios) + " |",
              "| --- | --- | " + " | ".join("---" for _ in ratios) + " |"]
    for run, method in runs.items():
        cells = [_pair(_find(summary, run, "prune", r)) for r in ratios]
        lines.append(f"| {run} | {method} | " + " | ".join(cells) + " |")
    bits = sorted({e["bits"] for e in summary if e["form"] == "quantize"}, reverse=True)
    header = ["float"] + [f"{b}-bit kernels" for b in bits] + ["int8 .tflite"]
    lines += ["", "## Quantization", "",
              "Kernels are fake-quantized (symmetric, per channel) with float activations; "
              "the .tflite file is full-integer int8.", "",
              "| run | method | " + " | ".join(header) + " |",
              "| --- | --- | " + " | ".join("---" for _ in header) + " |"]
    for run, method in runs.items():
        cells = [_pair(_find(summary, run, "prune", 0.0))]
        cells += [_pair(_find(summary, run, "quantize", bits=b)) for b in bits]
        cells += [_pair(_find(summary, run, "tflite", bits=8))]
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
    atomic_write.write_json(os.path.join(output, "results.json"),
                            {"config": config.to_dict(), "command": command, "data": data_note,
                             "runs": run_records, "summary": summary})
    _write_csv(os.path.join(output, "results.csv"), summary,
               list(KEY) + ["seeds", "samples"] + [f"{v}_{s}" for v in VALUES for s in ("mean", "std")])
    _write_csv(os.path.join(output, "runs.csv"), [{**r} for r in rows],
               list(KEY) + ["seed", "samples", *VALUES, "simulation_agreement"])
    plots.certified_vs_pruning(summary, runs, os.path.join(output, "certified_vs_pruning.png"),
                               title=f"{config.name}: epsilon {config.epsilon:g}")
    plots.clean_vs_certified(summary, runs, os.path.join(output, "clean_vs_certified.png"),
                             title=f"{config.name}: epsilon {config.epsilon:g}")
    path = os.path.join(output, "report.md")
    atomic_write.write_text(path, report_markdown(config, summary, runs, data_note, command, timings))
    return path
