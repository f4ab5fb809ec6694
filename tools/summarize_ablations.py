"""Tables of the ablations of the recommended CACTUS configuration (the
fashion_mnist_ablation_*.toml experiments): one table per experiment folder, a row per
level of the grid, a column per run (clean / certified accuracy, seed 0), and each run's
training time and the setting it varies.

    python tools/summarize_ablations.py results/ablations/coverage results/ablations/refresh \
        --output results/ablations/README.md
"""

import argparse
import os
import sys

from summarize_losses import level_key, level_label, load_json

# The settings an ablation varies, as they are written in each run's config.json.
SETTINGS = ("standard_weight", "member_batch_fraction", "member_weight")


def fail(message):
    print(f"summarize_ablations: {message}", file=sys.stderr)
    raise SystemExit(2)


def _members(config):
    parts = []
    for m in config["compression"]:
        if m["kind"] == "pruning":
            low, high = m["ratio"]
            refresh = f", refresh {m['refresh_every']}" if m.get("refresh_every", 1) != 1 else ""
            parts.append(f"{m['pruning_method']} U({low:g}, {high:g}){refresh}")
        elif m["kind"] == "awp_quantization":
            parts.append(f"{m['bits']}-bit AWP eta {m['awp_radius']:g}")
        else:
            parts.append(m["kind"])
    return " + ".join(parts)


def table(folder, heading="###"):
    runs_folder = os.path.join(folder, "runs")
    if not os.path.isdir(runs_folder):
        fail(f"{folder} holds no runs/ folder; give the --output folders of the ablation experiments.")
    report = os.path.join(folder, "report.md")
    names = [n for n in sorted(os.listdir(runs_folder))
             if os.path.exists(os.path.join(runs_folder, n, "seed0", "result.json"))]
    if not names:
        fail(f"{folder}: no finished run (runs/NAME/seed0/result.json).")
    records = {n: load_json(os.path.join(runs_folder, n, "seed0", "result.json")) for n in names}
    configs = {n: load_json(os.path.join(runs_folder, n, "seed0", "config.json")) for n in names}
    levels = [level_key(r) for r in records[names[0]]["rows"]]
    for n in names:
        if [level_key(r) for r in records[n]["rows"]] != levels:
            fail(f"{folder}: {n} was evaluated on another grid than {names[0]}.")
    title = os.path.basename(os.path.normpath(folder))
    lines = [f"{heading} {title}", "", f"Experiment report: `{report}`.", "",
             "| run | compression set | " + " | ".join(SETTINGS) + " | training s |",
             "| --- | --- | " + " | ".join("---" for _ in SETTINGS) + " | --- |"]
    for n in names:
        c = configs[n]
        lines.append(f"| {n} | {_members(c)} | " + " | ".join(f"{c[s]:g}" for s in SETTINGS)
                     + f" | {records[n]['seconds']:.0f} |")
    lines += ["", "Clean / certified accuracy (IBP, all test images):", "",
              "| level | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for i, key in enumerate(levels):
        cells = []
        for n in names:
            row = records[n]["rows"][i]
            cells.append(f"{row['clean_accuracy']:.4f} / {row['certified_accuracy']:.4f}")
        lines.append(f"| {level_label(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="experiment --output folders")
    parser.add_argument("--output", default=None, help="write the tables here too")
    parser.add_argument("--command", default=None, help="the command line, for the header")
    parser.add_argument("--heading-level", type=int, default=3, choices=range(1, 7),
                        help="markdown heading level of each table's title (default 3; "
                             "4 to paste under a ### section of README)")
    args = parser.parse_args()
    heading = "#" * args.heading_level
    text = "\n\n".join(table(folder, heading) for folder in args.folders) + "\n"
    if args.command:
        text = f"Command: `{args.command}`\n\n" + text
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
