"""Smallest and fastest certified int8 file at each floor, from `compress` runs that
certified every candidate (`--finalists N --screen-slack 1`, N = the candidate count).

    python tools/summarize_compress.py results/compress_fashion_mnist/cactus_seed0_all \
        results/compress_fashion_mnist/ibp_seed0_all --reference ibp_seed0_all \
        --below 0.01 0.02 0.05

Floors are points below the reference run's unpruned file certificate (validation), and
any absolute `--floors`. Each run's rounding model (the one its file certificates
assume) is its own column: a run written before `compress` took `--rounding` assumed
`floor_ceil`, `verify_tflite`'s default then. Runs from folders of the same name (the
`floor_ceil` and `nearest` runs of one seed) are told apart by their parent folder.
Ratios ("x smaller", "x faster", "vs reference") are rounded down, never up.
"""

import argparse
import json
import math
import os

# What a search_config.json without "rounding" assumed: it was written before the
# search took --rounding, when verify_tflite's default was floor_ceil.
ROUNDING_BEFORE_THE_FLAG = "floor_ceil"


def _rows(folder):
    with open(os.path.join(folder, "pareto.json")) as handle:
        front = json.load(handle)
    certified = front["certified"]
    unpruned = next(r for r in certified if all(v == 0 for v in r["ratios"].values()))
    return certified, unpruned


def _rounding(folder):
    path = os.path.join(folder, "search_config.json")
    if not os.path.exists(path):
        return ROUNDING_BEFORE_THE_FLAG
    with open(path) as handle:
        return json.load(handle).get("rounding", ROUNDING_BEFORE_THE_FLAG)


def down(value, digits=2):
    """`value` rounded down to `digits` decimals (a ratio is never shown larger)."""
    scale = 10 ** digits
    return math.floor(value * scale + 1e-9) / scale


def best_at(rows, floor, cost):
    meeting = [r for r in rows if r["certified_accuracy"] >= floor - 1e-12]
    return min(meeting, key=lambda r: (r[cost], -r["certified_accuracy"])) if meeting else None


def _labels(folders):
    """Each folder's name, with its parent's where two runs share a name."""
    names = [os.path.basename(os.path.normpath(f)) for f in folders]
    return [os.path.join(os.path.basename(os.path.dirname(os.path.normpath(f))), n)
            if names.count(n) > 1 else n for f, n in zip(folders, names)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--reference", required=True,
                        help="the run (its label) whose unpruned file sets the floors")
    parser.add_argument("--below", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--floors", type=float, nargs="*", default=[],
                        help="absolute floors too (e.g. points below a float network's certificate)")
    args = parser.parse_args(argv)
    labels = _labels(args.folders)
    runs = {label: (*_rows(f), _rounding(f)) for label, f in zip(labels, args.folders)}
    if args.reference not in runs:
        parser.error(f"--reference {args.reference!r} is none of the runs: {', '.join(runs)}")
    ref_rows, ref_unpruned, ref_rounding = runs[args.reference]
    reference = ref_unpruned["certified_accuracy"]
    lines = [f"Reference: the unpruned int8 file of {args.reference} (rounding model "
             f"{ref_rounding}), validation certificate {reference:.3f}. Each cell: the "
             "smallest (or fastest) file whose validation certificate meets the floor, its "
             "ratio to that run's unpruned file, and the reference run's smallest file at "
             "the same floor over this run's (ratios rounded down).", "",
             "| floor | run | rounding | smallest file (bytes) | x smaller | reference's smallest / this | its ratios | fastest file (ms) | x faster | certified |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    floors = [(round(reference - below, 6), f"-{below * 100:g} pt") for below in args.below]
    floors += [(floor, "absolute") for floor in args.floors]
    for floor, how in floors:
        ref_small = best_at(ref_rows, floor, "bytes")
        for name, (rows, unpruned, rounding) in runs.items():
            small, fast = best_at(rows, floor, "bytes"), best_at(rows, floor, "latency_ms")
            if small is None:
                lines.append(f"| {floor:.3f} ({how}) | {name} | {rounding} | none meets it | | | | | | |")
                continue
            versus = "-" if ref_small is None else f"{down(ref_small['bytes'] / small['bytes']):.2f}"
            lines.append(
                f"| {floor:.3f} ({how}) | {name} | {rounding} | {small['bytes']} | "
                f"{down(unpruned['bytes'] / small['bytes']):.2f} | {versus} | {small['key']} | "
                f"{fast['latency_ms']:.4f} | {down(unpruned['latency_ms'] / fast['latency_ms']):.2f} | "
                f"{small['certified_accuracy']:.3f} |")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
