"""Throughput of the int8 certificate (`verify_tflite`) against the float IBP certificate
(`cactus_keras.certify(..., bound="ibp")`) of the same network, in ms per sample.

For each of cnn3, cnn5 and cnn7 (Fashion-MNIST shapes, 28x28x1) the network is trained
for one short epoch of standard training (`--train-samples` images) so that its weights
and activation ranges look like a trained network's, then exported to a full-integer
int8 `.tflite` file. Both certificates run on the same `--samples` test images (at least
2,000) in the same process:

* each at every batch size of `--batch-sizes`, after a warm-up per batch size;
* the runs of the two certificates interleaved (int8, ibp, int8, ibp, ...) so that the
  load of a shared machine falls on both alike, median of `--repeats` runs
  (`--slow-repeats` for cnn7, whose int8 run takes about a minute);
* the throughput of each is its best batch size's median (the batch size is printed);
  the ratio of those two is the number to compare. The old measure, one batch of
  `--one-batch` images, stays as a second column (`1-batch`): there `certify`'s fixed
  cost per call is a large part of the float time.

`--memory-samples N` also measures the peak memory of `verify_tflite` on N samples of
cnn7 (the Fashion-MNIST test images repeated as needed) at its default batch size, in
a child process: its peak resident set (`ru_maxrss`) minus the resident set before the
call.

`--models DIR` keeps the networks and files, so that another checkout of the package can
be timed on the very same files:

    python tools/bench_verify.py --models /tmp/bench_models --output results/benchmarks/x.txt
    PYTHONPATH=/tmp/old python tools/bench_verify.py --models /tmp/bench_models ...
"""

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cactus_keras  # noqa: E402
from cactus_keras import export  # noqa: E402
from cactus_keras.int8.rounding import DEFAULT_ROUNDING  # noqa: E402

ARCHITECTURES = ("cnn3", "cnn5", "cnn7")
SLOW = ("cnn7",)


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


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _certificates(net, path, args):
    """{side: fn(x, y, batch_size)} of the two certificates."""
    return {
        "int8": lambda x, y, b: export.verify_tflite(
            path, x, y, args.epsilon, batch_size=b, rounding=args.rounding, verbose=0),
        "ibp": lambda x, y, b: cactus_keras.certify(
            net, x, y, args.epsilon, bound="ibp", batch_size=b, verbose=0),
    }


def _time_architecture(arch, net, path, x, y, args):
    sides = _certificates(net, path, args)
    repeats = args.slow_repeats if arch in SLOW else args.repeats
    batch_sizes = [b for b in args.batch_sizes if b <= len(y)] or [len(y)]
    one = args.one_batch
    # Warm-up per batch size: the float certificate traces a function per batch shape
    # (the full run meets the last, partial batch too); the int8 one allocates its
    # interpreter per batch size (a small call is enough).
    for b in sorted(set(batch_sizes + [one])):
        sides["ibp"](x if b != one else x[:one], y if b != one else y[:one], b)
        sides["int8"](x[:64], y[:64], b)
    times = {(side, b): [] for side in sides for b in batch_sizes + ["one"]}
    for _ in range(repeats):
        for b in batch_sizes:
            for side, fn in sides.items():  # interleaved: the load falls on both alike
                times[(side, b)].append(_seconds(lambda: fn(x, y, b)))
        for side, fn in sides.items():
            times[(side, "one")].append(_seconds(lambda: fn(x[:one], y[:one], one)))
    median = {key: statistics.median(v) for key, v in times.items()}
    row = {"architecture": arch, "samples": len(y), "repeats": repeats,
           "seconds": {f"{side}@{b}": v for (side, b), v in times.items()}}
    for side in sides:
        best = min(batch_sizes, key=lambda b: median[(side, b)])
        row[f"{side}_batch_size"] = best
        row[f"{side}_ms_per_sample"] = 1000 * median[(side, best)] / len(y)
        row[f"{side}_one_batch_ms_per_sample"] = 1000 * median[(side, "one")] / one
    row["ratio"] = row["int8_ms_per_sample"] / row["ibp_ms_per_sample"]
    row["one_batch_ratio"] = (row["int8_one_batch_ms_per_sample"]
                              / row["ibp_one_batch_ms_per_sample"])
    result = sides["int8"](x, y, row["int8_batch_size"])
    row["int8_certified_accuracy"] = result.certified_accuracy
    row["simulation_agreement"] = result.simulation_agreement
    return row


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(args):
    """Runs in the child: peak memory of verify_tflite on --memory-samples of cnn7."""
    data = cactus_keras.data.load("fashion_mnist")
    _, path = _network("cnn7", args.models, data, args.train_samples)
    reps = -(-args.memory_samples // len(data.y_test))
    x = np.concatenate([data.x_test] * reps)[: args.memory_samples]
    y = np.concatenate([data.y_test] * reps)[: args.memory_samples]
    before = _rss_bytes()
    start = time.perf_counter()
    result = export.verify_tflite(path, x, y, args.epsilon, rounding=args.rounding,
                                  verbose=0)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"samples": len(y), "rss_before_mib": before / 2**20,
                      "peak_rss_mib": peak / 2**20,
                      "peak_increase_mib": (peak - before) / 2**20,
                      "inputs_mib": (x.nbytes + y.nbytes) / 2**20, "seconds": seconds,
                      "certified_accuracy": result.certified_accuracy}))


def _memory(args):
    command = [sys.executable, os.path.abspath(__file__), "--memory-child",
               "--memory-samples", str(args.memory_samples), "--models", args.models,
               "--epsilon", str(args.epsilon), "--rounding", args.rounding,
               "--train-samples", str(args.train_samples)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="256,1000",
                        help="comma-separated batch sizes; each certificate's best is used")
    parser.add_argument("--one-batch", type=int, default=256,
                        help="samples of the one-batch column (the old measure)")
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=2,
                        help="repeats for cnn7 (its int8 run takes about a minute)")
    parser.add_argument("--train-samples", type=int, default=2048)
    parser.add_argument("--rounding", default=DEFAULT_ROUNDING,
                        help="the rounding model of the int8 certificate (default: "
                             "verify_tflite's)")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--models", default="runs/bench_verify_models",
                        help="folder for the trained networks and their int8 files")
    parser.add_argument("--memory-samples", type=int, default=0,
                        help="also measure verify_tflite's peak memory on this many cnn7 "
                             "samples (0: skip)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--output", default=None, help="text file to write the table to")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.memory_child:
        return _memory_child(args)
    if args.samples < 2000:
        print(f"note: --samples {args.samples} is below the 2,000 the measure asks for",
              file=sys.stderr)

    data = cactus_keras.data.load("fashion_mnist")
    x, y = data.x_test[: args.samples], data.y_test[: args.samples]
    rows = []
    started = time.perf_counter()
    for arch in args.architectures.split(","):
        net, path = _network(arch, args.models, data, args.train_samples)
        rows.append(_time_architecture(arch, net, path, x, y, args))
        print(f"{arch} done after {time.perf_counter() - started:.0f} s: "
              f"{json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    memory = _memory(args) if args.memory_samples else None

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    header = [
        f"$ {command}",
        f"bench_verify{' (' + args.label + ')' if args.label else ''}: verify_tflite "
        f"(rounding={args.rounding}, interpreter cross-check included) vs "
        f"certify(bound='ibp'), epsilon {args.epsilon}, {args.samples} Fashion-MNIST test "
        f"images; each certificate at its best batch size of "
        f"{', '.join(map(str, args.batch_sizes))} after a warm-up, the two interleaved, "
        f"median of {args.repeats} runs ({args.slow_repeats} for "
        f"{', '.join(SLOW)}); 1-batch: one batch of {args.one_batch} images; networks "
        f"trained 1 epoch on {args.train_samples} images; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, backend {keras.backend.backend()}, package at "
        f"{os.path.dirname(cactus_keras.__file__)}, {time.perf_counter() - started:.0f} s, "
        f"load average at the end {os.getloadavg()[0]:.2f} (the cores are shared: "
        f"compare ratios of one run)",
    ]
    lines = header + [
        f"{'arch':<6} {'int8 ms/sample':>14} {'(batch)':>7} {'ibp ms/sample':>13} "
        f"{'(batch)':>7} {'ratio':>6} {'| 1-batch int8':>14} {'ibp':>7} {'ratio':>6} "
        f"{'int8 certified':>15} {'agreement':>10}"]
    for r in rows:
        lines.append(
            f"{r['architecture']:<6} {r['int8_ms_per_sample']:>14.3f} "
            f"{r['int8_batch_size']:>7} {r['ibp_ms_per_sample']:>13.3f} "
            f"{r['ibp_batch_size']:>7} {r['ratio']:>6.2f} "
            f"{'| ' + format(r['int8_one_batch_ms_per_sample'], '.3f'):>14} "
            f"{r['ibp_one_batch_ms_per_sample']:>7.3f} {r['one_batch_ratio']:>6.2f} "
            f"{r['int8_certified_accuracy']:>15.4f} {r['simulation_agreement']:>10.4f}")
    worst = max(r["ratio"] for r in rows)
    lines.append(f"worst ratio {worst:.2f}: {'meets' if worst <= 2.0 else 'misses'} the 2x "
                 "target")
    if memory:
        lines.append(
            f"memory: verify_tflite on {memory['samples']} cnn7 samples (default batch "
            f"size): peak RSS {memory['peak_rss_mib']:.0f} MiB, "
            f"{memory['peak_increase_mib']:.0f} MiB above the {memory['rss_before_mib']:.0f}"
            f" MiB before the call (inputs {memory['inputs_mib']:.0f} MiB), "
            f"{memory['seconds']:.0f} s")
    text = "\n".join(lines)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "memory": memory}, f, indent=2)


if __name__ == "__main__":
    main()
