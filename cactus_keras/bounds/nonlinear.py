"""Rules for monotone layers: activations and max pooling.

Every monotone layer gets the interval `[f(lower), f(upper)]`. For CROWN, ReLU uses the
adaptive relaxation of Zhang et al. (2018), sigmoid, tanh and softsign the tangent/chord
relaxation of S-shaped functions below, and every other monotone layer (ReLU6, ELU,
softplus, max pooling, ...) the output interval itself, which is sound but loose.
"""

from __future__ import annotations

import keras
from keras import ops

from cactus_keras.bounds.rules import (
    SUPPORTED_ACTIVATIONS,
    MonotoneRule,
    Relaxation,
    SoftmaxMarker,
    UnsupportedLayerError,
    activation_name,
    constant_relaxation,
    register_rule,
)


def relu_relaxation(lower, upper):
    """CROWN's ReLU relaxation; the lower slope is 1 where u > -l, else 0."""
    active = ops.cast(lower >= 0, lower.dtype)
    unstable = ops.cast(ops.logical_and(lower < 0, upper > 0), lower.dtype)
    width = ops.where(unstable > 0, upper - lower, ops.ones_like(lower))
    upper_slope = active + unstable * upper / width
    upper_intercept = -unstable * upper_slope * lower
    lower_slope = active + unstable * ops.cast(upper > -lower, lower.dtype)
    return Relaxation(lower_slope, ops.zeros_like(lower), upper_slope, upper_intercept)


def relu_free_lower_slopes(lower, upper):
    """1.0 where the ReLU is unstable (l < 0 < u): there any a*x, a in [0, 1], is a
    lower bound (relu(x) >= 0 and >= x), which is what alpha-CROWN optimises."""
    return ops.cast(ops.logical_and(lower < 0, upper > 0), lower.dtype)


_DERIVATIVES = {
    "sigmoid": lambda x: ops.sigmoid(x) * (1 - ops.sigmoid(x)),
    "tanh": lambda x: 1 - ops.tanh(x) ** 2,
    "softsign": lambda x: 1 / (1 + ops.abs(x)) ** 2,
}


def s_shaped_relaxation(function, derivative, lower, upper):
    """Linear bounds for an increasing f whose f' peaks at 0 (sigmoid, tanh, softsign).

    With k = min(f'(l), f'(u)), f' >= k on all of [l, u], so f(l) + k(x - l) is below f
    and f(u) - k(u - x) above it. Where the box is on one side of 0 the function is
    convex (x <= 0) or concave (x >= 0) and the chord is the tighter bound on that side.
    """
    f_lower, f_upper = function(lower), function(upper)
    slope = ops.minimum(derivative(lower), derivative(upper))
    lower_intercept = f_lower - slope * lower
    upper_intercept = f_upper - slope * upper
    width = upper - lower
    wide = width > 1e-6
    chord = (f_upper - f_lower) / ops.where(wide, width, ops.ones_like(width))
    chord_intercept = f_lower - chord * lower
    convex = ops.logical_and(wide, upper <= 0)
    concave = ops.logical_and(wide, lower >= 0)
    return Relaxation(
        ops.where(concave, chord, slope),
        ops.where(concave, chord_intercept, lower_intercept),
        ops.where(convex, chord, slope),
        ops.where(convex, chord_intercept, upper_intercept),
    )


def relaxation_by_name(name, function, lower, upper):
    if name == "relu":
        return relu_relaxation(lower, upper)
    if name == "linear":
        ones = ops.ones_like(lower)
        zeros = ops.zeros_like(lower)
        return Relaxation(ones, zeros, ones, zeros)
    if name in _DERIVATIVES:
        return s_shaped_relaxation(function, _DERIVATIVES[name], lower, upper)
    return constant_relaxation(function(lower), function(upper))


class ActivationFunctionRule(MonotoneRule):
    """A monotone activation by Keras name, fused into a layer or as `Activation`."""

    def __init__(self, layer, input_shapes, activation):
        super().__init__(layer, input_shapes)
        if activation not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' uses activation '{activation}', which has no "
                "bound rule."
            )
        self.activation = activation
        self._function = keras.activations.get(activation)

    def function(self, x):
        return self._function(x)

    def forward(self, inputs, params, training):
        return self._function(inputs[0])

    def relaxation(self, lower, upper):
        return relaxation_by_name(self.activation, self._function, lower, upper)

    def free_lower_slopes(self, lower, upper):
        return relu_free_lower_slopes(lower, upper) if self.activation == "relu" else None


def _activation_layer_rule(layer, input_shapes):
    name = activation_name(layer.activation)
    if name == "softmax":
        return SoftmaxMarker(layer, input_shapes)
    return ActivationFunctionRule(layer, input_shapes, name)


register_rule(keras.layers.Activation)(_activation_layer_rule)


@register_rule(keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)
class ReLULayerRule(MonotoneRule):
    """ReLU-family layers; monotone only with a non-negative negative slope."""

    def __init__(self, layer, input_shapes):
        super().__init__(layer, input_shapes)
        slope = getattr(layer, "negative_slope", getattr(layer, "alpha", 0.0))
        if slope is not None and float(slope) < 0:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' has a negative slope ({slope}) and is not "
                "monotone; use a non-negative slope."
            )

    def _is_plain_relu(self):
        layer = self.layer
        return (
            isinstance(layer, keras.layers.ReLU)
            and layer.max_value is None
            and float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
        )

    def relaxation(self, lower, upper):
        if self._is_plain_relu():
            return relu_relaxation(lower, upper)
        return constant_relaxation(self.function(lower), self.function(upper))

    def free_lower_slopes(self, lower, upper):
        return relu_free_lower_slopes(lower, upper) if self._is_plain_relu() else None


def is_relu(rule):
    """True for the rule of a plain ReLU: `activation="relu"` fused into a layer,
    `Activation("relu")`, or `ReLU()` with its default arguments."""
    if isinstance(rule, ActivationFunctionRule):
        return rule.activation == "relu"
    return isinstance(rule, ReLULayerRule) and rule._is_plain_relu()


register_rule(
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)(MonotoneRule)

register_rule(keras.layers.Softmax)(SoftmaxMarker)


def activation_rule(activation, owner, input_shape):
    """The rule for an activation function fused into layer `owner`."""
    name = activation_name(activation)
    if name == "softmax":
        return SoftmaxMarker(owner, (input_shape,))
    if name not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedLayerError(
            f"Layer '{owner.name}' uses activation '{name}', which has no bound rule."
        )
    return ActivationFunctionRule(owner, (input_shape,), name)
