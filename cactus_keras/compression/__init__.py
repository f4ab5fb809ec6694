"""Compression of networks: pruning masks, fake quantization, and the members of the
compression set."""

from cactus_keras.compression.pruning import (
    PRUNING_METHODS,
    Pruning,
    magnitude_masks,
    prunable_kernels,
    sparsity,
)
from cactus_keras.compression.quantization import (
    Quantization,
    fake_quantize,
    quantization_scale,
)
