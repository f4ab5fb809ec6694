"""Small seeded models that, together, use every layer with a bound rule."""

import keras
import numpy as np
from keras import layers


def _randomize(model, seed):
    """Random weights, with batch-norm statistics far from the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1)
            continue
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape).astype("float32") * rng.choice([-1, 1], gamma.shape),
                rng.normal(0, 0.3, beta.shape).astype("float32"),
                rng.normal(0, 0.3, mean.shape).astype("float32"),
                rng.uniform(0.5, 2.0, var.shape).astype("float32"),
            ])
        elif isinstance(layer, layers.Normalization):
            continue
        elif layer.weights:
            layer.set_weights([
                rng.normal(0, 0.6, w.shape).astype("float32") for w in layer.get_weights()
            ])
    return model


def mlp(seed):
    inputs = keras.Input((6,))
    x = layers.Normalization(mean=[0.5] * 6, variance=[0.04, 0.1, 0.2, 0.3, 0.5, 1.0])(inputs)
    x = layers.Dense(10, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(8, activation="tanh")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(8)(x)
    x = layers.Activation("sigmoid")(x)
    x = layers.Dense(6, activation="softsign")(x)
    x = layers.LeakyReLU(negative_slope=0.1)(x)
    x = layers.Dense(5, activation="elu")(x)
    x = layers.Dense(4, activation="softmax")(x)
    return _randomize(keras.Model(inputs, x, name="mlp"), seed)


def cnn(seed):
    return _randomize(
        keras.Sequential(
            [
                keras.Input((9, 9, 1)),
                layers.Rescaling(2.0, offset=-1.0),
                layers.ZeroPadding2D(((1, 0), (0, 1))),
                layers.Conv2D(4, 3, strides=2, padding="same"),
                layers.BatchNormalization(),
                layers.ReLU(),
                layers.Conv2D(5, 2, dilation_rate=2, padding="valid", activation="relu"),
                layers.AveragePooling2D(2, padding="same"),
                layers.Conv2D(6, 3, strides=1, padding="same", activation="relu"),
                layers.Flatten(),
                layers.Dense(12, activation="relu"),
                layers.Dense(3),
            ],
            name="cnn",
        ),
        seed,
    )


def residual(seed):
    inputs = keras.Input((8, 8, 2))
    h = layers.Conv2D(2, 3, padding="same", activation="relu")(inputs)
    h = layers.Conv2D(2, 3, padding="same")(h)
    x = layers.Add()([inputs, h])
    x = layers.ReLU()(x)
    y = layers.Conv2D(3, 1, activation="relu")(x)
    z = layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    x = layers.Concatenate()([y, z])
    x = layers.MaxPooling2D(2)(x)
    d = layers.Subtract()([x, layers.Conv2D(6, 1)(x)])
    x = layers.Average()([x, d])
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(4)(x)
    return _randomize(keras.Model(inputs, x, name="residual"), seed)


def pooling(seed):
    inner = keras.Sequential(
        [keras.Input((10, 3)), layers.Conv1D(4, 3, strides=2, activation="relu"), layers.Reshape((4, 4))],
        name="inner",
    )
    inputs = keras.Input((10, 3))
    x = inner(inputs)
    x = layers.Permute((2, 1))(x)
    x = layers.Cropping1D((1, 0))(x)
    x = layers.AveragePooling1D(2)(x)
    x = layers.Conv1D(5, 1, activation="relu6")(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(6, activation="hard_sigmoid")(x)
    x = layers.Dense(5, activation="softplus")(x)
    x = layers.Dense(3)(x)
    x = layers.Softmax()(x)
    return _randomize(keras.Model(inputs, x, name="pooling"), seed)


def volumes(seed):
    inputs = keras.Input((6, 6, 6, 1))
    x = layers.ZeroPadding3D(1)(inputs)
    x = layers.Cropping3D(((1, 0), (0, 1), (1, 1)))(x)
    x = layers.Conv3D(3, 2, activation="relu")(x)
    x = layers.SpatialDropout3D(0.2)(x)
    x = layers.MaxPooling3D(2)(x)
    x = layers.AveragePooling3D((1, 1, 2))(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling3D()(x), layers.GlobalMaxPooling3D()(x)])
    x = layers.Dense(4)(x)
    return _randomize(keras.Model(inputs, x, name="volumes"), seed)


def sequences(seed):
    """The 1D and 2D layers the other builders leave out, and the layers that are the
    identity at inference (noise, dropouts, regularization)."""
    inputs = keras.Input((8, 3))
    x = layers.ZeroPadding1D(1)(inputs)
    x = layers.GaussianNoise(0.1)(x)
    x = layers.Conv1D(4, 3)(x)
    x = layers.ELU()(x)
    x = layers.SpatialDropout1D(0.2)(x)
    x = layers.MaxPooling1D(2)(x)
    a = layers.GlobalAveragePooling1D()(x)
    b = layers.Reshape((4, 4, 1))(x)
    b = layers.Cropping2D(((1, 0), (0, 1)))(b)
    b = layers.SpatialDropout2D(0.2)(b)
    b = layers.GlobalMaxPooling2D()(b)
    x = layers.Concatenate()([a, b])
    x = layers.Dense(6, activation="relu")(x)
    x = layers.ActivityRegularization(l1=0.01)(x)
    x = layers.AlphaDropout(0.2)(x)
    x = layers.GaussianDropout(0.2)(x)
    x = layers.Identity()(x)
    x = layers.Dense(3)(x)
    return _randomize(keras.Model(inputs, x, name="sequences"), seed)


BUILDERS = {
    "mlp": mlp,
    "cnn": cnn,
    "residual": residual,
    "pooling": pooling,
    "volumes": volumes,
    "sequences": sequences,
}


def layer_classes(model):
    """The classes of the layers of `model`, nested models' layers included."""
    classes = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            classes |= layer_classes(layer)
        else:
            classes.add(type(layer))
    return classes
