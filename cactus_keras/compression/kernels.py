"""The kernels that compression acts on: Dense and convolution kernels, in graph order."""

from __future__ import annotations

import keras

from cactus_keras.bounds.graph import parse_network

AFFINE_KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def compressible_kernels(network, exclude_output=False):
    """Kernel variables of the Dense and Conv layers of `network`, in graph order: what
    the members of the compression set prune or quantize.

    Biases and batch norm are never compressed. With `exclude_output`, the kernel of the
    layer producing the logits is left out.

    Example:

    ```python
    from cactus_keras.compression import compressible_kernels

    kernels = compressible_kernels(net, exclude_output=True)   # the two convolutions' kernels
    print([tuple(k.shape) for k in kernels])
    ```
    """
    graph = parse_network(network)
    kernels = []
    output_layer = None
    for node in graph.nodes:
        layer = node.rule.layer
        if isinstance(layer, AFFINE_KERNEL_LAYERS):
            output_layer = layer
            if all(layer.kernel is not k for k in kernels):
                kernels.append(layer.kernel)
    if exclude_output and output_layer is not None:
        kernels = [k for k in kernels if k is not output_layer.kernel]
    if not kernels:
        raise ValueError(
            f"Network '{network.name}' has no compressible kernel (Dense or Conv layers"
            + (", other than the output layer" if exclude_output else "")
            + "); pruning and quantization members need at least one."
        )
    return kernels
