"""Compression of networks: pruning masks and the members of the compression set."""

from cactus_keras.compression.pruning import (
    PRUNING_METHODS,
    Pruning,
    magnitude_masks,
    prunable_kernels,
    sparsity,
)
