"""Tables of the certified-loss comparison (tools/reproduce_losses.sh).

Reads the two experiment outputs (`RUNS/plain`, `RUNS/cactus`) and the verifier JSON
files (`OUTPUT/verifiers/<run>_<bound>.json`, written by `cactus-keras certify`), and
writes OUTPUT/report.md, OUTPUT/results.json and OUTPUT/results.csv; the experiments'
own reports are copied into OUTPUT/plain and OUTPUT/cactus.

    python tools/summarize_losses.py --runs runs/losses --output results/losses_fashion_mnist
"""

import argparse
import csv
import json
import os
import shutil

LOSSES = [("ibp", "worst-case (IBP)"), ("mtl-ibp", "MTL-IBP"), ("sabr", "SABR")]
VERIFIERS = ["ibp", "crown", "alpha-crown"]
LOSS_NAMES = {"worst-case": "worst-case (IBP)", "mtl-ibp": "MTL-IBP", "sabr": "SABR"}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def _run(runs, experiment, name):
    return load_json(os.path.join(runs, experiment, "runs", name, "seed0", "result.json"))


def _row(record, form, level):
    for r in record["rows"]:
        if r["form"] == form and (r["ratio"] if form == "prune" else r["bits"]) == level:
            return r
    raise KeyError((form, level))


def level_key(row):
    """(form, pruning method, ratio, bits, rounding model): one level of the grid (the
    rounding model of an int8 file row; None in rows written before rows recorded it)."""
    return (row["form"], row.get("pruning_method"), row.get("ratio"), row.get("bits"),
            row.get("rounding"))


def level_label(key):
    form, method, ratio, bits, rounding = key
    if form == "prune":
        return "uncompressed" if not ratio else f"{method} {ratio:g}"
    if form == "tflite":
        pruned = "" if method is None else f" of {method} {ratio:g}"
        return f"int8 .tflite{pruned}" + ("" if rounding is None else f" ({rounding})")
    return f"{bits}-bit"


def _cactus_runs(runs):
    folder = os.path.join(runs, "cactus", "runs")
    return sorted(name for name in os.listdir(folder)
                  if os.path.exists(os.path.join(folder, name, "seed0", "result.json")))


def _loss_of(runs, name):
    config = load_json(os.path.join(runs, "cactus", "runs", name, "seed0", "config.json"))
    return LOSS_NAMES.get(config["certified_loss"], config["certified_loss"])


def _copy_reports(runs, output):
    for experiment in ("plain", "cactus"):
        source = os.path.join(runs, experiment)
        target = os.path.join(output, experiment)
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(source):
            if name != "runs" and os.path.isfile(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--command", default="bash tools/reproduce_losses.sh")
    parser.add_argument("--what", default="", help="a paragraph saying what was run and how")
    args = parser.parse_args()

    results = {"command": args.command, "plain": [], "cactus": []}
    for name, label in LOSSES:
        record = _run(args.runs, "plain", name)
        full = _row(record, "prune", 0.0)
        entry = {"run": name, "loss": label, "seconds": record["seconds"],
                 "clean_accuracy": full["clean_accuracy"], "ibp_certified_accuracy": full["certified_accuracy"],
                 "samples": full["samples"], "subset": {}}
        for bound in VERIFIERS:
            path = os.path.join(args.output, "verifiers", f"{name}_{bound}.json")
            if os.path.exists(path):
                v = load_json(path)
                entry["subset"][bound] = {k: v.get(k) for k in (
                    "samples", "clean_accuracy", "certified_accuracy", "pgd_accuracy", "seconds")}
        results["plain"].append(entry)
    levels = None
    # The worst-case run first, so the difference row is "other loss - worst-case".
    loss_of = {n: _loss_of(args.runs, n) for n in _cactus_runs(args.runs)}
    names = sorted(loss_of, key=lambda n: loss_of[n] != LOSS_NAMES["worst-case"])
    for name in names:
        record = _run(args.runs, "cactus", name)
        keys = [level_key(r) for r in record["rows"]]
        if levels is not None and keys != levels:
            raise SystemExit(f"summarize_losses: {name} was evaluated on another grid than {names[0]}")
        levels = keys
        rows = [{"form": r["form"], "level": level_label(level_key(r)), "clean_accuracy": r["clean_accuracy"],
                 "certified_accuracy": r["certified_accuracy"], "samples": r["samples"]}
                for r in record["rows"]]
        results["cactus"].append({"run": name, "loss": "CACTUS, " + loss_of[name],
                                  "seconds": record["seconds"], "rows": rows})

    _copy_reports(args.runs, args.output)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.output, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "run", "verifier", "form", "level", "samples",
                         "clean_accuracy", "certified_accuracy", "pgd_accuracy"])
        for e in results["plain"]:
            writer.writerow(["plain", e["run"], "ibp", "prune", 0.0, e["samples"],
                             e["clean_accuracy"], e["ibp_certified_accuracy"], ""])
            for bound, v in e["subset"].items():
                writer.writerow(["plain", e["run"], bound, "prune", 0.0, v["samples"],
                                 v["clean_accuracy"], v["certified_accuracy"], v.get("pgd_accuracy", "")])
        for e in results["cactus"]:
            for r in e["rows"]:
                writer.writerow(["cactus", e["run"], "ibp", r["form"], r["level"], r["samples"],
                                 r["clean_accuracy"], r["certified_accuracy"], ""])

    lines = ["# Certified losses on Fashion-MNIST, epsilon 0.1, cnn3", "",
             f"Command: `{args.command}` (configs `examples/configs/fashion_mnist_losses.toml`, "
             "`examples/configs/fashion_mnist_losses_cactus.toml`). One seed. Every number "
             "below is as measured; the experiments' own reports are in `plain/` and `cactus/`.", "",
             args.what, ""]
    subset = next((v["samples"] for e in results["plain"] for v in e["subset"].values()), None)
    lines += ["## Plain certified training: clean and certified accuracy per loss and verifier", "",
              f"IBP on all 10,000 test images (the experiment's grid, ratio 0); IBP, CROWN and "
              f"alpha-CROWN on the first {subset} test images (`cactus-keras certify --limit "
              f"{subset}`, which also runs a 20-step PGD attack: no certified sample was broken).", "",
              f"| loss | clean (10k) | IBP certified (10k) | clean ({subset}) | PGD ({subset}) | "
              + " | ".join(f"{b} certified ({subset})" for b in VERIFIERS) + " | training s |",
              "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in VERIFIERS) + " | --- |"]
    for e in results["plain"]:
        sub = e["subset"]
        first = next(iter(sub.values()), {})
        cells = [f"{sub[b]['certified_accuracy']:.4f}" if b in sub else "-" for b in VERIFIERS]
        pgd = first.get("pgd_accuracy")
        lines.append(f"| {e['loss']} | {e['clean_accuracy']:.4f} | {e['ibp_certified_accuracy']:.4f} | "
                     f"{first.get('clean_accuracy', float('nan')):.4f} | "
                     f"{'-' if pgd is None else f'{pgd:.4f}'} | " + " | ".join(cells)
                     + f" | {e['seconds']:.0f} |")
    lines += ["", "Best loss per column:", ""]
    columns = [("clean (10k)", lambda e: e["clean_accuracy"]),
               ("IBP certified (10k)", lambda e: e["ibp_certified_accuracy"])]
    columns += [(f"{b} certified ({subset})", lambda e, b=b: e["subset"].get(b, {}).get("certified_accuracy"))
                for b in VERIFIERS]
    for title, value in columns:
        scored = [(value(e), e["loss"]) for e in results["plain"] if value(e) is not None]
        if scored:
            top = max(v for v, _ in scored)
            winners = [name for v, name in scored if v == top]
            tie = " (tie)" if len(winners) > 1 else ""
            lines.append(f"- {title}: {', '.join(winners)} ({top:.4f}){tie}")
    if results["cactus"]:
        # One row per level (the grid is long): clean / certified of each run, then the
        # certified difference of each other loss to the worst-case loss.
        first = results["cactus"][0]
        others = results["cactus"][1:]
        lines += ["", "## CACTUS with each loss at every level of the grid (IBP, all 10,000 test images)", "",
                  "Cells are clean / certified accuracy; pruning without fine-tuning, weight-only "
                  "fake-quantized kernels, and the exported int8 file certified on its own "
                  "integer arithmetic. Training seconds: " + ", ".join(
                      f"{e['loss']} {e['seconds']:.0f} s" for e in results["cactus"]) + ".", "",
                  "| level | " + " | ".join(e["loss"] for e in results["cactus"]) + "".join(
                      f" | certified: {e['loss']} - {first['loss']}" for e in others) + " |",
                  "| --- | " + " | ".join("---" for _ in results["cactus"]) + " | ---" * len(others) + " |"]
        for i, row in enumerate(first["rows"]):
            cells = [f"{e['rows'][i]['clean_accuracy']:.4f} / {e['rows'][i]['certified_accuracy']:.4f}"
                     for e in results["cactus"]]
            cells += [f"{e['rows'][i]['certified_accuracy'] - row['certified_accuracy']:+.4f}" for e in others]
            lines.append(f"| {row['level']} | " + " | ".join(cells) + " |")
    with open(os.path.join(args.output, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
