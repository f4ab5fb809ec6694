"""The int8 file's targets (issue 23) from experiment results: per seed and mean, every
file line against the float IBP network's certificate and against the best baseline's
file, and each run's largest loss against a reference run at the other grid levels.

    python tools/summarize_int8.py results/experiments/fashion_mnist_int8 \
        --reference cactus --output results/experiments/fashion_mnist_int8/targets.md

Numbers are truncated (never rounded up) to 4 decimals; differences toward the
baseline: a gain is rounded down and a loss up in size.
"""

import argparse
import json
import math
import os
import shlex
import sys

BASELINE_METHODS = ("ibp-then-compress", "ibp-then-int8-finetune", "ibp-then-finetune", "tfmot")


def down(value):
    return math.floor(value * 1e4 + 1e-6) / 1e4


def level(row):
    if row["form"] == "prune":
        return ("uncompressed",) if not row["ratio"] else (row["pruning_method"], row["ratio"])
    if row["form"] == "quantize":
        return (f"{row['bits']}-bit kernels",)
    pruned = () if row.get("pruning_method") is None else (row["pruning_method"], row["ratio"])
    return ("file", *pruned, row.get("rounding") or "floor_ceil")


def label(key):
    if key[0] == "file":
        pruned = f" of {key[1]} {key[2]:g}" if len(key) == 4 else ""
        return f"int8 file{pruned} ({key[-1]})"
    return key[0] if len(key) == 1 else f"{key[0]} {key[1]:g}"


def table(results):
    """{run: {level: {seed: certified}}} and {run: method}."""
    found, methods = {}, {}
    for record in results["runs"]:
        methods[record["run"]] = record["method"]
        for row in record["rows"]:
            found.setdefault(record["run"], {}).setdefault(level(row), {})[row["seed"]] = \
                row["certified_accuracy"]
    return found, methods


def mean(values):
    return sum(values) / len(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="an experiment output folder (results.json)")
    parser.add_argument("--reference", default="cactus",
                        help="the run the other CACTUS runs' levels are compared with")
    parser.add_argument("--output", default=None, help="write the markdown here too")
    args = parser.parse_args()
    with open(os.path.join(args.experiment, "results.json")) as f:
        results = json.load(f)
    found, methods = table(results)
    seeds = sorted({s for run in found.values() for cells in run.values() for s in cells})
    ibp_float = found["ibp"][("uncompressed",)]
    baselines = [r for r, m in methods.items() if m in BASELINE_METHODS]
    cactus_runs = [r for r, m in methods.items() if m == "cactus"]
    files = sorted({k for run in found.values() for k in run if k[0] == "file"},
                   key=lambda k: (len(k), k[-1] != "nearest", k))
    lines = [f"# int8 file targets: {os.path.basename(os.path.normpath(args.experiment))}", "",
             f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`", "",
             f"Seeds {', '.join(map(str, seeds))}; float IBP certificate (run `ibp`, "
             f"uncompressed) per seed {', '.join(f'{down(ibp_float[s]):.4f}' for s in seeds)}, "
             f"mean {down(mean([ibp_float[s] for s in seeds])):.4f}.", "",
             "## Every file line", "",
             "| file | run | per seed | mean | minus float IBP | best baseline (its mean) | "
             "minus best baseline |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in files:
        best = max((r for r in baselines if key in found[r]),
                   key=lambda r: mean(list(found[r][key].values())), default=None)
        best_mean = mean(list(found[best][key].values())) if best else None
        for run in [*baselines, *cactus_runs]:
            cells = found.get(run, {}).get(key)
            if not cells:
                continue
            m = mean([cells[s] for s in sorted(cells)])
            ibp = mean([ibp_float[s] for s in sorted(cells)])
            versus = "-" if best is None or run in baselines else f"{down(m - best_mean):+.4f}"
            lines.append(
                f"| {label(key)} | {run} | {', '.join(f'{down(cells[s]):.4f}' for s in sorted(cells))} "
                f"| {down(m):.4f} | {down(m - ibp):+.4f} | "
                f"{best} ({down(best_mean):.4f}) | {versus} |" if best else
                f"| {label(key)} | {run} | {', '.join(f'{down(cells[s]):.4f}' for s in sorted(cells))} "
                f"| {down(m):.4f} | {down(m - ibp):+.4f} | - | - |")
    if args.reference in found:
        lines += ["", f"## Each CACTUS run against `{args.reference}` at every other level", "",
                  "| run | largest loss (mean over seeds) | at | levels more than 0.5 below |",
                  "| --- | --- | --- | --- |"]
        reference = found[args.reference]
        for run in cactus_runs:
            if run == args.reference:
                continue
            losses = []
            for key, cells in found[run].items():
                if key in reference and key[0] != "file":
                    shared = sorted(set(cells) & set(reference[key]))
                    losses.append((mean([cells[s] - reference[key][s] for s in shared]), key))
            worst = min(losses)
            below = [label(k) + f" ({down(d):+.4f})" for d, k in sorted(losses) if d < -0.005]
            lines.append(f"| {run} | {down(worst[0]):+.4f} | {label(worst[1])} | "
                         f"{'; '.join(below) or 'none'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
