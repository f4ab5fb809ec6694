"""Training-step time of this checkout against another commit of the package, in one
process, interleaved: the check that a refactor did not slow training down.

The other commit's `cactus_keras/` is extracted with `git archive` into a temporary
folder and imported as `cactus_keras_baseline` (every `cactus_keras` name in its source
renamed), so both versions run side by side on the same batch, the same weights and the
same machine load. Each round times every step of both versions in turn; the medians
and the ratios current / baseline are printed (1.00x: no change).

    python tools/bench_train_versions.py --baseline ba2ba31
    python tools/bench_train_versions.py --baseline ba2ba31 --rounds 15 --json out.json
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

    quantization = package.Quantization(**_kwargs(
        package.Quantization, bits=(("bits",), 8), steps=(("awp_steps", "steps"), 1)))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--arch", default="cnn3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        baseline = import_baseline(args.baseline, folder)
        versions = {"baseline": build_steps(baseline, args.arch, x, y),
                    "current": build_steps(cactus_keras, args.arch, x, y)}
        for steps in versions.values():
            for fn in steps.values():
                for _ in range(3):
                    fn()
        samples = {(v, s): [] for v, steps in versions.items() for s in steps}
        for _ in range(args.rounds):
            for (version, step) in samples:
                fn = versions[version][step]
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                samples[(version, step)].append((time.perf_counter() - start) / args.steps)
    median = {key: statistics.median(v) for key, v in samples.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"bench_train_versions: current checkout vs {args.baseline}, {args.arch}, batch "
              f"{args.batch_size}, backend {keras.backend.backend()}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, median of {args.rounds} interleaved rounds of "
              f"{args.steps} steps, load average at the end {load:.2f}")
    print(header)
    print(f"  {'step':<26} {'baseline ms':>12} {'current ms':>11} {'current/baseline':>17}")
    result = {"header": header, "steps": {}}
    for step in versions["current"]:
        b, c = median[("baseline", step)], median[("current", step)]
        print(f"  {step:<26} {1000 * b:12.2f} {1000 * c:11.2f} {c / b:16.3f}x")
        result["steps"][step] = {"baseline_ms": 1000 * b, "current_ms": 1000 * c, "ratio": c / b}
    for version in versions:
        for step in ("cactus (full + 1 pruned)", "cactus (full + AWP)"):
            ratio = median[(version, step)] / median[(version, "ibp")]
            print(f"  {version:<9} {step} / ibp step: {ratio:.3f}x")
            result.setdefault("step_over_ibp", {}).setdefault(version, {})[step] = ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
