"""Shared arguments of the example scripts: which data, how much of it."""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="fashion_mnist",
                   help="a dataset name or path (default: fashion_mnist)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N training and test images (default: all)")
    p.add_argument("--epsilon", type=float, default=0.1, help="L-infinity radius (default: 0.1)")
    return p


def load(args):
    import cactus_keras

    data = cactus_keras.data.load(args.dataset)
    n = args.limit
    return (data.x_train[:n], data.y_train[:n], data.x_test[:n], data.y_test[:n],
            data.num_classes)
