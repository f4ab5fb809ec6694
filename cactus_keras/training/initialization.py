"""IBP initialization (Shi et al. 2021, "Fast certified robust training")."""

from __future__ import annotations

import math

import numpy as np

from cactus_keras.bounds.graph import parse_network
from cactus_keras.compression.kernels import AFFINE_KERNEL_LAYERS


def ibp_initialize(network, seed=None):
    """Re-initializes the Dense and Conv kernels before the output layer as
    N(0, sigma^2), sigma = sqrt(2 pi) / fan_in, as Shi et al. (2021) do.

    With this variance the interval widths of a ReLU network neither explode nor vanish
    with depth at initialization, which is what makes short IBP schedules train. As in
    Shi et al.'s code (and CTRAIN's), the output layer's kernel and all biases keep
    their own initialization (Keras's default biases are zeros); batch norm is not
    touched.

    Example:

    ```python
    net = cactus_keras.models.cnn3()
    cactus_keras.training.ibp_initialize(net, seed=0)   # Shi et al. (2021)
    ```
    """
    rng = np.random.default_rng(seed)
    layers = [layer for layer in parse_network(network).layers()
              if isinstance(layer, AFFINE_KERNEL_LAYERS)]
    if len(layers) < 2:
        raise ValueError(
            f"Network '{network.name}' has no Dense or Conv layer before its output layer "
            "to initialize (IBP initialization leaves the output layer as it is)."
        )
    for layer in layers[:-1]:
        kernel = layer.kernel
        fan_in = int(np.prod(kernel.shape[:-1]))
        sigma = math.sqrt(2 * math.pi) / fan_in
        kernel.assign(rng.normal(0.0, sigma, kernel.shape).astype(kernel.dtype))
    return network
