"""Reads a Keras 3 Sequential or functional model as a flat graph of bound rules.

Nested models are inlined, fused activations (`Dense(..., activation="relu")`) are split
into an affine node and an activation node, and a softmax at the output is dropped: it
is monotone and preserves the arg-max, so certification works on the logits before it.
"""

from __future__ import annotations

import dataclasses
import keras

from cactus_keras import keras_internals
from cactus_keras.bounds import nonlinear
from cactus_keras.bounds import rules as rules_lib


@dataclasses.dataclass(frozen=True)
class Node:
    """One bound rule applied to values named by `inputs`, producing value `output`."""

    rule: rules_lib.BoundRule
    inputs: tuple
    output: object

    @property
    def is_affine(self):
        return isinstance(self.rule, rules_lib.AffineRule)


@dataclasses.dataclass(frozen=True)
class BoundGraph:
    """A model as rules in topological order.

    `input` names the model's single input value and `output` the logits value.
    Keys are opaque hashable objects; `nodes` is topologically sorted.

    Example:

    ```python
    graph = cactus_keras.bounds.parse_network(net)          # a BoundGraph
    print(graph.input_shape, graph.num_classes)             # (28, 28, 1) 10
    print([layer.name for layer in graph.layers()])
    ```
    """

    model: keras.Model
    input: object
    output: object
    nodes: tuple
    input_shape: tuple
    num_classes: int

    def producers(self):
        return {node.output: node for node in self.nodes}

    def layers(self):
        """The Keras layers of the graph, each once, in topological order (nested
        models inlined): the one walk over a network that everything else uses."""
        seen, layers = set(), []
        for node in self.nodes:
            layer = node.rule.layer
            if id(layer) not in seen:
                seen.add(id(layer))
                layers.append(layer)
        return layers

    def consumers(self):
        result = {}
        for node in self.nodes:
            for key in node.inputs:
                result.setdefault(key, []).append(node)
        return result


class UnsupportedModelError(ValueError):
    """The model cannot be bounded: an unsupported layer or model structure."""


def functional_of(model, error=UnsupportedModelError, purpose="bounding it",
                  needs="Bounds need"):
    """Returns the functional graph behind a Sequential or functional model; otherwise
    raises `error` saying what is missing, in the words of the caller (`purpose`: what
    the caller does with the model, `needs`: who needs the graph).

    ```python
    from cactus_keras.bounds.graph import functional_of, topological_nodes

    layers = [node.operation.name for node in topological_nodes(functional_of(net))]
    ```
    """
    if isinstance(model, keras.Sequential):
        functional = keras_internals.sequential_functional(model)
        if functional is None:
            raise error(
                f"The Sequential model '{model.name}' has no known input shape, so its "
                "graph cannot be read. Start it with `keras.Input(shape=...)` or call "
                f"`model.build((None, *input_shape))` before {purpose}."
            )
        return functional
    if keras_internals.nodes_by_depth(model) is not None:
        return model
    raise error(
        f"Model '{getattr(model, 'name', model)}' of class {type(model).__name__} is a "
        f"subclassed model whose computation cannot be read. {needs} a Sequential or "
        "functional Keras model (build the same network with `keras.Sequential` or the "
        "functional API)."
    )


def topological_nodes(functional):
    """The layer calls of a functional model, each after the calls it reads from."""
    nodes_by_depth = keras_internals.nodes_by_depth(functional)
    ordered = []
    for depth in sorted(nodes_by_depth.keys(), reverse=True):
        for node in nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            ordered.append(node)
    return ordered


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    if isinstance(layer, keras.layers.Activation):
        return rules_lib.activation_name(layer.activation) == "softmax"
    return False


class _Builder:
    def __init__(self):
        self.nodes = []
        self.unsupported = []
        # Layers whose rule exists but refuses this use of them, with the rule's reason.
        self.refused = []
        self._fresh = 0

    def fresh_key(self, hint):
        self._fresh += 1
        return ("fused", hint, self._fresh)

    def add_model(self, model, input_keys):
        functional = functional_of(model)
        if len(functional.inputs) != len(input_keys):
            raise UnsupportedModelError(
                f"Model '{model.name}' takes {len(functional.inputs)} inputs; bounds "
                "support models with a single image or feature input."
            )
        mapping = {id(t): key for t, key in zip(functional.inputs, input_keys)}
        for knode in topological_nodes(functional):
            layer = knode.operation
            args = [mapping[id(t)] for t in knode.input_tensors]
            outs = list(knode.outputs)
            if isinstance(layer, keras.Model):
                results = self.add_model(layer, args)
                for t, key in zip(outs, results):
                    mapping[id(t)] = key
                continue
            if len(outs) != 1:
                self.unsupported.append(layer)
                continue
            shapes = [tuple(t.shape[1:]) for t in knode.input_tensors]
            mapping[id(outs[0])] = self.add_layer(layer, args, shapes, outs[0])
        return [mapping[id(t)] for t in functional.outputs]

    def add_layer(self, layer, args, shapes, out_tensor):
        mode = getattr(layer, "quantization_mode", None)
        if mode:
            # Keras's quantized layers compute with integer kernels and (int8 mode)
            # inputs quantized on the fly per batch: the float rules would bound another
            # network, so a certificate of them would not be sound.
            raise UnsupportedModelError(
                f"Layer '{layer.name}' ({type(layer).__name__}) is quantized by Keras "
                f"(model.quantize({mode!r})): its kernel is quantized and its inputs are "
                "quantized on the fly, which the float bounds do not model, so they would "
                "not be sound. Certify the network before model.quantize, or export it to "
                "a full-integer int8 file with cactus_keras.export.to_tflite and certify "
                "that file with cactus_keras.export.verify_tflite."
            )
        try:
            rule = rules_lib.rule_for(layer, shapes)
        except rules_lib.RefusedLayerError as error:
            self.refused.append(str(error))
            return ("unsupported", id(out_tensor))
        except rules_lib.UnsupportedLayerError:
            self.unsupported.append(layer)
            return ("unsupported", id(out_tensor))
        activation = rules_lib.fused_activation(layer)
        out_key = ("tensor", id(out_tensor))
        if activation is None or rules_lib.activation_name(activation) == "linear":
            self.nodes.append(Node(rule, tuple(args), out_key))
            return out_key
        pre_key = self.fresh_key(layer.name)
        self.nodes.append(Node(rule, tuple(args), pre_key))
        try:
            act_rule = nonlinear.activation_rule(
                activation, owner=layer, input_shape=tuple(out_tensor.shape[1:])
            )
        except rules_lib.UnsupportedLayerError:
            self.unsupported.append(layer)
            return out_key
        self.nodes.append(Node(act_rule, (pre_key,), out_key))
        return out_key


def parse_network(model) -> BoundGraph:
    """Builds the bound graph of a Keras model, or explains why it cannot.

    Example:

    ```python
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    graph = cactus_keras.bounds.parse_network(net)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected a keras.Model (Sequential or functional), got {type(model).__name__}."
        )
    functional = functional_of(model)
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise UnsupportedModelError(
            f"Model '{model.name}' has {len(functional.inputs)} inputs and "
            f"{len(functional.outputs)} outputs; certification needs one input and one "
            "output of logits (or probabilities)."
        )
    builder = _Builder()
    input_key = ("tensor", id(functional.inputs[0]))
    (output_key,) = builder.add_model(model, [input_key])
    if builder.refused:
        raise UnsupportedModelError(" ".join(builder.refused))
    if builder.unsupported:
        names = ", ".join(
            f"'{layer.name}' ({type(layer).__name__}"
            + (f", activation={rules_lib.activation_name(rules_lib.fused_activation(layer))}"
               if rules_lib.fused_activation(layer) is not None else "")
            + ")"
            for layer in builder.unsupported
        )
        raise UnsupportedModelError(
            f"Model '{model.name}' has layers with no bound rule: {names}. Supported "
            f"layers: {', '.join(rules_lib.supported_layer_names())}; activations: "
            f"{', '.join(rules_lib.SUPPORTED_ACTIVATIONS)}. Replace the layer, or register "
            "a rule with `cactus_keras.bounds.register_rule`."
        )
    nodes = list(builder.nodes)
    # A trailing softmax only rescales logits monotonically; certify the logits.
    while nodes and nodes[-1].output == output_key and _is_softmax_node(nodes[-1]):
        output_key = nodes[-1].inputs[0]
        nodes.pop()
    for node in nodes:
        if _is_softmax_node(node):
            raise UnsupportedModelError(
                f"Model '{model.name}' applies softmax inside the network (layer "
                f"'{node.rule.layer.name}'); only a softmax on the output is supported."
            )
    output_shape = tuple(functional.outputs[0].shape)
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise UnsupportedModelError(
            f"Model '{model.name}' outputs shape {output_shape}; certification needs "
            "logits of shape (batch, num_classes)."
        )
    return BoundGraph(
        model=model,
        input=input_key,
        output=output_key,
        nodes=tuple(nodes),
        input_shape=tuple(functional.inputs[0].shape[1:]),
        num_classes=int(output_shape[-1]),
    )


def _is_softmax_node(node):
    return isinstance(node.rule, rules_lib.SoftmaxMarker)

