"""Certification throughput of IBP, CROWN and alpha-CROWN against a plain forward pass.

The network is the 4-layer CNN of the CROWN-IBP papers ("DM-small": two convolutions,
two dense layers) on 28x28x1 inputs. Every function is compiled by the Keras backend's
tracer and timed on the same batch in one process; the numbers to compare are the
ratios printed in the last column, and alpha-CROWN's cost per sample as a ratio to
CROWN's (same batch size).

    python tools/bench_bounds.py            # prints a table
    python tools/bench_bounds.py --json out.json
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from cactus_keras import backend, bounds  # noqa: E402
from cactus_keras.bounds.alpha_crown import STEPS as ALPHA_STEPS  # noqa: E402


def dm_small(num_classes=10):
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 4, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 4, strides=1, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="dm_small",
    )


def _time(fn, args, repeats, min_seconds=0.5):
    """Median seconds per call over `repeats` timed blocks, after a warm-up call."""
    ops.convert_to_numpy(fn(*args))
    block = 1
    while True:
        start = time.perf_counter()
        for _ in range(block):
            out = fn(*args)
        ops.convert_to_numpy(out)
        if time.perf_counter() - start >= min_seconds / repeats or block >= 1024:
            break
        block *= 2
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(block):
            out = fn(*args)
        ops.convert_to_numpy(out)
        samples.append((time.perf_counter() - start) / block)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--crown-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    net = dm_small()
    graph = bounds.parse_network(net)
    rng = np.random.default_rng(0)

    def batch(n):
        x = ops.convert_to_tensor(rng.uniform(0, 1, (n, 28, 28, 1)).astype("float32"))
        y = ops.convert_to_tensor(rng.integers(0, 10, n).astype("int32"))
        return x, y

    def forward(x, y):
        return net(x, training=False)

    def margins(method):
        def fn(x, y):
            box = bounds.input_box(x, args.epsilon)
            return bounds.margin_lower_bounds(graph, box, y, method)

        return fn

    rows = []
    for name, fn, n in [
        ("forward", forward, args.batch_size),
        ("ibp", margins("ibp"), args.batch_size),
        ("crown-ibp", margins("crown-ibp"), args.batch_size),
        ("forward", forward, args.crown_batch_size),
        ("crown", margins("crown"), args.crown_batch_size),
        ("alpha-crown", margins("alpha-crown"), args.crown_batch_size),
    ]:
        compiled = backend.compile_function(fn)
        seconds = _time(compiled, batch(n), args.repeats)
        rows.append({"name": name, "batch_size": n, "seconds_per_batch": seconds, "samples_per_second": n / seconds})

    forward_by_batch = {r["batch_size"]: r["seconds_per_batch"] for r in rows if r["name"] == "forward"}
    for r in rows:
        r["cost_vs_forward"] = r["seconds_per_batch"] / forward_by_batch[r["batch_size"]]

    header = (
        f"bench_bounds: {net.name} ({net.count_params()} parameters), epsilon {args.epsilon}, "
        f"backend {keras.backend.backend()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print(header)
    print(f"{'pass':<11} {'batch':>6} {'ms/batch':>10} {'samples/s':>11} {'x forward':>10}")
    for r in rows:
        print(
            f"{r['name']:<11} {r['batch_size']:>6} {1000 * r['seconds_per_batch']:>10.3f} "
            f"{r['samples_per_second']:>11.1f} {r['cost_vs_forward']:>10.2f}"
        )
    ibp = next(r for r in rows if r["name"] == "ibp")
    verdict = "meets" if ibp["cost_vs_forward"] <= 3.0 else "misses"
    print(f"IBP certification costs {ibp['cost_vs_forward']:.2f}x a forward pass: {verdict} the 3x target")
    by_name = {r["name"]: r for r in rows}
    alpha_ratio = by_name["alpha-crown"]["seconds_per_batch"] / by_name["crown"]["seconds_per_batch"]
    print(f"alpha-CROWN ({ALPHA_STEPS} Adam steps on the final pass) costs {alpha_ratio:.2f}x "
          "CROWN per sample")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "alpha_crown_vs_crown": alpha_ratio}, f, indent=2)


if __name__ == "__main__":
    main()
