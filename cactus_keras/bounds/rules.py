"""Bound rules: how one Keras layer type maps input bounds to output bounds.

A rule wraps the user's layer (decomon-style) and reads its weights each call, so the
same rule serves float, masked and fake-quantized weights (for example inside
`Model.stateless_call`). There are two kinds:

* `AffineRule`: the layer is affine, `f(x) = L(x) + b`. A rule gives `L`, `|L|` (the
  same map with absolute weights), the adjoint `L^T` and `b`; interval propagation
  (center/radius form) and the backward linear pass of CROWN are derived from these.
* `MonotoneRule`: the layer is monotone non-decreasing in every input, so the interval
  of the output is `[f(lower), f(upper)]`. An elementwise rule may also give a linear
  relaxation for CROWN; without one CROWN uses the output interval itself.

Shape contracts (what every rule method takes and returns; `B` is the batch, `S` the
number of margin specifications of a backward pass, `in_k` the static shape of the
layer's k-th input without the batch (`rule.input_shapes[k]`), `out` that of its
output):

| method | takes | returns |
| --- | --- | --- |
| `parameters(clean_inputs, training)` | list of `(B, *in_k)` (clean inputs) | anything; passed back as `params` |
| `forward(inputs, params, training)` | list of `(B, *in_k)` | `(B, *out)` |
| `interval(boxes, params)` | list of `Box`, each side `(B, *in_k)` | `Box`, each side `(B, *out)` |
| `AffineRule.linear` / `abs_linear(inputs, params)` | list of `(B, *in_k)` | `(B, *out)`, without the offset |
| `AffineRule.offset(params)` | | broadcastable to `(B, *out)`, or None |
| `AffineRule.transpose(coefficients, params)` | `(B, S, *out)` | list of `(B, S, *in_k)`, one per input |
| `MonotoneRule.function(x)` | `(B, *in_0)` | `(B, *out)` |
| `MonotoneRule.relaxation(lower, upper)` | `(B, *in_0)` each | `Relaxation` of four `(B, *in_0)` tensors (elementwise layers only) |
| `MonotoneRule.free_lower_slopes(lower, upper)` | `(B, *in_0)` each | float mask `(B, *in_0)`, or None |

Every tensor is in the rule's `compute_dtype`. Rules must not change the batch
dimension, and a rule of a layer with one input still receives and returns lists
where the table says so.
"""

from __future__ import annotations

import collections

import keras
from keras import ops

Box = collections.namedtuple("Box", ["lower", "upper"])
Box.__doc__ = """Elementwise lower and upper bounds of one tensor (batch first).

Example:

```python
box = cactus_keras.bounds.input_box(x_test, epsilon=0.1)    # a Box, cut to [0, 1]
assert np.all(box.lower <= x_test) and np.all(x_test <= box.upper)
```
"""

Relaxation = collections.namedtuple(
    "Relaxation", ["lower_slope", "lower_intercept", "upper_slope", "upper_intercept"]
)
Relaxation.__doc__ = """Elementwise linear bounds `lower_slope*x + lower_intercept <= f(x) <=
upper_slope*x + upper_intercept` valid on an input box.

Example, the relaxation of a monotone layer of one's own (for CROWN):

```python
class Clip01(keras.layers.Layer):
    def call(self, x):
        return keras.ops.clip(x, 0.0, 1.0)

@cactus_keras.bounds.register_rule(Clip01)
class Clip01Rule(cactus_keras.bounds.MonotoneRule):
    def relaxation(self, lower, upper):
        # f(lower) <= f(x) <= f(upper) on the box: constant bounds, valid for any
        # non-decreasing f (slopes 0).
        zero = keras.ops.zeros_like(lower)
        return cactus_keras.bounds.Relaxation(zero, self.function(lower),
                                              zero, self.function(upper))

clipped = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(16), Clip01(), keras.layers.Dense(10)])
result = cactus_keras.certify(clipped, x_test, y_test, epsilon=0.01, bound="crown")
```
"""


class UnsupportedLayerError(ValueError):
    """Raised when a layer has no bound rule."""


class RefusedLayerError(UnsupportedLayerError):
    """Raised by a rule that exists but refuses a configuration of its layer; its
    message (which names the layer, the reason and the fix) is shown as it is."""


_REGISTRY = {}


def _is_rule(rule):
    """A `BoundRule` subclass, or a factory function `(layer, input_shapes) -> BoundRule`
    (for a layer whose rule depends on its settings, such as `Activation`)."""
    if isinstance(rule, type):
        return issubclass(rule, BoundRule)
    return callable(rule)


def register_rule(*layer_classes, replace=False):
    """Registers a rule class for one or more Keras layer classes.

    A layer finds its rule along its class hierarchy: the rule registered for its own
    class, else for the nearest base class (`type(layer).__mro__`). So subclasses of a
    registered layer class use the same rule unless they register their own, and a rule
    registered for a base class (even `keras.layers.Layer`) serves every subclass that
    has none of its own.

    A layer class that already has a rule is refused unless `replace=True`, so that a
    rule of one's own never silently replaces a built-in one (`unregister_rule` undoes
    a registration).

    Args:
        *layer_classes: `keras.layers.Layer` subclasses.
        replace: replace the rule already registered for a class instead of refusing.

    Example:

    ```python
    class MyScale(keras.layers.Layer):           # a layer of one's own: 2x - 1
        def call(self, x):
            return 2.0 * x - 1.0

    @cactus_keras.bounds.register_rule(MyScale)
    class MyScaleRule(cactus_keras.bounds.ElementwiseAffineRule):
        pass

    scaled = keras.Sequential([keras.Input((28, 28, 1)), MyScale(), keras.layers.Flatten(),
                               keras.layers.Dense(10)])
    print(cactus_keras.certify(scaled, x_test, y_test, epsilon=0.01).certified_accuracy)
    ```
    """
    if not layer_classes:
        raise TypeError("register_rule needs at least one Keras layer class, e.g. register_rule(MyLayer).")
    for layer_cls in layer_classes:
        if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.layers.Layer)):
            raise TypeError(
                f"register_rule takes keras.layers.Layer subclasses, got {layer_cls!r}; "
                "pass the layer class itself, e.g. register_rule(MyLayer)."
            )

    def decorator(rule_cls):
        if not _is_rule(rule_cls):
            raise TypeError(
                f"register_rule decorates BoundRule subclasses (or a function "
                f"(layer, input_shapes) -> BoundRule), got {rule_cls!r}."
            )
        taken = [c for c in layer_classes if c in _REGISTRY and _REGISTRY[c] is not rule_cls]
        if taken and not replace:
            names = ", ".join(f"{c.__name__} ({getattr(_REGISTRY[c], '__name__', _REGISTRY[c])})" for c in taken)
            raise ValueError(
                f"register_rule: {names} already has a bound rule; pass replace=True to "
                "replace it, or register the rule for a subclass of your own."
            )
        for layer_cls in layer_classes:
            _REGISTRY[layer_cls] = rule_cls
        return rule_cls

    return decorator


def unregister_rule(*layer_classes):
    """Removes the rules registered for the given layer classes (a no-op for a class
    without one); their layers fall back to a base class's rule, if any.

    Example:

    ```python
    cactus_keras.bounds.register_rule(MyScale)(MyScaleRule)
    ...
    cactus_keras.bounds.unregister_rule(MyScale)
    ```
    """
    for layer_cls in layer_classes:
        _REGISTRY.pop(layer_cls, None)


def registered_layer_classes():
    """The layer classes that have a rule of their own, in registration order."""
    return tuple(_REGISTRY)


def _registered(layer):
    """The rule class (or factory) registered for the layer's class or nearest base."""
    for cls in type(layer).__mro__:
        rule_cls = _REGISTRY.get(cls)
        if rule_cls is not None:
            return rule_cls
    return None


def rule_for(layer, input_shapes):
    """Returns a new rule wrapping `layer` at one call site of the given input shapes."""
    rule_cls = _registered(layer)
    if rule_cls is None:
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' of class {type(layer).__name__} has no bound rule."
        )
    return rule_cls(layer, input_shapes)


def supported_layer_names():
    """The names of the Keras layer classes that have a bound rule, sorted.

    Example:

    ```python
    names = cactus_keras.bounds.supported_layer_names()
    assert "Dense" in names and "Conv2D" in names
    ```
    """
    return sorted({cls.__name__ for cls in _REGISTRY})


# Monotone non-decreasing activations, by Keras name. Softmax is handled separately:
# it is dropped when it is the last operation of the model.
SUPPORTED_ACTIVATIONS = (
    "linear",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "softplus",
    "softsign",
    "sigmoid",
    "hard_sigmoid",
    "tanh",
    "exponential",
)


def activation_name(activation):
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", type(activation).__name__)


def fused_activation(layer):
    """The activation applied inside an affine layer (`Dense(..., activation=...)`)."""
    if isinstance(layer, keras.layers.Activation):
        return None
    rule_cls = _registered(layer)
    if not (isinstance(rule_cls, type) and issubclass(rule_cls, AffineRule)):
        return None
    return getattr(layer, "activation", None)


class BoundRule:
    """Base class of all rules. `self.layer` is the wrapped Keras layer.

    A rule is a plain object: it holds no variables of its own (it reads the layer's at
    every call) and is never saved, so it needs none of `keras.layers.Layer`.

    Example:

    ```python
    class Abs(keras.layers.Layer):
        def call(self, x):
            return keras.ops.abs(x)

    @cactus_keras.bounds.register_rule(Abs)
    class AbsRule(cactus_keras.bounds.BoundRule):
        def interval(self, boxes, params):       # |x| over [lower, upper]
            (box,) = boxes
            lower = keras.ops.maximum(keras.ops.maximum(box.lower, -box.upper), 0.0)
            upper = keras.ops.maximum(-box.lower, box.upper)
            return cactus_keras.bounds.Box(lower, upper)

    folded = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(2.0, -1.0),
                               Abs(), keras.layers.Flatten(), keras.layers.Dense(10)])
    result = cactus_keras.certify(folded, x_test, y_test, epsilon=0.01, bound="ibp")
    ```
    """

    def __init__(self, layer, input_shapes):
        self.layer = layer
        self.name = f"{layer.name}_bounds"
        # Bounds are computed in the dtype the layer computes in.
        self.compute_dtype = keras.config.dtype_policy().compute_dtype
        # Static shapes (without batch) of the inputs at this call site of the layer.
        self.input_shapes = tuple(tuple(shape) for shape in input_shapes)

    def parameters(self, clean_inputs, training):
        """Values the rule reads once per pass (weights, batch statistics).

        `clean_inputs` are the layer's clean inputs, available in training passes.
        """
        return None

    def forward(self, inputs, params, training):
        """The layer's output on the clean inputs (the ordinary forward pass)."""
        return self.layer(*inputs, training=training)

    def interval(self, boxes, params):
        raise NotImplementedError


class AffineRule(BoundRule):
    """Rule of a layer that is affine in its inputs: `f(x) = L(x) + offset`.

    Subclasses implement `linear`, `transpose` and, when `L` has negative weights,
    `abs_linear`. `offset` is broadcastable to the output, or None for zero.

    Example:

    ```python
    class Negate(keras.layers.Layer):
        def call(self, x):
            return -x

    @cactus_keras.bounds.register_rule(Negate)
    class NegateRule(cactus_keras.bounds.AffineRule):
        def linear(self, inputs, params):            # L(x) = -x
            return -inputs[0]

        def abs_linear(self, inputs, params):        # |L|(x) = x
            return inputs[0]

        def transpose(self, coefficients, params):   # A -> A L, for CROWN's backward pass
            return [-coefficients]

    negated = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(16, activation="relu"), Negate(),
                                keras.layers.Dense(10)])
    result = cactus_keras.certify(negated, x_test, y_test, epsilon=0.01, bound="crown")
    ```
    """

    def linear(self, inputs, params):
        raise NotImplementedError

    def abs_linear(self, inputs, params):
        # Correct whenever L has non-negative weights (pooling, reshaping, sums).
        return self.linear(inputs, params)

    def offset(self, params):
        return None

    def transpose(self, coefficients, params):
        """Maps `A` of shape (batch, specs, *output) to `A L`, one per input."""
        raise NotImplementedError

    def affine(self, inputs, params):
        """`L(x) + offset` with this pass's parameters."""
        out = self.linear(inputs, params)
        offset = self.offset(params)
        return out if offset is None else out + offset

    def forward(self, inputs, params, training):
        return self.affine(inputs, params)

    def interval(self, boxes, params):
        centers = [(b.upper + b.lower) / 2 for b in boxes]
        radii = [(b.upper - b.lower) / 2 for b in boxes]
        # Not `forward`: a layer's own call may use other parameters (batch norm's
        # moving statistics in a training pass).
        center = self.affine(centers, params)
        radius = self.abs_linear(radii, params)
        return Box(center - radius, center + radius)


class MonotoneRule(BoundRule):
    """Rule of a layer that is non-decreasing in each input element.

    Example:

    ```python
    class Cube(keras.layers.Layer):
        def call(self, x):
            return x ** 3

    @cactus_keras.bounds.register_rule(Cube)
    class CubeRule(cactus_keras.bounds.MonotoneRule):
        pass          # the interval is [cube(lower), cube(upper)]

    cubed = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(16), Cube(), keras.layers.Dense(10)])
    result = cactus_keras.certify(cubed, x_test, y_test, epsilon=0.01, bound="ibp")
    ```
    """

    def function(self, x):
        return self.layer(x, training=False)

    def forward(self, inputs, params, training):
        return self.layer(inputs[0], training=training)

    def interval(self, boxes, params):
        (box,) = boxes
        return Box(self.function(box.lower), self.function(box.upper))

    def relaxation(self, lower, upper):
        """Elementwise linear bounds on the box, or None to use the output interval."""
        return None

    def free_lower_slopes(self, lower, upper):
        """Where the lower slope of `relaxation` may be any value in [0, 1] (with the
        same lower intercept) and stay a valid lower bound on the box: a float mask
        of the input's shape, or None where no slope is free. alpha-CROWN optimises
        the slopes there; unstable ReLUs are the usual case (0 <= relu(x) and
        x <= relu(x), so a*x with a in [0, 1] is below relu on any box)."""
        return None


class SoftmaxMarker(BoundRule):
    """Placeholder for a softmax; only allowed (and removed) at the model output."""

    def interval(self, boxes, params):
        raise UnsupportedLayerError(
            f"Softmax in layer '{self.layer.name}' can only be the last operation."
        )


def constant_relaxation(f_lower, f_upper):
    zeros = ops.zeros_like(f_lower)
    return Relaxation(zeros, f_lower, zeros, f_upper)
