"""Seconds per training step of `CactusModel.fit` fed in-memory arrays against the same
data as the experiment runner feeds it (`ShuffledBatches`, a `keras.utils.PyDataset`),
each in a fresh process, with the process's system time per step.

Found while timing the main job: its steps took twice the benchmarked step, with as
much system time as user time. This isolates the input path (same model, same batch
size, no callbacks but the batches' epoch counter): arrays (Keras's own tf.data path),
`ShuffledBatches` as a PyDataset (what distributed and JAX runs are fed), and
`ShuffledBatches.as_tf_dataset()` (the same batches, what single-device TensorFlow runs
are fed).

    python tools/bench_fit_input.py --steps 60 --output results/benchmarks/bench_fit_input_cpu.txt
"""

import argparse
import os
import platform
import subprocess
import sys

CHILD = r"""
import os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
import cactus_keras
from cactus_keras.experiments.training import EpochOfBatches, ShuffledBatches
kind, steps = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (128 * steps, 28, 28, 1)).astype("float32")
y = rng.integers(0, 10, 128 * steps)
keras.utils.set_random_seed(0)
model = cactus_keras.CactusModel(cactus_keras.models.cnn3((28, 28, 1), 10), 0.1)
model.compile(optimizer="adam")
batches = ShuffledBatches(x, y, 128, 0)
dataset = batches.as_tf_dataset()
def epoch():
    if kind == "arrays":
        model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)
    elif kind == "as_tf_dataset":
        model.fit(dataset, epochs=1, verbose=0, callbacks=[EpochOfBatches(batches)])
    else:
        model.fit(batches, epochs=1, verbose=0, callbacks=[EpochOfBatches(batches)])
epoch()  # tracing
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
epoch()
after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
print(f"{1000 * wall / steps:.1f} {1000 * (after.ru_stime - before.ru_stime) / steps:.1f} "
      f"{1000 * (after.ru_utime - before.ru_utime) / steps:.1f}")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2, help="processes per input kind")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    lines = [f"$ python tools/bench_fit_input.py --steps {args.steps} --repeats {args.repeats}"
             + (f" --output {args.output}" if args.output else ""),
             f"bench_fit_input: CactusModel(cnn3, epsilon 0.1, no members).fit, batch 128, "
             f"{args.steps} steps after one epoch of warm-up, one fresh process per line; "
             f"{platform.machine()}, {os.cpu_count()} CPUs, load average at the start "
             f"{os.getloadavg()[0]:.2f}",
             f"{'input':<16} {'ms/step':>8} {'system ms/step':>15} {'user ms/step':>13}"]
    for repeat in range(args.repeats):
        for kind in ("arrays", "ShuffledBatches", "as_tf_dataset"):
            out = subprocess.run([sys.executable, "-c", CHILD, kind, str(args.steps)],
                                 capture_output=True, text=True, check=True).stdout.split()
            lines.append(f"{kind:<16} {float(out[0]):>8.1f} {float(out[1]):>15.1f} "
                         f"{float(out[2]):>13.1f}")
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
