"""Peak memory of `verify_tflite` against the number of samples it certifies.

Each size runs in a fresh process; a thread samples the process's resident memory every
50 ms during the call, so the figure is the verifier's own peak above the process
before it (loading the model and data not counted).

    python tools/bench_verify_memory.py --model M.int8.tflite --samples 256 1024 4096 10000 \
        --output results/benchmarks/bench_verify_memory.txt
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(model, samples, epsilon):
    import numpy as np

    import cactus_keras
    from cactus_keras.export import verify_tflite

    data = cactus_keras.data.load("fashion_mnist")
    reps = -(-samples // len(data.y_test))
    x = np.concatenate([data.x_test] * reps)[:samples]
    y = np.concatenate([data.y_test] * reps)[:samples]
    peak, done = [0.0], [False]

    def watch():
        while not done[0]:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.05)

    before = _rss_mib()
    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    verify_tflite(model, x, y, epsilon, verbose=0)
    seconds = time.perf_counter() - start
    done[0] = True
    watcher.join()
    print(json.dumps({"samples": samples, "rss_before_mib": round(before),
                      "peak_above_mib": round(peak[0] - before), "seconds": round(seconds, 1)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an int8 .tflite file (28x28x1 input)")
    parser.add_argument("--samples", type=int, nargs="+", default=[256, 10000],
                        help="sample counts, each certified in a fresh process")
    parser.add_argument("--epsilon", type=float, default=0.01, help="radius (default 0.01)")
    parser.add_argument("--output", default=None, help="also write the table here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return _child(args.model, args.child, args.epsilon)
    lines = ["command: python tools/bench_verify_memory.py " + " ".join(sys.argv[1:]),
             f"{'samples':>8} {'peak above before (MiB)':>24} {'seconds':>8}"]
    for n in args.samples:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", str(n),
                              "--epsilon", str(args.epsilon)], capture_output=True, text=True,
                             check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        lines.append(f"{row['samples']:>8} {row['peak_above_mib']:>24} {row['seconds']:>8}")
        print(lines[-1], flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
