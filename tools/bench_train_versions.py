"""Training-step time of this checkout against another commit of the package, in one
process, interleaved: the check that a refactor did not slow training down.

The other commit's `cactus_keras/` is extracted with `git archive` into a temporary
folder and imported as `cactus_keras_baseline` (every `cactus_keras` name in its source
renamed), so both versions run side by side on the same batch, the same weights and the
same machine load. Each round times every step of both versions in turn; the medians
and the ratios current / baseline are printed (1.00x: no change).

    python tools/bench_train_versions.py --baseline ba2ba31
    python tools/bench_train_versions.py --baseline ba2ba31 --rounds 15 --json out.json

Several processes (`--processes`, 4 by default) each build both versions (alternately
the baseline first) and time them interleaved: the same graph runs up to 10% faster or
slower from one process to the next, so the ratio is taken within each process and the
median over processes is reported.
"""

import argparse
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cactus_keras  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALIAS = "cactus_keras_baseline"


def import_baseline(revision, folder):
    """`cactus_keras` of `revision`, imported under the name `ALIAS`."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", revision, "cactus_keras"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "cactus_keras"), os.path.join(folder, ALIAS))
    for directory, _, files in os.walk(os.path.join(folder, ALIAS)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(re.sub(r"\bcactus_keras\b", ALIAS, text))
    sys.path.insert(0, folder)
    import importlib

    return importlib.import_module(ALIAS)


def _kwargs(cls, **candidates):
    """The keyword arguments `cls` takes among `candidates` (its names changed over
    versions: the first name a class accepts wins for each value)."""
    accepted = inspect.signature(cls.__init__).parameters
    out = {}
    for value_names, value in candidates.values():
        for name in value_names:
            if name in accepted:
                out[name] = value
                break
    return out


def build_steps(package, arch, x, y):
    def network():
        keras.utils.set_random_seed(0)
        return package.models.get(arch, (28, 28, 1), 10)

    # The AWP member is `AWPQuantization`; versions before the rename call it `Quantization`.
    awp_class = getattr(package, "AWPQuantization", None) or package.Quantization
    quantization = awp_class(**_kwargs(
        awp_class, bits=(("bits",), 8), steps=(("awp_steps", "steps"), 1)))
    models = {
        "ibp": package.CactusModel(network(), 0.1),
        "cactus (full + 1 pruned)": package.CactusModel(
            network(), 0.1, compression=[package.Pruning(ratio=(0.25, 0.75))]),
        "cactus (full + AWP)": package.CactusModel(network(), 0.1, compression=[quantization]),
    }
    steps = {}
    for name, model in models.items():
        model.compile(optimizer="adam")
        steps[name] = (lambda m=model: m.train_on_batch(x, y))
    return steps


def measure(args, first):
    """Median seconds per step of every (version, step), both versions built in this
    process, `first` built (and so allocated) first."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        packages = {"baseline": import_baseline(args.baseline, folder), "current": cactus_keras}
        names = [first] + [v for v in packages if v != first]
        versions = {v: build_steps(packages[v], args.arch, x, y) for v in names}
        for steps in versions.values():
            for fn in steps.values():
                for _ in range(3):
                    fn()
        samples = {(v, s): [] for v in ("baseline", "current") for s in versions[v]}
        order = list(samples)
        for round_index in range(args.rounds):
            # Alternate the order each round, so neither version is always timed first
            # (right after the other's step, with its caches and clocks as it left them).
            for (version, step) in (order if round_index % 2 == 0 else order[::-1]):
                fn = versions[version][step]
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                samples[(version, step)].append((time.perf_counter() - start) / args.steps)
    return {f"{v}|{s}": statistics.median(t) for (v, s), t in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--arch", default="cnn3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--processes", type=int, default=4,
                        help="separate processes, alternately building the baseline first")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=("baseline", "current"), help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with open(args.child_output, "w") as f:
            json.dump(measure(args, args.child), f)
        return

    # One process is not enough: the same two graphs differ by up to 10% from one
    # process to the next (allocation and thread-pool layout), in either direction.
    # Each process measures both versions interleaved; the ratio is taken per process
    # and the median over processes is reported.
    per_process = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.processes):
            first = "baseline" if index % 2 == 0 else "current"
            out = os.path.join(folder, f"{index}.json")
            command = [sys.executable, os.path.abspath(__file__), "--baseline", args.baseline,
                       "--arch", args.arch, "--batch-size", str(args.batch_size),
                       "--rounds", str(args.rounds), "--steps", str(args.steps),
                       "--child", first, "--child-output", out]
            subprocess.run(command, check=True)
            with open(out) as f:
                per_process.append((first, json.load(f)))
    steps = [key.split("|", 1)[1] for key in per_process[0][1] if key.startswith("current|")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"bench_train_versions: current checkout vs {args.baseline}, {args.arch}, batch "
              f"{args.batch_size}, backend {keras.backend.backend()}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, {args.processes} processes (built first alternating), "
              f"each the median of {args.rounds} interleaved rounds of {args.steps} steps "
              f"(order alternating), load average at the end {load:.2f}")
    print(header)
    print(f"  {'step':<26} {'baseline ms':>12} {'current ms':>11} {'current/baseline':>17}"
          "   per process")
    result = {"header": header, "steps": {}, "processes": [p for _, p in per_process]}
    for step in steps:
        b = statistics.median(p[f"baseline|{step}"] for _, p in per_process)
        c = statistics.median(p[f"current|{step}"] for _, p in per_process)
        ratios = [p[f"current|{step}"] / p[f"baseline|{step}"] for _, p in per_process]
        ratio = statistics.median(ratios)
        listed = " ".join(f"{r:.3f}" for r in ratios)
        print(f"  {step:<26} {1000 * b:12.2f} {1000 * c:11.2f} {ratio:16.3f}x   {listed}")
        result["steps"][step] = {"baseline_ms": 1000 * b, "current_ms": 1000 * c,
                                 "ratio": ratio, "ratios_per_process": ratios}
    for version in ("baseline", "current"):
        for step in ("cactus (full + 1 pruned)", "cactus (full + AWP)"):
            ratio = statistics.median(p[f"{version}|{step}"] / p[f"{version}|ibp"]
                                      for _, p in per_process)
            print(f"  {version:<9} {step} / ibp step: {ratio:.3f}x")
            result.setdefault("step_over_ibp", {}).setdefault(version, {})[step] = ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
