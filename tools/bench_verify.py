"""Seconds per sample of the int8 certificate (`verify_tflite`) against the float IBP
certificate (`cactus_keras.certify(..., bound="ibp")`) of the same network.

For each of cnn3, cnn5 and cnn7 (Fashion-MNIST shapes, 28x28x1) the network is trained
for one short epoch of standard training (`--train-samples` images) so that its weights
and activation ranges look like a trained network's, then exported to a full-integer
int8 `.tflite` file. Both certificates run on the same test images in the same process,
each timed after a warm-up call (median of `--repeats`); the number to compare is the
ratio in the last column. `--models DIR` keeps the networks and files, so that another
checkout of the package can be timed on the very same files:

    python tools/bench_verify.py --models /tmp/bench_models --output results/benchmarks/x.txt
    PYTHONPATH=/tmp/old python tools/bench_verify.py --models /tmp/bench_models ...
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cactus_keras  # noqa: E402
from cactus_keras import export  # noqa: E402

ARCHITECTURES = ("cnn3", "cnn5", "cnn7")


def _network(arch, folder, data, train_samples):
    """The trained Keras network and its int8 file, reused from `folder` when there."""
    keras_path = os.path.join(folder, f"{arch}.keras")
    tflite_path = os.path.join(folder, f"{arch}.int8.tflite")
    if os.path.exists(keras_path) and os.path.exists(tflite_path):
        return keras.saving.load_model(keras_path), tflite_path
    keras.utils.set_random_seed(0)
    net = getattr(cactus_keras.models, arch)((28, 28, 1), 10)
    net.compile(optimizer="adam", metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(data.x_train[:train_samples], data.y_train[:train_samples], batch_size=128,
            epochs=1, verbose=0)
    os.makedirs(folder, exist_ok=True)
    net.save(keras_path)
    export.to_tflite(net, tflite_path, representative_data=data.x_train[:200])
    return net, tflite_path


def _median_seconds(fn, repeats):
    fn()  # warm-up: tracing, interpreter allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=2048)
    parser.add_argument("--rounding", default="floor_ceil")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--models", default="runs/bench_verify_models",
                        help="folder for the trained networks and their int8 files")
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--output", default=None, help="text file to write the table to")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data = cactus_keras.data.load("fashion_mnist")
    x, y = data.x_test[: args.samples], data.y_test[: args.samples]
    rows = []
    for arch in args.architectures.split(","):
        net, path = _network(arch, args.models, data, args.train_samples)
        int8 = _median_seconds(lambda: export.verify_tflite(
            path, x, y, args.epsilon, batch_size=args.samples, rounding=args.rounding),
            args.repeats)
        ibp = _median_seconds(lambda: cactus_keras.certify(
            net, x, y, args.epsilon, bound="ibp", batch_size=args.samples, verbose=0),
            args.repeats)
        result = export.verify_tflite(path, x, y, args.epsilon, batch_size=args.samples,
                                      rounding=args.rounding)
        rows.append({
            "architecture": arch,
            "samples": len(y),
            "int8_seconds_per_sample": int8 / len(y),
            "ibp_seconds_per_sample": ibp / len(y),
            "ratio": int8 / ibp,
            "int8_certified_accuracy": result.certified_accuracy,
            "simulation_agreement": result.simulation_agreement,
        })

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    header = [
        f"$ {command}",
        f"bench_verify{' (' + args.label + ')' if args.label else ''}: verify_tflite "
        f"(rounding={args.rounding}) vs certify(bound='ibp'), epsilon {args.epsilon}, "
        f"{args.samples} Fashion-MNIST test images in one batch, median of {args.repeats}; "
        f"networks trained 1 epoch on {args.train_samples} images; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, backend {keras.backend.backend()}, "
        f"package at {os.path.dirname(cactus_keras.__file__)}, load average at the end "
        f"{os.getloadavg()[0]:.2f} (the cores are shared: compare ratios of one run)",
    ]
    lines = header + [
        f"{'arch':<6} {'int8 ms/sample':>15} {'ibp ms/sample':>14} {'ratio':>7} "
        f"{'int8 certified':>15} {'agreement':>10}"]
    for r in rows:
        lines.append(
            f"{r['architecture']:<6} {1000 * r['int8_seconds_per_sample']:>15.3f} "
            f"{1000 * r['ibp_seconds_per_sample']:>14.3f} {r['ratio']:>7.2f} "
            f"{r['int8_certified_accuracy']:>15.4f} {r['simulation_agreement']:>10.4f}")
    worst = max(r["ratio"] for r in rows)
    lines.append(f"worst ratio {worst:.2f}: {'meets' if worst <= 3.0 else 'misses'} the 3x "
                 "target")
    text = "\n".join(lines)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
