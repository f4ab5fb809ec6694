"""Smallest and fastest certified int8 file at each floor, from `compress` runs that
certified every candidate (`--finalists N --screen-slack 1`, N = the candidate count).

    python tools/summarize_compress.py results/compress_fashion_mnist/cactus_seed0_all \
        results/compress_fashion_mnist/ibp_seed0_all --reference ibp_seed0_all \
        --below 0.01 0.02 0.05

Floors are points below the reference run's unpruned file certificate (validation).
"""

import argparse
import json
import os


def _rows(folder):
    with open(os.path.join(folder, "pareto.json")) as handle:
        front = json.load(handle)
    certified = front["certified"]
    unpruned = next(r for r in certified if all(v == 0 for v in r["ratios"].values()))
    return certified, unpruned


def best_at(rows, floor, cost):
    meeting = [r for r in rows if r["certified_accuracy"] >= floor - 1e-12]
    return min(meeting, key=lambda r: (r[cost], -r["certified_accuracy"])) if meeting else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--reference", required=True, help="the folder name whose unpruned file sets the floors")
    parser.add_argument("--below", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    args = parser.parse_args(argv)
    runs = {os.path.basename(os.path.normpath(f)): _rows(f) for f in args.folders}
    reference = runs[args.reference][1]["certified_accuracy"]
    lines = [f"Reference: the unpruned int8 file of {args.reference}, validation certificate "
             f"{reference:.3f}. Each cell: the smallest (or fastest) file whose validation "
             "certificate meets the floor, and its ratio to that run's unpruned file.", "",
             "| floor | run | smallest file (bytes) | x smaller | its ratios | fastest file (ms) | x faster | certified |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for below in args.below:
        floor = round(reference - below, 6)
        for name, (rows, unpruned) in runs.items():
            small, fast = best_at(rows, floor, "bytes"), best_at(rows, floor, "latency_ms")
            if small is None:
                lines.append(f"| {floor:.3f} (-{below * 100:g} pt) | {name} | none meets it | | | | | |")
                continue
            lines.append(
                f"| {floor:.3f} (-{below * 100:g} pt) | {name} | {small['bytes']} | "
                f"{unpruned['bytes'] / small['bytes']:.2f} | {small['key']} | "
                f"{fast['latency_ms']:.4f} | {unpruned['latency_ms'] / fast['latency_ms']:.2f} | "
                f"{small['certified_accuracy']:.3f} |")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
