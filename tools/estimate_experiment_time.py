"""Estimates how long the training of an experiment config takes on this machine.

Times a few compiled training steps of each trained run (and of the fine-tuning
baselines' certified steps) on random data of the dataset's shape, and multiplies by
the steps of the whole schedule. Evaluation and TF-MOT's standard-loss fine-tuning are
not included (they are small next to certified training). Runs on any Keras backend, so
it estimates GPU time through JAX where TensorFlow is not installed:

    python tools/estimate_experiment_time.py examples/configs/cifar10_eps8_255_cnn7.toml
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cactus_keras.experiments import load_config  # noqa: E402
from cactus_keras.experiments.methods import IBPThenFinetune, TrainedMethod  # noqa: E402
from cactus_keras.experiments.training import build_model  # noqa: E402
from cactus_keras.compression import FixedMaskPruning  # noqa: E402
from cactus_keras.training import CactusModel  # noqa: E402

# Training-set size and image shape of the named datasets (paths: load and look).
KNOWN = {"mnist": (60000, (28, 28, 1), 10), "fashion_mnist": (60000, (28, 28, 1), 10),
         "cifar10": (50000, (32, 32, 3), 10)}


def shape_of(dataset):
    if dataset in KNOWN:
        return KNOWN[dataset]
    from cactus_keras.data import load

    data = load(dataset, download=False)
    return len(data.x_train), data.input_shape, data.num_classes


def seconds_per_step(model, batch_size, input_shape, num_classes, steps):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch_size, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, batch_size)
    for _ in range(3):
        model.train_on_batch(x, y)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    args = parser.parse_args()
    config = load_config(args.config)
    size, input_shape, num_classes = shape_of(config.dataset)
    print(f"{config.name}: {config.dataset} ({size} training samples, {input_shape}), "
          f"backend {keras.backend.backend()}, {config.seeds} seed(s)")
    total = 0.0
    trained = {}
    for name in config.ordered_runs():
        method = config.methods[name]
        if isinstance(method, TrainedMethod):
            train_config = config.train_config(method.overrides(), seed=0)
            model = build_model(train_config, input_shape, num_classes)
            step = seconds_per_step(model, train_config.batch_size, input_shape, num_classes, args.steps)
            steps = -(-(train_config.limit or size) // train_config.batch_size) * train_config.epochs
            trained[name] = model
        elif isinstance(method, IBPThenFinetune):
            source = config.methods[method.settings["source"]]
            train_config = config.train_config(source.overrides(), seed=0)
            network = build_model(train_config, input_shape, num_classes).network
            model = CactusModel(network, config.epsilon, compression=[FixedMaskPruning(0.7)],
                                include_full_network=False)
            model.compile(optimizer="adam")
            batch = method.setting("batch_size")
            step = seconds_per_step(model, batch, input_shape, num_classes, args.steps)
            levels = len(method.levels())
            steps = -(-size // batch) * method.setting("epochs") * levels
        else:
            print(f"  {name:<16} {method.name}: not estimated (standard-loss fine-tuning, small)")
            continue
        seconds = step * steps * config.seeds
        total += seconds
        print(f"  {name:<16} {method.name:<18} {1000 * step:8.1f} ms/step x {steps} steps "
              f"x {config.seeds} seed(s) = {seconds / 3600:.2f} h")
    print(f"  total certified training: {total / 3600:.2f} h")


if __name__ == "__main__":
    main()
