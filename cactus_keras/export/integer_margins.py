"""Certificates from integer bounds: whether the interpreter's arg-max can change.

np.argmax (and the interpreter's usual post-processing) picks the first maximum, so the
label y wins against a class j < y only when q_y > q_j, and against j > y when
q_y >= q_j. `certify_propagation` combines three sound arguments per pair (y, j):

* the output intervals (`certified_from_bounds`);
* after a final SOFTMAX, its monotonicity on the int8 input (z_y >= z_j gives
  q_y >= q_j) and a lower bound of p_y - p_j (two probabilities that round to the same
  int8 code tie, and the first maximum then picks the lower class index);
* for a final FULLY_CONNECTED, the exact margin of its accumulators with w_y - w_j
  folded in, which is tighter than subtracting two output intervals.

Example:

```python
bounds = propagate(graph, lower, upper)
certified = certify_propagation(graph, bounds, labels)
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.int8.fixed_point import (
    INT8_MAX,
    INT8_MIN,
    activation_range,
    fixed_point_error,
    quantize_multiplier,
)
from cactus_keras.export.integer_intervals import RELATIVE_TOLERANCE, SOFTMAX_ERROR
from cactus_keras.export.model_file import final_fully_connected  # noqa: F401 (re-export)


def softmax_difference_lower(lower, upper, scale):
    """(batch, classes, classes) lower bounds of p_y - p_j over the box, [b, y, j]:
    (e^{a_y} - e^{b_j}) / (e^{a_y} + e^{b_j} + sum_{k != y, j} e^{b_k})."""
    a = lower.astype(np.float64) * scale
    b = upper.astype(np.float64) * scale
    shift = np.maximum(b.max(axis=-1, keepdims=True), a.max(axis=-1, keepdims=True))
    ea, eb = np.exp(a - shift), np.exp(b - shift)
    sb = eb.sum(-1)
    numerator = ea[:, :, None] - eb[:, None, :]
    denominator = ea[:, :, None] + sb[:, None, None] - eb[:, :, None]
    return numerator / denominator



def _label_matrix(labels, classes):
    order = np.arange(classes)
    before = order[None, :] < labels[:, None]  # j < y: a tie makes arg-max pick j
    own = order[None, :] == labels[:, None]
    return before, own


def certified_from_bounds(lower, upper, labels):
    """Whether the first-maximum arg-max of every output in [lower, upper] is the label.

    np.argmax (and the interpreter's usual post-processing) picks the first maximum, so
    class y wins against j < y only when q_y > q_j, and against j > y when q_y >= q_j.
    Certified when lower_y > upper_j for j < y and lower_y >= upper_j for j > y.
    """
    lower, upper = np.asarray(lower), np.asarray(upper)
    labels = np.asarray(labels, np.int64)
    rows = np.arange(len(labels))
    own = lower[rows, labels][:, None]
    before, is_own = _label_matrix(labels, lower.shape[1])
    wins = np.where(before, own > upper, own >= upper)
    return np.all(wins | is_own, axis=1), wins | is_own


def certify_propagation(graph, result, labels):
    """Per-sample certificates from a `Propagation` of the epsilon boxes.

    A sample is certified when, for every class j != y, some sound argument shows that
    the interpreter's first-maximum arg-max cannot pick j: the output intervals
    (`certified_from_bounds`), or, after a final SOFTMAX, the monotonicity of softmax on
    its int8 input and a bound on the smallest probability gap, or, for a final
    FULLY_CONNECTED, the exact margin of its accumulators (w_y - w_j folded).
    """
    labels = np.asarray(labels, np.int64)
    _, pairs = certified_from_bounds(result.lower, result.upper, labels)
    before, is_own = _label_matrix(labels, result.lower.shape[1])
    rows = np.arange(len(labels))
    if result.softmax_input is not None:
        pairs |= softmax_pairs(graph, result, labels, before, rows)
    if result.fold_input is not None:
        pairs |= folded_pairs(graph, result, labels, before, rows)
    return np.all(pairs | is_own, axis=1)


def softmax_pairs(graph, result, labels, before, rows):
    """(samples, classes) bool: pairs (y, j) the final SOFTMAX certifies, from the
    bounds of its int8 input (`result.softmax_input`). `before[b, j]` is j < y_b."""
    op = graph.softmax
    s_in = np.float64(graph.tensors[op.inputs[0]].scale[0])
    s_out = np.float64(graph.tensors[op.outputs[0]].scale[0])
    beta = float(getattr(op.options, "beta", 1.0) or 1.0)
    lo, hi = result.softmax_input
    # j > y: q_y >= q_j whenever the softmax inputs satisfy z_y >= z_j (monotone kernel).
    monotone = lo[rows, labels][:, None] >= hi
    gap = softmax_difference_lower(lo, hi, s_in * beta)[rows, labels] / s_out
    # |r_k - p_k / s_out| <= 0.5 + SOFTMAX_ERROR, so r_y > r_j once the gap exceeds twice.
    strict = gap > 1.0 + 2 * SOFTMAX_ERROR + 1e-6
    no_clamp = (result.lower[rows, labels][:, None] > INT8_MIN) & (result.upper < INT8_MAX)
    return np.where(before, strict & no_clamp, monotone | strict)


def folded_pairs(graph, result, labels, before, rows):
    """(samples, classes) bool: pairs (y, j) the exact margin of the final
    FULLY_CONNECTED certifies, from the bounds of its int8 input (`result.fold_input`)."""
    op = final_fully_connected(graph)
    tensors = graph.tensors
    s_in = np.float64(tensors[op.inputs[0]].scale[0])
    zp_in = int(tensors[op.inputs[0]].zero_point[0])
    s_out, zp_out = np.float64(tensors[op.outputs[0]].scale[0]), int(
        tensors[op.outputs[0]].zero_point[0])
    w = tensors[op.inputs[1]]
    units, depth = w.data.shape
    zp_w = w.zero_point.reshape(-1, 1) if w.zero_point.size > 1 else w.zero_point[0]
    weights = (w.data.astype(np.int64) - zp_w).astype(np.float64)
    multiplier = s_in * np.broadcast_to(w.scale.astype(np.float64), (units,)) / s_out
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias = tensors[op.inputs[2]].data.astype(np.float64).reshape(-1)
    else:
        bias = np.zeros(units)
    act_min, act_max = activation_range(op.options.fusedActivationFunction, s_out, zp_out)
    lo, hi = result.fold_input
    x_lo = (lo - zp_in).astype(np.float64)
    x_hi = (hi - zp_in).astype(np.float64)
    mid, rad = (x_lo + x_hi) / 2, (x_hi - x_lo) / 2
    size = np.maximum(np.abs(x_lo), np.abs(x_hi))
    # |v_k| <= M_k (sum |w_k| |x| + |b_k|): the scale of the relative error of v_k.
    magnitude = multiplier * (size @ np.abs(weights).T + np.abs(bias))
    scaled = multiplier[:, None] * weights
    # |r_k - v_k| <= error_k + RELATIVE_TOLERANCE |v_k| for the kernel's rounding r_k of
    # v_k = M_k * acc_k: 0.75 (two rounding steps) for "floor_ceil", the fixed-point
    # error of the channel's multiplier for "nearest".
    if result.rounding == "nearest":
        error = fixed_point_error(quantize_multiplier(multiplier)[1])
    else:
        error = np.full(units, 0.75)
    pairs = np.zeros((len(labels), units), bool)
    for y in np.unique(labels):
        idx = np.flatnonzero(labels == y)
        a = scaled[y][None, :] - scaled  # row j: M_y w_y - M_j w_j
        const = multiplier[y] * bias[y] - multiplier * bias
        margin = mid[idx] @ a.T - rad[idx] @ np.abs(a).T + const
        rounding = 1e-9 * ((np.abs(mid[idx]) + rad[idx]) @ np.abs(a).T + np.abs(const) + 1)
        tol = RELATIVE_TOLERANCE * (magnitude[idx, y][:, None] + magnitude[idx]) + rounding
        # r_y - r_j >= margin - error_y - error_j - tol: > 0 gives q_y > q_j unless both
        # clamp to the same end; > -1 gives q_y >= q_j.
        errors = error[y] + error[None, :]
        strict = margin > errors + tol
        strict &= (result.lower[idx, y][:, None] > act_min) & (result.upper[idx] < act_max)
        weak = margin > errors - 1 + tol
        pairs[idx] = np.where(before[idx], strict, weak)
    return pairs
