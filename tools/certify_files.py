"""Certifies the int8 files of trained runs as the experiment grid does now: each run's
network exported and certified under every rounding model of the config's
`tflite_roundings`, and the files of its pruned networks (`tflite_prune`), on the
config's test set. Writes `files.json` and `files.md` to --output (the run folders are
only read).

    python tools/certify_files.py --config cactus_keras/experiments/configs/fashion_mnist_cpu.toml \
        --runs results/experiments/fashion_mnist_cpu/runs/ibp/seed0 \
               results/experiments/fashion_mnist_cpu/runs/cactus/seed0 \
        --output results/int8_files_fashion_mnist_cpu
"""

import argparse
import json
import os
import shlex
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import cactus_keras  # noqa: E402
from cactus_keras.experiments import load_config  # noqa: E402
from cactus_keras.experiments.methods import file_rows  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--test-samples", type=int, default=None)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    data = cactus_keras.data.load(config.dataset, download=False)
    n = args.test_samples or len(data.y_test)
    found = {}
    for run in args.runs:
        directory = os.path.join(args.output, run.strip("/").replace("/", "_"))
        os.makedirs(directory, exist_ok=True)

        def cached(key, compute, directory=directory):
            path = os.path.join(directory, f"{key}.json")
            if os.path.exists(path):
                with open(path) as f:
                    return json.load(f)
            value = compute()
            with open(path, "w") as f:
                json.dump(value, f, indent=1)
            return value

        ctx = types.SimpleNamespace(directory=directory, config=config, x_train=data.x_train,
                                    x_test=data.x_test[:n], y_test=data.y_test[:n],
                                    input_range=(0.0, 1.0), cached=cached)
        network = keras.saving.load_model(os.path.join(run, "network.keras"), compile=False)
        found[run] = file_rows(network, ctx)
        print(run, [(r["pruning_method"], r["ratio"], r["rounding"], r["certified_accuracy"])
                    for r in found[run]], flush=True)
    command = shlex.join(["python", *sys.argv])
    with open(os.path.join(args.output, "files.json"), "w") as f:
        json.dump({"command": command, "samples": n, "rows": found}, f, indent=1)
    lines = [f"# int8 files, {n} test images, epsilon {config.epsilon:g}", "",
             f"Command: `{command}`", "",
             "| run | file | rounding model | clean | certified | simulation agreement |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run, rows in found.items():
        for r in rows:
            what = ("network" if r["pruning_method"] is None
                    else f"{r['pruning_method']} {r['ratio']:g}")
            lines.append(f"| {run} | {what} | {r['rounding']} | {r['clean_accuracy']:.4f} | "
                         f"{r['certified_accuracy']:.4f} | {r['simulation_agreement']:.4f} |")
    with open(os.path.join(args.output, "files.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
