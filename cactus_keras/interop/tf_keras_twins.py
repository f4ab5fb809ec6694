"""Keras 2 (`tf_keras`) twins of Keras 3 networks, for TensorFlow Model Optimization.

TF-MOT works on `tf_keras` models only, and importing it switches `tf.keras` to Keras 2
for the whole process. A *twin* is the same chain of layers built in `tf_keras` from each
Keras 3 layer's config, with copied weights (`tf_keras_twin`); `copy_twin_weights`
brings a (compressed, fine-tuned) twin's weights back into a Keras 3 network.

Example:

```python
from cactus_keras.interop import tf_keras_twins

twin = tf_keras_twins.tf_keras_twin(network)
tf_keras_twins.copy_twin_weights(twin, network)
```
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from cactus_keras import extras, keras_internals, validation

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

def check_network(network, what="`network`"):
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


def layer_chain(network):
    """The layers of `network` in order (InputLayer excluded), checking that they form
    a linear chain from the input to the output, each layer used once."""
    layers = [layer for layer in network.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    graph = keras_internals.sequential_functional(network) if isinstance(network, keras.Sequential) else network
    nodes = [node for depth in (keras_internals.nodes_by_depth(graph) or {}).values()
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
                "own Pruning/AWPQuantization."
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
    extras.require("tf_keras", "A tf_keras (Keras 2) twin for TF-MOT")
    import tf_keras

    network = check_network(network)
    layers = layer_chain(network)
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
    network = check_network(network)
    pairs = _layer_pairs(layer_chain(network), twin.layers, network.name, twin.name)
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
    network = check_network(network)
    wrapped = [l.name for l in twin.layers if hasattr(l, "layer") and
               type(l).__module__.startswith(_MODULE)]
    if wrapped:
        raise ValueError(
            f"Twin '{twin.name}' still has TF-MOT wrappers ({', '.join(wrapped)}); call "
            "tfmot.sparsity.keras.strip_pruning(twin) before copying its weights back."
        )
    pairs = _layer_pairs(twin.layers, layer_chain(network), twin.name, network.name)
    _copy(pairs, twin.name, network.name)
    return network
