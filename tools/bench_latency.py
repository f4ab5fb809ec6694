"""File size and LiteRT latency of the unpruned, masked and shrunk int8 files of a network.

Structured pruning zeroes whole channels (a mask): the masked int8 file is as large and
as slow as the unpruned one. `cactus_keras.compression.shrink` removes the channels;
this measures what that buys. Each file: bytes, and the median of many timed batch-1
`invoke()` calls in LiteRT's interpreter (default kernels, XNNPACK where it applies),
warmed first, one thread; all three files timed in the same process, interleaved in
rounds so that load from other processes falls on each alike.

    python tools/bench_latency.py --network results/.../network.keras --ratio 0.5
    python tools/bench_latency.py --arch cnn5 --train-images 5000 --ratio 0.5 --json out.json

`--files LABEL=PATH ...` times existing int8 files the same way (e.g. the files a
`compress` search chose), the first one the reference of the ratios.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cactus_keras  # noqa: E402
from cactus_keras import export  # noqa: E402
from cactus_keras.compress import file_size, measure_latency  # noqa: E402
from cactus_keras.compression import prune_structured, shrink  # noqa: E402


def _data(count):
    data = cactus_keras.data.load("fashion_mnist", download=False)
    return data.x_train[:count], data.y_train[:count]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--network", help="a saved Keras network (.keras)")
    source.add_argument("--arch", help="a model-zoo architecture, trained here briefly")
    source.add_argument("--files", nargs="+", metavar="LABEL=PATH",
                        help="existing int8 .tflite files, timed as they are")
    parser.add_argument("--train-images", type=int, default=5000,
                        help="with --arch: Fashion-MNIST training images for one epoch")
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="global L2 structured pruning ratio (fraction of hidden channels)")
    parser.add_argument("--runs", type=int, default=300, help="timed invokes per round and file")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, files interleaved")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    if args.files:
        return _files(args)
    x, y = _data(max(args.train_images, 200))
    if args.network:
        net = keras.saving.load_model(args.network, compile=False)
        name = args.network
    else:
        keras.utils.set_random_seed(0)
        net = cactus_keras.models.get(args.arch, (28, 28, 1), 10)
        net.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        net.fit(x[:args.train_images], y[:args.train_images], batch_size=128, epochs=1, verbose=0)
        name = f"{args.arch} (one epoch on {args.train_images} images, standard training)"
    masked = prune_structured(net, args.ratio)
    small = shrink(masked)
    networks = {"unpruned": net, "masked": masked, "shrunk": small}
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = {key: export.to_tflite(n, os.path.join(folder, f"{key}.tflite"), x[:200])
                 for key, n in networks.items()}
        medians, last = _interleaved(paths, args)
        for key, path in paths.items():
            rows[key] = {
                "bytes": file_size(path),
                "parameters": int(networks[key].count_params()),
                "median_ms": statistics.median(medians[key]),
                "round_medians_ms": medians[key],
                "interpreter": last[key]["interpreter"],
            }
    report = {
        "network": name,
        "ratio": args.ratio,
        "pruning": "global_l2_structured",
        "runs_per_round": args.runs,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": args.threads,
        "batch": 1,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "files": rows,
    }
    base = rows["unpruned"]
    print(f"{name}, global L2 structured {args.ratio}; batch 1, {args.threads} thread(s), "
          f"median of {args.rounds} rounds x {args.runs} invokes ({rows['shrunk']['interpreter']})")
    print(f"{'file':<9} {'bytes':>9} {'params':>9} {'median ms':>10} {'size x':>7} {'speed x':>8}")
    for key, row in rows.items():
        print(f"{key:<9} {row['bytes']:>9} {row['parameters']:>9} {row['median_ms']:>10.4f} "
              f"{base['bytes'] / row['bytes']:>7.2f} {base['median_ms'] / row['median_ms']:>8.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


def _interleaved(paths, args):
    """{label: [median ms of each round]}, {label: the last round's measurement}."""
    medians = {key: [] for key in paths}
    last = {}
    for _ in range(args.rounds):
        for key, path in paths.items():
            last[key] = measure_latency(path, args.runs, args.warmup, args.threads)
            medians[key].append(last[key]["median_ms"])
    return medians, last


def _files(args):
    paths = {}
    for item in args.files:
        label, sep, path = item.partition("=")
        if not sep or not label or not os.path.isfile(path):
            raise SystemExit(f"bench_latency: --files takes LABEL=PATH of existing files, "
                             f"got {item!r}.")
        paths[label] = path
    medians, last = _interleaved(paths, args)
    rows = {key: {"path": path, "bytes": file_size(path),
                  "median_ms": statistics.median(medians[key]),
                  "round_medians_ms": medians[key], "interpreter": last[key]["interpreter"]}
            for key, path in paths.items()}
    first = next(iter(rows.values()))
    print(f"int8 files; batch 1, {args.threads} thread(s), median of {args.rounds} rounds x "
          f"{args.runs} invokes, files interleaved ({first['interpreter']}); ratios against "
          f"the first")
    print(f"{'file':<28} {'bytes':>9} {'median ms':>10} {'size x':>7} {'speed x':>8}")
    for key, row in rows.items():
        print(f"{key:<28} {row['bytes']:>9} {row['median_ms']:>10.4f} "
              f"{first['bytes'] / row['bytes']:>7.2f} {first['median_ms'] / row['median_ms']:>8.2f}")
    report = {"runs_per_round": args.runs, "rounds": args.rounds, "warmup": args.warmup,
              "threads": args.threads, "batch": 1, "cpus": os.cpu_count(), "files": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
