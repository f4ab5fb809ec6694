"""Model zoo: the networks of the certified-training literature, as plain Keras models."""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["cnn3", "cnn5", "cnn7", "get", "mlp"]


def _dense_stack(x, units, batch_norm, name):
    x = layers.Dense(units, use_bias=not batch_norm, name=f"{name}_dense")(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _conv_stack(x, filters, kernel, strides, padding, batch_norm, name):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                      use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _build(name, input_shape, num_classes, conv_specs, dense_units, batch_norm):
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    if conv_specs and len(input_shape) != 3:
        raise ValueError(
            f"{name} is convolutional and needs image inputs (height, width, channels); "
            f"got input_shape={tuple(input_shape)}."
        )
    for i, (filters, kernel, strides, padding) in enumerate(conv_specs):
        x = _conv_stack(x, filters, kernel, strides, padding, batch_norm, f"block{i + 1}")
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units):
        x = _dense_stack(x, units, batch_norm, f"fc{i + 1}")
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def mlp(input_shape=(28, 28, 1), num_classes=10, hidden=(512, 512), batch_norm=False):
    """A ReLU MLP on flattened inputs.

    Example:

    ```python
    net = cactus_keras.models.mlp((28, 28, 1), 10, hidden=(256, 256))
    ```
    """
    return _build("mlp", input_shape, num_classes, [], list(hidden), batch_norm)


def cnn3(input_shape=(28, 28, 1), num_classes=10, batch_norm=False):
    """Two strided 4x4 convolutions (16, 32 filters) and the output layer.

    Example:

    ```python
    net = cactus_keras.models.cnn3(input_shape=(28, 28, 1), num_classes=10)
    model = cactus_keras.CactusModel(net, epsilon=0.1)
    ```
    """
    specs = [(16, 4, 2, "valid"), (32, 4, 2, "valid")]
    return _build("cnn3", input_shape, num_classes, specs, [], batch_norm)


def cnn5(input_shape=(28, 28, 1), num_classes=10, batch_norm=False):
    """Three convolutions, a 512-unit dense layer and the output layer.

    Example:

    ```python
    net = cactus_keras.models.cnn5(input_shape=(32, 32, 3), num_classes=10)   # CIFAR-10
    ```
    """
    specs = [(32, 3, 1, "same"), (32, 4, 2, "same"), (64, 4, 2, "same")]
    return _build("cnn5", input_shape, num_classes, specs, [512], batch_norm)


def cnn7(input_shape=(28, 28, 1), num_classes=10, batch_norm=True):
    """CNN7 of Shi et al. (2021), the standard network of IBP training papers.

    Five 3x3 convolutions (64, 64, 128 strided, 128, 128), a 512-unit dense layer and the
    output layer, with batch norm after every hidden layer.

    Example:

    ```python
    net = cactus_keras.models.cnn7(input_shape=(28, 28, 1), num_classes=10)
    cactus_keras.training.ibp_initialize(net, seed=0)
    ```
    """
    specs = [
        (64, 3, 1, "same"),
        (64, 3, 1, "same"),
        (128, 3, 2, "same"),
        (128, 3, 1, "same"),
        (128, 3, 1, "same"),
    ]
    return _build("cnn7", input_shape, num_classes, specs, [512], batch_norm)


ARCHITECTURES = {"mlp": mlp, "cnn3": cnn3, "cnn5": cnn5, "cnn7": cnn7}


def get(name, input_shape, num_classes, **kwargs):
    """The model-zoo network `name` ("mlp", "cnn3", "cnn5", "cnn7"), as configs name it.

    Example:

    ```python
    net = cactus_keras.models.get("cnn3", (28, 28, 1), 10, batch_norm=True)
    ```
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[name](input_shape, num_classes, **kwargs)
