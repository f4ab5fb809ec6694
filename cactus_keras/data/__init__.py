"""Dataset loading: MNIST, Fashion-MNIST and CIFAR-10, offline first."""

from cactus_keras.data.datasets import Dataset
from cactus_keras.data.datasets import DatasetNotFoundError
from cactus_keras.data.datasets import load
from cactus_keras.data.idx import DatasetFormatError
from cactus_keras.data.idx import load_idx

__all__ = [
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "load",
    "load_idx",
]
