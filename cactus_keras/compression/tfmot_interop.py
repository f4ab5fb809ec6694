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
from cactus_keras.compression import tfmot_interop

pruned = tfmot_interop.tfmot_prune(network, x_train, y_train, ratio=0.5)
cactus_keras.certify(pruned, x_test, y_test, epsilon=0.1)

tfmot_interop.tfmot_quantize_to_tflite(network, x_train, y_train, "qat.tflite")
cactus_keras.export.verify_tflite("qat.tflite", x_test, y_test, epsilon=0.1)
```
"""

from __future__ import annotations

import inspect
import os
import warnings

import keras
import numpy as np

from cactus_keras import validation

_MODULE = "tensorflow_model_optimization"

# Keras 3 layer class name -> tf_keras layer class name (the same, here).
SUPPORTED_LAYERS = (
    "InputLayer",
    "Dense",
    "Conv1D",
    "Conv2D",
    "Flatten",
    "Reshape",
    "Activation",
    "ReLU",
    "Dropout",
    "BatchNormalization",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "Rescaling",
    "ZeroPadding2D",
)
# Layers whose kernel TF-MOT prunes (`prune_low_magnitude` wraps these only).
PRUNABLE_LAYERS = ("Dense", "Conv1D", "Conv2D")
# Config keys that only describe how a layer was initialized: the weights are copied.
_INITIALIZER_KEYS = ("kernel_initializer", "bias_initializer", "beta_initializer",
                     "gamma_initializer", "moving_mean_initializer",
                     "moving_variance_initializer")
_SERIALIZED_KEYS = {
    "kernel_regularizer": "regularizers", "bias_regularizer": "regularizers",
    "activity_regularizer": "regularizers", "beta_regularizer": "regularizers",
    "gamma_regularizer": "regularizers", "kernel_constraint": "constraints",
    "bias_constraint": "constraints", "beta_constraint": "constraints",
    "gamma_constraint": "constraints",
}
_DEFAULT_BATCH_SIZE = 128


def is_tfmot_schedule(schedule):
    return type(schedule).__module__.startswith(_MODULE)


def schedule_to_config(schedule):
    """A JSON-able description of a TF-MOT pruning schedule."""
    config = schedule.get_config()
    return {"tfmot_schedule": config["class_name"], "config": config["config"]}


def schedule_from_config(config):
    import tensorflow_model_optimization as tfmot

    cls = getattr(tfmot.sparsity.keras, config["tfmot_schedule"], None)
    if cls is None:
        raise ValueError(
            f"Unknown TF-MOT pruning schedule {config['tfmot_schedule']!r} in a saved "
            "model; expected a class of tfmot.sparsity.keras."
        )
    return cls(**config["config"])


# --------------------------------------------------------------------------- twins


def _check_network(network, what="`network`"):
    if not isinstance(network, keras.Model):
        module = type(network).__module__
        hint = (" It looks like a tf.keras (Keras 2) model: tf_keras_twin converts Keras 3 "
                "models into such twins, not the other way round."
                if module.startswith(("tf_keras", "keras.src.engine", "tensorflow")) else "")
        raise TypeError(
            f"{what} must be a Keras 3 model (keras.Sequential or a functional "
            f"keras.Model), got {type(network).__name__}.{hint}"
        )
    return validation.check_single_io(network, "converting it for TF-MOT")


def _chain(network):
    """The layers of `network` in order (InputLayer excluded), checking that they form
    a linear chain from the input to the output, each layer used once."""
    layers = [layer for layer in network.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    graph = network._functional if isinstance(network, keras.Sequential) else network
    nodes = [node for depth in getattr(graph, "_nodes_by_depth", {}).values()
             for node in depth]
    tensor = network.inputs[0]
    for layer in layers:
        name = type(layer).__name__
        if name not in SUPPORTED_LAYERS:
            raise ValueError(
                f"Layer '{layer.name}' of model '{network.name}' is a {name}, which the "
                "TF-MOT twin does not support. Supported layer types: "
                f"{', '.join(SUPPORTED_LAYERS)}. Replace the layer (nested models must be "
                "flattened into one chain) or compress the network with cactus_keras's "
                "own Pruning/Quantization."
            )
        calls = [node for node in nodes if node.operation is layer]
        if len(calls) > 1:
            raise ValueError(
                f"Layer '{layer.name}' ({name}) is used {len(calls)} times in model "
                f"'{network.name}'; the TF-MOT twin supports linear chains of layers, each "
                "used once (no shared layers)."
            )
        inputs = calls[0].input_tensors if calls else []
        if len(inputs) != 1 or inputs[0] is not tensor:
            raise ValueError(
                f"Layer '{layer.name}' ({name}) of model '{network.name}' does not take the "
                "output of the layer before it as its only input: the TF-MOT twin supports "
                "linear chains of layers (each layer used once, no branches or skip "
                "connections)."
            )
        tensor = calls[0].output_tensors[0]
    if tensor is not network.outputs[0]:
        raise ValueError(
            f"The output of model '{network.name}' is not the output of its last layer; the "
            "TF-MOT twin supports linear chains of layers only."
        )
    return layers


def _dtype_name(layer, value):
    if isinstance(value, dict):
        value = value.get("config", {}).get("name", value)
    name = getattr(value, "name", value)
    if not isinstance(name, str) or name not in ("float32", "float16", "bfloat16",
                                                  "float64", "mixed_float16",
                                                  "mixed_bfloat16"):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has dtype policy {name!r}, which "
            "has no tf_keras equivalent (a quantized Keras 3 layer?). Convert the float "
            "network to TF-MOT, before any Keras 3 quantization."
        )
    return name


def _deserialize(layer, key, value, kind):
    import tf_keras

    if value is None:
        return None
    if isinstance(value, dict):
        value = {"class_name": value.get("class_name"), "config": value.get("config", {})}
    try:
        return getattr(tf_keras, kind).get(value)
    except Exception as error:  # tf_keras raises ValueError/TypeError on unknown names
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has {key}={value!r}, which "
            f"tf_keras cannot rebuild ({type(error).__name__}: {error}). Use a built-in "
            f"{kind[:-1]} or none."
        ) from None


def _twin_config(layer, cls):
    """The tf_keras config of Keras 3 `layer`: keys the tf_keras class accepts, dtype
    policies as names, initializers dropped (weights are copied)."""
    config = dict(layer.get_config())
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    accepted |= {"name", "trainable", "dtype"}
    if getattr(layer, "quantization_mode", None) or config.get("quantization_config"):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) is quantized by Keras 3 "
            f"(mode {getattr(layer, 'quantization_mode', None)!r}); TF-MOT needs the float "
            "network. Pass the network before keras quantization."
        )
    if getattr(layer, "lora_enabled", False) or config.get("lora_rank"):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has LoRA enabled; merge or "
            "disable LoRA before converting the network for TF-MOT."
        )
    twin = {}
    for key, value in config.items():
        if key in _INITIALIZER_KEYS:
            continue
        if key == "dtype":
            twin[key] = _dtype_name(layer, value)
        elif key in _SERIALIZED_KEYS and key in accepted:
            twin[key] = _deserialize(layer, key, value, _SERIALIZED_KEYS[key])
        elif key == "activation" and key in accepted:
            if not isinstance(value, str):
                twin[key] = _deserialize(layer, key, value, "activations")
            else:
                twin[key] = value
        elif key in accepted:
            twin[key] = value
        elif value not in (None, False, 0, "", (), []) and key not in (
                "renorm_momentum", "lora_alpha"):
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) sets {key}={value!r}, which "
                f"tf_keras.layers.{type(layer).__name__} does not support; remove that "
                "setting to convert the network for TF-MOT."
            )
    return twin


def tf_keras_twin(network):
    """A `tf_keras` (Keras 2) model with the architecture and weights of `network`.

    TF-MOT wraps only `tf_keras` models. The twin is a `tf_keras.Sequential` whose layers
    are built from the Keras 3 layers' configs (same names; Keras-3-only settings such
    as dtype policy objects are converted, initializers dropped) and whose weights are
    copied with `set_weights`, so on the same inputs it computes the same outputs (up to
    float rounding).

    Supported: Sequential and functional Keras 3 models that are a linear chain of
    `SUPPORTED_LAYERS` (InputLayer, Dense, Conv1D, Conv2D, Flatten, Reshape,
    Activation, ReLU, Dropout, BatchNormalization, MaxPooling2D, AveragePooling2D,
    GlobalAveragePooling2D, Rescaling, ZeroPadding2D).

    Args:
        network: a Keras 3 model with one input and one output.

    Returns:
        A built `tf_keras.Sequential`.

    Raises:
        TypeError: `network` is not a Keras 3 model.
        ValueError: a layer type or setting without a tf_keras twin, or a model that is
            not a linear chain (the message names the layer).

    Example:

    ```python
    twin = tfmot_interop.tf_keras_twin(network)
    np.testing.assert_allclose(twin.predict(x), network.predict(x), atol=1e-5)
    ```
    """
    import tf_keras

    network = _check_network(network)
    layers = _chain(network)
    input_shape = tuple(network.inputs[0].shape[1:])
    twin_layers = [tf_keras.Input(shape=input_shape, name=_input_name(network))]
    for layer in layers:
        cls = getattr(tf_keras.layers, type(layer).__name__)
        try:
            twin_layers.append(cls.from_config(_twin_config(layer, cls)))
        except ValueError:
            raise
        except Exception as error:  # tf_keras raises assorted errors on bad configs
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) could not be rebuilt in "
                f"tf_keras: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            ) from None
    twin = tf_keras.Sequential(twin_layers, name=f"{network.name}_tf_keras_twin")
    copy_network_weights(network, twin)
    return twin


def _input_name(network):
    for layer in network.layers:
        if isinstance(layer, keras.layers.InputLayer):
            return layer.name
    return None


def _layer_pairs(source_layers, target_layers, source, target):
    """Pairs (source layer, target layer) of the layers holding weights, by name, else
    by position among the weighted layers."""
    source_layers = [l for l in source_layers if l.weights]
    target_layers = [l for l in target_layers if l.weights]
    by_name = {l.name: l for l in target_layers}
    if len(by_name) == len(target_layers) and all(l.name in by_name for l in source_layers) \
            and len(source_layers) == len(target_layers):
        return [(l, by_name[l.name]) for l in source_layers]
    if len(source_layers) != len(target_layers):
        raise ValueError(
            f"Model '{source}' has {len(source_layers)} layers with weights, but '{target}' "
            f"has {len(target_layers)}; the weights can only be copied between models of "
            "the same architecture (build one with tf_keras_twin)."
        )
    return list(zip(source_layers, target_layers))


def _copy(pairs, source, target):
    for from_layer, to_layer in pairs:
        values = from_layer.get_weights()
        expected = [tuple(w.shape) for w in to_layer.get_weights()]
        found = [tuple(np.shape(v)) for v in values]
        if found != expected:
            raise ValueError(
                f"Layer '{from_layer.name}' of '{source}' has weight shapes {found}, but "
                f"layer '{to_layer.name}' of '{target}' expects {expected}; the models "
                "differ in architecture."
            )
        to_layer.set_weights(values)


def copy_network_weights(network, twin):
    """Copies the weights of Keras 3 `network` into its `tf_keras` twin (checking shapes).

    Example:

    ```python
    tfmot_interop.copy_network_weights(network, twin)
    ```
    """
    network = _check_network(network)
    pairs = _layer_pairs(_chain(network), twin.layers, network.name, twin.name)
    _copy(pairs, network.name, twin.name)
    return twin


def copy_twin_weights(twin, network):
    """Copies the weights of a `tf_keras` twin (for example after TF-MOT's
    `strip_pruning`) into the Keras 3 `network`, layer by layer (matched by name, else by
    position), checking the shapes. Returns `network`.

    Pruning and quantization wrappers must be removed first (`strip_pruning`).

    Example:

    ```python
    twin = tfmot_interop.tf_keras_twin(network)
    ...  # fine-tune or compress the twin with TF-MOT, then strip its wrappers
    tfmot_interop.copy_twin_weights(twin, network)
    ```
    """
    network = _check_network(network)
    wrapped = [l.name for l in twin.layers if hasattr(l, "layer") and
               type(l).__module__.startswith(_MODULE)]
    if wrapped:
        raise ValueError(
            f"Twin '{twin.name}' still has TF-MOT wrappers ({', '.join(wrapped)}); call "
            "tfmot.sparsity.keras.strip_pruning(twin) before copying its weights back."
        )
    pairs = _layer_pairs(twin.layers, _chain(network), twin.name, network.name)
    _copy(pairs, twin.name, network.name)
    return network


# --------------------------------------------------------------------- compression


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
    last = _chain(network)[-1]
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
    network = _check_network(network)
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise TypeError(f"`ratio` must be a number in [0, 1), got {ratio!r}.") from None
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"`ratio` must be in [0, 1) (the fraction of each kernel set to "
                         f"zero), got {ratio!r}.")
    _chain(network)
    _check_logits(network)
    fit = _fit_arguments(network, x, y, epochs, batch_size, learning_rate, seed, verbose)
    if not any(type(l).__name__ in PRUNABLE_LAYERS for l in _chain(network)):
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
    import tensorflow as tf

    network = _check_network(network)
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

    from cactus_keras.export.tflite import configure_int8, convert, write_file

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
