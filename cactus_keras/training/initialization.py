"""IBP initialization (Shi et al. 2021, "Fast certified robust training")."""

from __future__ import annotations

import math

import numpy as np

from cactus_keras.bounds.graph import parse_network
from cactus_keras.compression.kernels import AFFINE_KERNEL_LAYERS


def ibp_initialize(network, seed=None):
    """Re-initializes Dense and Conv kernels as N(0, sigma^2), sigma = sqrt(2 pi) / fan_in,
    and their biases to zero.

    With this variance the interval widths of a ReLU network neither explode nor vanish
    with depth at initialization, which is what makes short IBP schedules train.

    Example:

    ```python
    net = cactus_keras.models.cnn7()
    cactus_keras.training.ibp_initialize(net, seed=0)
    ```
    """
    rng = np.random.default_rng(seed)
    count = 0
    for layer in parse_network(network).layers():
        if not isinstance(layer, AFFINE_KERNEL_LAYERS):
            continue
        kernel = layer.kernel
        fan_in = int(np.prod(kernel.shape[:-1]))
        sigma = math.sqrt(2 * math.pi) / fan_in
        kernel.assign(rng.normal(0.0, sigma, kernel.shape).astype(kernel.dtype))
        if layer.bias is not None:
            layer.bias.assign(np.zeros(layer.bias.shape, layer.bias.dtype))
        count += 1
    if count == 0:
        raise ValueError(f"Network '{network.name}' has no Dense or Conv layer to initialize.")
    return network
