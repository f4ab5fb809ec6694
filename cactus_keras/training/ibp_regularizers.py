"""Regularisers of certified training: Shi et al.'s IBP regularisers, and L1.

Shi et al. (2021, "Fast certified robust training with short warmup") add two terms
to the loss while epsilon ramps up, both read off the pre-activation interval bounds
(the boxes of the inputs of the ReLUs) of the IBP pass:

- bound tightness: per ReLU layer i, `relu(tau - t_0 / t_i) / tau`, where `t_i` is
  the mean half-width of the layer's pre-activation boxes and `t_0` that of the input
  box (means over the batch and the units). It grows when the bounds widen faster,
  layer after layer, than the input box, which is what makes IBP's loss explode early.
- ReLU balance: per ReLU layer, with `c` the box centres, `mu` their mean, the active
  units (lower bound > 0) and the inactive ones (upper bound < 0):
  `(relu(tau - r_mean) + relu(tau - r_var)) / tau`, `r_mean` the smaller over the
  larger of `mean(c * active)` and `-mean(c * inactive)`, `r_var` the same of
  `sum((c - mu)^2 * active)` and `sum((c - mu)^2 * inactive)`: it grows when one side
  dominates (dead or linear ReLUs). A layer with a ratio 0/0 (no active and no
  inactive unit, say) adds nothing, as in the reference code. A layer with active
  but no inactive units has the ratio's value of the paper (0, the largest term); the
  reference code divides by -0.0 there, gets -inf and skips the layer.

The regulariser is the mean over ReLU layers of the sum of both (tau = 0.5). Its weight
`ibp_regularization` (Shi et al.: 0.5) is multiplied by `1 - epsilon / epsilon_target`
while `0 < epsilon < epsilon_target` and is 0 otherwise (`ramp_decay`): it acts only
during the epsilon ramp and fades out with it, linearly in epsilon.

L1 weight regularisation (`l1_regularization`, CTRAIN: 1e-6) adds the weight times
the sum of |w| over the Dense and Conv kernels (not biases, not batch norm).

Example:

```python
model = cactus_keras.CactusModel(net, epsilon=0.1, ibp_regularization=0.5,
                                 l1_regularization=1e-6)
model.compile(optimizer="adam")
model.fit(x, y, epochs=10, callbacks=[cactus_keras.EpsilonRamp(5, start_epoch=1)])
```
"""

from __future__ import annotations

import math

from keras import ops

from cactus_keras.bounds.nonlinear import is_relu
from cactus_keras.compression.kernels import compressible_kernels

# Shi et al.'s tolerance tau of both terms.
TOLERANCE = 0.5


def check_regularization(value, name, meaning):
    """`value` as a float >= 0 (0: off), else a one-line error naming `name`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(f"`{name}` ({meaning}) must be a number >= 0 (0: off), got {value!r}.")
    return value


def relu_input_values(graph):
    """The values of `graph` that go into a ReLU (its pre-activations), in graph order."""
    return [node.inputs[0] for node in graph.nodes if is_relu(node.rule)]


def _mean_half_width(box):
    return ops.mean((box.upper - box.lower) / 2.0)


def _ratio(a, b):
    """`(min(a, b) / max(a, b), defined)` for a, b >= 0: Shi et al.'s min(r, 1 / r) of
    r = a / b, undefined for 0 / 0."""
    larger = ops.maximum(a, b)
    defined = larger > 0
    return ops.minimum(a, b) / ops.where(defined, larger, ops.ones_like(larger)), defined


def tightness_terms(input_box, boxes, tolerance=TOLERANCE):
    """Per pre-activation box, `relu(tau - t_0 / t_i) / tau` (a list of scalars)."""
    reference = _mean_half_width(input_box)
    terms = []
    for box in boxes:
        width = ops.maximum(_mean_half_width(box), 1e-12)
        terms.append(ops.relu(tolerance - reference / width) / tolerance)
    return terms


def relu_balance_terms(boxes, tolerance=TOLERANCE):
    """Per pre-activation box, the ReLU-balance term (a list of scalars)."""
    terms = []
    for box in boxes:
        centre = (box.upper + box.lower) / 2.0
        active = ops.cast(box.lower > 0, centre.dtype)
        inactive = ops.cast(box.upper < 0, centre.dtype)
        mean_ratio, mean_defined = _ratio(ops.mean(centre * active), -ops.mean(centre * inactive))
        spread = ops.square(centre - ops.mean(centre))
        var_ratio, var_defined = _ratio(ops.sum(spread * active), ops.sum(spread * inactive))
        term = (ops.relu(tolerance - mean_ratio) + ops.relu(tolerance - var_ratio)) / tolerance
        terms.append(ops.where(ops.logical_and(mean_defined, var_defined), term,
                               ops.zeros_like(term)))
    return terms


def ibp_regularizer(interval, values, input_value, tolerance=TOLERANCE):
    """Shi et al.'s regulariser (unweighted, undecayed) of one interval pass: the mean
    over the pre-activation `values` of the tightness plus the ReLU-balance term.

    `interval` is a `bounds.IntervalPass` (its boxes), `input_value` the key of the
    input box in it.
    """
    boxes = [interval.boxes[v] for v in values]
    total = 0.0
    for term in tightness_terms(interval.boxes[input_value], boxes, tolerance):
        total = total + term
    for term in relu_balance_terms(boxes, tolerance):
        total = total + term
    return total / len(boxes)


def ramp_decay(epsilon, epsilon_target):
    """The factor of the IBP regulariser's weight: `1 - epsilon / epsilon_target` while
    `0 < epsilon < epsilon_target`, else 0 (warm-up at epsilon 0, and after the ramp)."""
    if epsilon_target <= 0:
        return ops.zeros_like(epsilon)
    ramping = ops.logical_and(epsilon > 0, epsilon < epsilon_target)
    return ops.where(ramping, 1.0 - epsilon / epsilon_target, ops.zeros_like(epsilon))


def regularized_kernels(network):
    """The kernels L1 regularisation acts on: every Dense and Conv kernel."""
    return compressible_kernels(network)


def l1_norm(kernels):
    """sum |w| over `kernels` (tensors or variables' values)."""
    total = 0.0
    for kernel in kernels:
        total = total + ops.sum(ops.abs(kernel))
    return total
