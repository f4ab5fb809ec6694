"""The boundary to TensorFlow Model Optimization (TF-MOT).

TF-MOT works on Keras 2 (`tf_keras`) models only, and importing it switches `tf.keras`
to Keras 2 for the whole process, so it is imported here alone, lazily, inside the
functions that need it. Keras 3 networks reach it through a `tf_keras` *twin*: the same
layers, built from each Keras 3 layer's config, with copied weights
(`tf_keras_twin`). TF-MOT compresses and fine-tunes the twin; the result comes back into a
Keras 3 network (`copy_twin_weights`) that our own bounds certify, or, for quantization
aware training, into an int8 `.tflite` file that `cactus_keras.export.verify_tflite`
certifies.

Example:

```python
from cactus_keras.interop import tfmot

pruned = tfmot.tfmot_prune(network, x_train, y_train, ratio=0.5)
cactus_keras.certify(pruned, x_test, y_test, epsilon=0.1)

tfmot.tfmot_quantize_to_tflite(network, x_train, y_train, "qat.tflite")
cactus_keras.export.verify_tflite("qat.tflite", x_test, y_test, epsilon=0.1)
```
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np

from cactus_keras import extras, validation
from cactus_keras.export.tflite import configure_int8, convert, write_file
from cactus_keras.interop.tf_keras_twins import (
    check_network,
    copy_twin_weights,
    layer_chain,
    tf_keras_twin,
)

# Layers whose kernel TF-MOT prunes (`prune_low_magnitude` wraps these only).
PRUNABLE_LAYERS = ("Dense", "Conv1D", "Conv2D")
_DEFAULT_BATCH_SIZE = 128

def _clone(network):
    clone = keras.models.clone_model(network)
    clone.set_weights(network.get_weights())
    return clone


def _fit_arguments(network, x, y, epochs, batch_size, learning_rate, seed, verbose):
    num_classes = int(network.outputs[0].shape[-1])
    x, y = validation.check_data(network, x, y, num_classes)
    if len(x) == 0:
        raise ValueError("`x` is empty; TF-MOT fine-tuning needs training samples.")
    if len(x) != len(y):
        raise ValueError(f"`x` has {len(x)} samples but `y` has {len(y)}.")
    epochs = validation.check_positive_int(epochs, "epochs")
    batch_size = _DEFAULT_BATCH_SIZE if batch_size is None else \
        validation.check_positive_int(batch_size, "batch_size")
    try:
        learning_rate = float(learning_rate)
    except (TypeError, ValueError):
        raise TypeError(f"`learning_rate` must be a number, got {learning_rate!r}.") from None
    if not np.isfinite(learning_rate) or learning_rate < 0:
        raise ValueError(
            f"`learning_rate` must be >= 0, got {learning_rate!r} (0 applies TF-MOT's "
            "compression to the weights as they are)."
        )
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an integer or None, got {seed!r}.")
    return x, y, epochs, batch_size, learning_rate, seed, verbose


def _fine_tune(model, x, y, epochs, batch_size, learning_rate, seed, verbose, callbacks=()):
    """Adam + sparse categorical cross-entropy from logits, as a TF-MOT user would."""
    import tensorflow as tf
    import tf_keras

    if seed is not None:
        tf_keras.utils.set_random_seed(int(seed))  # Python, NumPy and TF global seeds
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=None if seed is None else int(seed)).batch(batch_size)
    model.fit(dataset, epochs=epochs, verbose=verbose, callbacks=list(callbacks))
    return model


def _check_logits(network):
    last = layer_chain(network)[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", None)
    if isinstance(last, keras.layers.Activation) or name not in (None, "linear"):
        raise ValueError(
            f"The last layer '{last.name}' of model '{network.name}' applies an activation "
            f"({name}); TF-MOT fine-tuning uses the cross-entropy from logits, so the "
            "network must output logits (a Dense layer without activation)."
        )


def tfmot_prune(network, x, y, ratio, *, epochs=1, batch_size=128, learning_rate=1e-4,
                seed=0, verbose=0):
    """A copy of `network` pruned by TF-MOT's `prune_low_magnitude`, fine-tuned.

    Every Dense and Conv kernel of a `tf_keras_twin` is wrapped with
    `prune_low_magnitude` under `ConstantSparsity(ratio, begin_step=0, frequency=1)`
    (per layer magnitude pruning; biases, batch norm and other layers are left alone),
    the twin is fine-tuned for `epochs` epochs with Adam and the sparse categorical
    cross-entropy from logits (with TF-MOT's `UpdatePruningStep` callback, which
    applies the final masks at the end of each epoch), `strip_pruning` removes the
    wrappers and the weights are copied into a clone of `network`. The input network is
    not modified. Every pruned kernel then has a fraction `ratio` of zeros (to
    rounding; TF-MOT keeps round(size * (1 - ratio)) entries, and ties at the
    threshold keep more).

    Args:
        network: a Keras 3 model outputting logits (see `tf_keras_twin` for the layers).
        x, y: training inputs and integer labels for the fine-tuning.
        ratio: fraction of each kernel set to zero, in [0, 1). 0 returns a clone.
        epochs, batch_size, learning_rate: the fine-tuning (`batch_size=None` means
            128). `learning_rate=0` prunes the weights as they are: TF-MOT's masks are
            applied after one pass and no weight is trained.
        seed: seeds the shuffling and the global Python/NumPy/TF random state
            (`tf_keras.utils.set_random_seed`); None leaves them alone.
        verbose: passed to `fit`.

    Returns:
        A new Keras 3 model with the pruned, fine-tuned weights.

    Example:

    ```python
    pruned = tfmot_interop.tfmot_prune(network, x_train, y_train, 0.5, epochs=2)
    cactus_keras.certify(pruned, x_test, y_test, epsilon=0.1)
    ```
    """
    network = check_network(network)
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise TypeError(f"`ratio` must be a number in [0, 1), got {ratio!r}.") from None
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"`ratio` must be in [0, 1) (the fraction of each kernel set to "
                         f"zero), got {ratio!r}.")
    extras.require("tensorflow_model_optimization", "TF-MOT pruning (tfmot_prune)")
    layer_chain(network)
    _check_logits(network)
    fit = _fit_arguments(network, x, y, epochs, batch_size, learning_rate, seed, verbose)
    if not any(type(l).__name__ in PRUNABLE_LAYERS for l in layer_chain(network)):
        raise ValueError(f"Model '{network.name}' has no Dense or Conv layer to prune.")
    if ratio == 0.0:
        return _clone(network)

    import tensorflow_model_optimization as tfmot

    sparsity = tfmot.sparsity.keras
    twin = tf_keras_twin(network)
    schedule = sparsity.ConstantSparsity(ratio, begin_step=0, frequency=1)

    def wrap(layer):
        if type(layer).__name__ in PRUNABLE_LAYERS:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    import tf_keras

    # The wrappers hold the twin's own layers (and weights), as in TF-MOT's examples.
    wrapped = tf_keras.models.clone_model(twin, clone_function=wrap)
    _fine_tune(wrapped, *fit, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(wrapped)
    pruned = _clone(network)
    copy_twin_weights(stripped, pruned)
    return pruned


def tfmot_quantize_to_tflite(network, x, y, path, *, epochs=1, batch_size=128,
                             learning_rate=1e-4, representative_samples=200, seed=0,
                             verbose=0):
    """TF-MOT quantization-aware training, then a full-integer int8 `.tflite` file.

    `tfmot.quantization.keras.quantize_model` (default 8-bit scheme: per-channel
    symmetric int8 weights, asymmetric int8 activations, Conv + BatchNormalization
    folding) wraps a `tf_keras_twin` of `network`, which is fine-tuned like
    `tfmot_prune` does (Adam, cross-entropy from logits), then converted with
    `tf.lite.TFLiteConverter.from_keras_model` to full-integer int8
    (`Optimize.DEFAULT`, a representative dataset of the first
    `representative_samples` inputs of `x`, `TFLITE_BUILTINS_INT8` only, int8 input
    and output tensors). As with `cactus_keras.export.to_tflite`, the input tensor
    holds int8 codes of the float data (quantize with its scale and zero point) and
    the output holds int8 codes of the logits; `cactus_keras.export.verify_tflite`
    certifies the file. The input network is not modified.

    Args:
        network: a Keras 3 model outputting logits (see `tf_keras_twin` for the layers).
        x, y: training inputs and integer labels for the fine-tuning (and calibration).
        path: the `.tflite` file to write (parent folders are created).
        epochs, batch_size, learning_rate: the fine-tuning (`batch_size=None` means 128).
        representative_samples: at most this many inputs of `x` calibrate the
            converter (QAT already fixed most ranges).
        seed: seeds the shuffling and the global Python/NumPy/TF random state
            (`tf_keras.utils.set_random_seed`); None leaves them alone.
        verbose: passed to `fit`.

    Returns:
        `path`, as a string.

    Raises:
        ValueError: a layer TF-MOT's default 8-bit scheme cannot quantize (named), or a
            failed conversion.

    Example:

    ```python
    tfmot_interop.tfmot_quantize_to_tflite(network, x_train, y_train, "qat.tflite")
    result = cactus_keras.export.verify_tflite("qat.tflite", x_test, y_test, 0.1)
    ```
    """
    extras.require("tensorflow_model_optimization", "TF-MOT quantization (tfmot_quantize_to_tflite)")
    import tensorflow as tf

    network = check_network(network)
    _check_logits(network)
    fit = _fit_arguments(network, x, y, epochs, batch_size, learning_rate, seed, verbose)
    representative_samples = validation.check_positive_int(representative_samples,
                                                           "representative_samples")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` '{path}' is a directory; pass a file name such as "
                         "'model.tflite'.")
    twin = tf_keras_twin(network)
    qat = _quantize_model(twin, network)
    _fine_tune(qat, *fit)

    converter = configure_int8(tf.lite.TFLiteConverter.from_keras_model(qat),
                               fit[0][:representative_samples])
    with warnings.catch_warnings():
        # QAT models have no input statistics; the representative dataset gives them.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs")
        content = convert(converter, f"the QAT twin of model '{network.name}' (int8)")
    return write_file(path, content)


_QAT_HINTS = {
    "Rescaling": "Apply the rescaling in the data pipeline instead of in the model",
    "Conv1D": "Use Conv2D on inputs of shape (length, 1, channels)",
}


def _quantize_model(twin, network):
    import tensorflow_model_optimization as tfmot

    supported = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    for layer in twin.layers:
        # BatchNormalization is not in the registry: quantize_model folds it into the
        # Dense/Conv before it, and raises if it cannot.
        if type(layer).__name__ != "BatchNormalization" and not supported.supports(layer):
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) of model '{network.name}' "
                "cannot be quantized by TF-MOT's default 8-bit QAT scheme (it quantizes "
                "Dense, Conv2D with folded BatchNormalization, ReLU, pooling, Flatten, "
                "Reshape, ZeroPadding2D and Dropout). "
                + _QAT_HINTS.get(type(layer).__name__, "Remove or replace the layer")
                + ", or export the network with cactus_keras.export.to_tflite instead."
            )
    try:
        return tfmot.quantization.keras.quantize_model(twin)
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        message = str(error).strip().splitlines()
        raise ValueError(
            f"TF-MOT quantize_model failed on the twin of model '{network.name}': "
            f"{message[0][:400] if message else type(error).__name__}. The default 8-bit "
            "scheme supports Dense/Conv (with a following BatchNormalization folded), "
            "ReLU, pooling, Flatten, Reshape and Dropout."
        ) from None
