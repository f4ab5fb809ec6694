"""Lower bounds of logit margins z_y - z_j over an input box, by IBP or CROWN."""

from __future__ import annotations

import keras
from keras import ops

from cactus_keras.bounds.alpha_crown import alpha_crown_lower_bounds
from cactus_keras.bounds.graph import parse_network
from cactus_keras.bounds.propagation import (
    affine_tail,
    backward_lower_bound,
    crown_refinement,
    interval_pass,
)
from cactus_keras.bounds.rules import Box

BOUNDS = ("ibp", "crown-ibp", "crown", "alpha-crown", "best")


def check_bound(bound, name="bound"):
    """`bound`, the bound method, checked; `name` is how the caller spells it."""
    if bound not in BOUNDS:
        raise ValueError(
            f"Unknown `{name}` {bound!r}. Expected one of {', '.join(BOUNDS)}: "
            "'ibp' (interval bounds, fast), 'crown-ibp' (CROWN with interval "
            "intermediate bounds), 'crown' (CROWN throughout), 'alpha-crown' (CROWN "
            "with optimised ReLU slopes, tightest and slowest), 'best' (the larger of "
            "the ibp and alpha-crown bounds per margin)."
        )
    return bound


def input_box(x, epsilon, input_range=(0.0, 1.0)):
    """The L-infinity ball of radius `epsilon` around `x`, cut to `input_range`.

    `epsilon` is a scalar or one value per sample. `input_range=None` leaves the ball
    uncut.

    Example:

    ```python
    box = cactus_keras.bounds.input_box(x_test, epsilon=0.1, input_range=(0.0, 1.0))
    graph = cactus_keras.bounds.parse_network(net)
    lower = cactus_keras.bounds.margin_lower_bounds(graph, box, y_test, bound="ibp")
    ```
    """
    x = ops.convert_to_tensor(x)
    epsilon = ops.cast(ops.convert_to_tensor(epsilon), x.dtype)
    if len(epsilon.shape) == 1:
        epsilon = ops.reshape(epsilon, (-1,) + (1,) * (len(x.shape) - 1))
    lower, upper = x - epsilon, x + epsilon
    if input_range is not None:
        low, high = input_range
        lower = ops.clip(lower, low, high)
        upper = ops.clip(upper, low, high)
    return Box(lower, upper)


def margin_specification(labels, num_classes, dtype="float32"):
    """C of shape (batch, K, K) with row j equal to e_y - e_j (row y is zero)."""
    one_hot = ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype=dtype)
    eye = ops.eye(num_classes, dtype=dtype)
    return ops.expand_dims(one_hot, 1) - ops.expand_dims(eye, 0)


def margin_lower_bounds(graph, box, labels, bound="ibp", *, clean=None, training=False,
                        return_interval=False):
    """Lower bounds of z_y - z_j for every class j, shape (batch, num_classes).

    The entry of the label itself is 0. The last affine layers are folded into the
    specification for every bound. "alpha-crown" optimises CROWN's ReLU lower slopes
    per sample and margin (`alpha_crown.alpha_crown_lower_bounds`, 20 Adam steps: about
    20 final backward passes more than CROWN) and is >= "crown" on every margin;
    "best" is the larger of "ibp" and "alpha-crown" per margin (so also >= "crown"),
    at the cost of both. `clean` and `training` are passed to the forward
    pass (see `interval_pass`); with `clean` given the clean logits are returned too,
    as `(margin_lower, logits)`. With `return_interval` ("ibp", "crown-ibp" and
    "crown" only) the `IntervalPass` the bounds were computed from (a box per value,
    e.g. the pre-activation boxes) is appended to what is returned.

    Example:

    ```python
    graph = cactus_keras.bounds.parse_network(net)
    box = cactus_keras.bounds.input_box(x, epsilon=0.1)
    lower = cactus_keras.bounds.margin_lower_bounds(graph, box, y, bound="ibp")
    ```
    """
    check_bound(bound)
    if return_interval and bound not in ("ibp", "crown-ibp", "crown"):
        raise ValueError(
            f"`return_interval` needs a bound computed from one interval pass (ibp, "
            f"crown-ibp or crown), got bound {bound!r}."
        )
    spec = margin_specification(labels, graph.num_classes, box.lower.dtype)
    tail = affine_tail(graph)
    logits = None
    interval = None

    def lower_bound(relax, refine):
        nonlocal logits, interval
        interval = interval_pass(
            graph, box, clean=clean, training=training, skip=tail, refine=refine
        )
        if interval.clean is not None:
            logits = interval.clean[graph.output]
        return backward_lower_bound(graph, graph.output, spec, interval, relax=relax)

    if bound == "ibp":
        result = lower_bound(False, None)
    elif bound == "crown-ibp":
        result = lower_bound(True, None)
    elif bound == "crown":
        result = lower_bound(True, crown_refinement(graph))
    else:
        # The alpha-CROWN pass computes no clean values: the IBP pass gives the logits.
        ibp = lower_bound(False, None) if bound == "best" or clean is not None else None
        result = alpha_crown_lower_bounds(graph, box, spec)
        if bound == "best":
            result = ops.maximum(ibp, result)
    found = (result,) + (() if clean is None else (logits,)) + ((interval,) if return_interval else ())
    return found[0] if len(found) == 1 else found


class BoundedModel(keras.Model):
    """A Keras model computing the logits and margin lower bounds of `network`.

    Called on `(x, labels, epsilon)` (epsilon one value per sample) it returns a dict
    with `logits` at `x` and `margin_lower` over the epsilon ball around `x`. Being a
    Keras model, `predict` batches, compiles and shows progress.

    Example:

    ```python
    bounded = cactus_keras.bounds.BoundedModel(net, bound="crown-ibp")
    out = bounded.predict((x, y, np.full(len(x), 0.1, "float32")), verbose=0)
    certified = np.all(out["margin_lower"] + np.eye(10)[y] > 0, axis=1)
    ```
    """

    def __init__(self, network, bound="ibp", input_range=(0.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.bound = check_bound(bound)
        self.input_range = None if input_range is None else tuple(map(float, input_range))
        self.graph = parse_network(network)

    def call(self, inputs):
        x, labels, epsilon = inputs
        box = input_box(x, epsilon, self.input_range)
        margins = margin_lower_bounds(self.graph, box, labels, self.bound)
        return {"logits": self.network(x, training=False), "margin_lower": margins}
