"""Interval and linear bounds of Keras models over input boxes."""

from cactus_keras.bounds import affine, nonlinear  # noqa: F401  (registers the rules)
from cactus_keras.bounds.affine import ElementwiseAffineRule
from cactus_keras.bounds.alpha_crown import alpha_crown_lower_bounds
from cactus_keras.bounds.graph import BoundGraph, UnsupportedModelError, parse_network
from cactus_keras.bounds.rules import (
    AffineRule,
    BoundRule,
    Box,
    MonotoneRule,
    Relaxation,
    UnsupportedLayerError,
    register_rule,
    registered_layer_classes,
    supported_layer_names,
    unregister_rule,
)
from cactus_keras.bounds.margins import (
    BOUNDS,
    BoundedModel,
    check_bound,
    input_box,
    margin_lower_bounds,
    margin_specification,
)
from cactus_keras.bounds.propagation import (
    IntervalPass,
    backward_lower_bound,
    crown_refinement,
    forward_pass,
    interval_pass,
)

# The public names (documented, with examples, in the API reference). The passes
# (interval_pass, forward_pass, backward_lower_bound, crown_refinement, IntervalPass,
# alpha_crown_lower_bounds), margin_specification and check_bound stay importable: they
# are what `margin_lower_bounds` and `BoundedModel` run.
__all__ = [
    "BOUNDS",
    "AffineRule",
    "BoundGraph",
    "BoundRule",
    "BoundedModel",
    "Box",
    "ElementwiseAffineRule",
    "MonotoneRule",
    "Relaxation",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "input_box",
    "margin_lower_bounds",
    "parse_network",
    "register_rule",
    "supported_layer_names",
]
