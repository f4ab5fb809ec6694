"""Train a small CNN on Fashion-MNIST with plain Keras, then certify it.

Shows the certification workflow on an ordinary Keras model: `cactus_keras.certify`
with each bound method, a PGD attack as the empirical upper bound, and the model saved
as a `.keras` file for `cactus-keras certify`.

    python examples/certify_fashion_mnist.py --output runs/quickstart
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cactus_keras  # noqa: E402


def small_cnn(input_shape, num_classes):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 4, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 4, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="small_cnn",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/quickstart")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000, help="test samples to certify")
    parser.add_argument("--crown-samples", type=int, default=200)
    parser.add_argument("--epsilons", default="0.001,0.005,0.01")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    data = cactus_keras.data.load(args.dataset)
    print(f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test from {data.source}")
    net = small_cnn(data.input_shape, data.num_classes)
    net.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    net.fit(data.x_train, data.y_train, batch_size=128, epochs=args.epochs, verbose=2)
    path = os.path.join(args.output, "model.keras")
    net.save(path)
    print(f"saved {path}")

    x, y = data.x_test[: args.samples], data.y_test[: args.samples]
    rows = []
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        attack = cactus_keras.attacks.pgd(net, x, y, epsilon, steps=20, verbose=0)
        for method in cactus_keras.bounds.BOUNDS:
            n = args.crown_samples if method in ("crown", "best") else args.samples
            start = time.perf_counter()
            result = cactus_keras.certify(net, x[:n], y[:n], epsilon, bound=method, verbose=0)
            seconds = time.perf_counter() - start
            broken = int((result.certified & attack.attacked[:n]).sum())
            assert broken == 0, f"{broken} certified samples broken by PGD"
            rows.append({
                **result.to_dict(),
                "pgd_accuracy": float(1 - attack.attacked[:n].mean()),
                "seconds": seconds,
            })
            print(
                f"epsilon {epsilon:<6g} {method:<9} n={n:<5} clean {result.clean_accuracy:.4f}  "
                f"PGD {rows[-1]['pgd_accuracy']:.4f}  certified {result.certified_accuracy:.4f}  "
                f"({seconds:.1f} s)"
            )
    out = os.path.join(args.output, "certify.json")
    with open(out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
