"""tools/awp_proxy.py: the share of quantized kernels inside the AWP ball and the losses
at the quantized kernels and at the AWP point."""

import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))

import awp_proxy  # noqa: E402

from cactus_keras.bounds import input_box, margin_lower_bounds, parse_network  # noqa: E402
from cactus_keras.compression import compressible_kernels  # noqa: E402
from cactus_keras.compression.quantization import fake_quantize  # noqa: E402
from cactus_keras.training.losses import certified_loss  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    keras.utils.set_random_seed(7)
    network = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 6)).astype("float32")
    y = rng.integers(0, 3, 40)
    return network, x, y


def _loss(network, x, y, epsilon):
    margins = margin_lower_bounds(parse_network(network), input_box(x, epsilon), y, "ibp")
    return float(ops.mean(certified_loss(y, margins)))


def test_the_whole_kernel_is_inside_from_half_a_step(problem):
    network, x, y = problem
    shares = [awp_proxy.measure(network, x, y, 0.05, 4, eta, 16)[0] for eta in (0.1, 0.25, 0.5, 1.0)]
    assert shares == sorted(shares)
    assert shares[2] == shares[3] == 1.0
    assert shares[0] < 1.0


def test_losses_at_the_quantized_kernels_and_at_the_awp_point(problem):
    network, x, y = problem
    epsilon = 0.05
    original = _loss(network, x, y, epsilon)
    # A ball of radius 0 is the network itself; the batches are averaged by size.
    _, zero = awp_proxy.measure(network, x, y, epsilon, 4, 0.0, 16)
    assert zero["awp1"] == pytest.approx(original, rel=1e-5)
    assert zero["awp10"] == pytest.approx(original, rel=1e-5)
    # The quantized loss is that of the network with its kernels quantized.
    kernels = compressible_kernels(network)
    saved = [k.numpy() for k in kernels]
    for k in kernels:
        k.assign(fake_quantize(k.value, 4, True))
    quantized = _loss(network, x, y, epsilon)
    for k, value in zip(kernels, saved):
        k.assign(value)
    _, ball = awp_proxy.measure(network, x, y, epsilon, 4, 1.0, 16)
    assert ball["quantized"] == pytest.approx(quantized, rel=1e-5)
    # Ascent in a ball that holds the quantized kernels raises the loss above the
    # network's own, and ten steps find at least as much as one here.
    assert ball["awp1"] > original
    assert ball["awp10"] >= ball["awp1"] - 1e-6
