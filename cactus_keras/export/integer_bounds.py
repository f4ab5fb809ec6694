"""Integer interval propagation through an int8 TFLite graph, as it runs.

Every tensor of the int8 data path gets an integer interval [lower, upper] per element
(int64 NumPy arrays, shape (batch, *static shape)) that contains every value the
interpreter can write there for an input in the box. The rules follow the integer
arithmetic of the TFLite kernels:

* CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: the int32 accumulator
  sum (q_w - zp_w) * (q_x - zp_x) + bias is bounded exactly (interval arithmetic on
  integers, computed as float64 products of integers below 2**53, which are exact), then
  requantized.
* Requantization with the real multiplier M = s_in * s_w / s_out (per channel where the
  weights are per channel): an accumulator interval [a, b] maps to
  [floor(a * M), ceil(b * M)] + zp_out, then the fused activation clamp (RELU, RELU6,
  RELU_N1_TO_1) and [-128, 127]. This is sound for every implementation that rounds
  a * M' to an integer r with |r - a * M| < 1, which covers every round-to-nearest
  implementation with a tiny multiplier error: TFLite's reference and optimized kernels
  (31-bit fixed-point multiplier, rounding once or twice: |r - a M| <= 0.5 +
  2**(shift - 1) <= 0.75, plus a relative 2**-31) and XNNPACK (float32 multiplier, error
  0.5 plus a relative ~2e-7). `rounding="nearest"` uses those rounding errors instead of
  1: [ceil(a*M - e - t), floor(b*M + e + t)], tighter (a point stays a point) but tied
  to the rounding structure of those kernels.
  Accumulators that could leave int32 (or overflow the left shift of a multiplier >= 1)
  give the whole activation range.
* ADD: the two inputs rescaled to the output scale, summed and rounded, with slack for
  the intermediate roundings of TFLite's kernel (inputs rescaled to 2**20 units) and
  XNNPACK's (20-bit multipliers).
* MAX_POOL_2D (monotone), AVERAGE_POOL_2D (the exact average of the integer window sums,
  rounded), MEAN (both formulas of TFLite's int8 mean kernels), CONCATENATION,
  RESHAPE/SQUEEZE/EXPAND_DIMS (copies), standalone RELU/RELU6/RELU_N1_TO_1, int8
  QUANTIZE (requantization).
* SOFTMAX (only as the last op): exact bounds of the probabilities over the box of its
  int8 input, rounded with `SOFTMAX_ERROR` of slack. The margins use its monotonicity
  (z_y >= z_j gives q_y >= q_j) and a lower bound of p_y - p_j, because two
  probabilities that round to the same int8 code tie, and the first-maximum arg-max
  then picks the lower class index (`certify_propagation`).

`propagate(..., point=True)` runs the same rules on single points with the rounding of
the kernels that run the file (`kernels`: TFLite's reference kernels, its optimized
builtin kernels, or the XNNPACK delegate, which differ in how they round ties); this is
the integer simulation whose arg-max is compared with the interpreter's. It reproduces
LiteRT 2.3's int8 outputs bit for bit for every op above (SOFTMAX with the reference
kernels: up to one code at exact ties).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cactus_keras.export.model_file import ACTIVATION_NAMES, COPY_OPS, UnsupportedOperatorError

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Relative error allowed for a kernel's multiplier and float arithmetic (31-bit fixed
# point: 2**-31; XNNPACK's float32 requantization: ~2e-7; its 20-bit ADD multipliers:
# ~5e-7), relative to the magnitude of the real value being rounded.
RELATIVE_TOLERANCE = 1e-6
# "floor_ceil": every rounding r of a real value v is bounded by [floor(v), ceil(v)]:
# sound for any kernel whose total error |r - v| is below 1, i.e. every round-to-nearest
# implementation with one or two rounding steps (error <= 0.75) and a multiplier accurate
# to better than 0.25 / |v| (TFLite: 2**-31, XNNPACK: ~2**-22 relative; past |v| ~ 2e5
# the output saturates either way).
# "nearest": r is bounded by [ceil(v - e - t), floor(v + e + t)] where e is the kernel's
# rounding error: 0.5 for one rounding step, 0.5 + 2**(shift - 1) for TFLite's two-step
# fixed-point rounding with a right shift (SaturatingRoundingDoublingHighMul, then
# RoundingDivideByPOT), and t the relative tolerance. Tighter (a point stays a point
# unless v is within e - 0.5 + t of a half-integer), and sound for TFLite's reference
# and optimized kernels and XNNPACK, but tied to their rounding structure.
ROUNDINGS = ("floor_ceil", "nearest")
# Assumed error (in output units, before rounding) of the int8 SOFTMAX kernel against
# the exact softmax of its int8 input. LiteRT's x86/ARM kernel evaluates a float32 lookup
# table of exp (error ~1e-5 units); 1.0 also covers fixed-point and uint16-table variants.
SOFTMAX_ERROR = 1.0
_EXACT_LIMIT = 2.0**52


def round_half_away(v):
    """Rounds to the nearest integer, halves away from zero (TFLite's `TfLiteRound`)."""
    v = np.asarray(v, np.float64)
    return np.where(v >= 0, np.floor(v + 0.5), -np.floor(-v + 0.5))


def _ceil_div(a, b):
    return -((-a) // b)


def fixed_point_error(shift):
    """Largest |r - v| of TFLite's `MultiplyByQuantizedMultiplier` (before the relative
    multiplier error): 0.5, plus 2**(shift - 1) for the first of two roundings when the
    result is shifted right."""
    shift = np.asarray(shift)
    return 0.5 + np.where(shift < 0, 0.5 * 2.0 ** np.minimum(shift, 0), 0.0)


def round_bounds(v_lower, v_upper, rounding, error=0.5, slack=0.0):
    """Integer bounds of a kernel's rounding r of any real v in [v_lower, v_upper].

    The kernel's error is |r - v| <= e + t, where e = `error` is its rounding error
    (0.5 for one round-to-nearest step, at most 0.75 for two) and t = RELATIVE_TOLERANCE
    * |v| + `slack` the error of its multipliers and float arithmetic.

    "floor_ceil": [floor(v_lower), ceil(v_upper)], sound whenever e + t < 1 (any
    round-to-nearest kernel with e <= 0.75 and t < 0.25; a larger t widens the bounds
    by the excess). "nearest": [ceil(v_lower - e - t), floor(v_upper + e + t)].
    """
    v_lower = np.asarray(v_lower, np.float64)
    v_upper = np.asarray(v_upper, np.float64)
    t_lo = RELATIVE_TOLERANCE * np.abs(v_lower) + slack
    t_hi = RELATIVE_TOLERANCE * np.abs(v_upper) + slack
    if rounding == "nearest":
        return (np.ceil(v_lower - error - t_lo).astype(np.int64),
                np.floor(v_upper + error + t_hi).astype(np.int64))
    if rounding != "floor_ceil":
        raise ValueError(f"`rounding` must be one of {', '.join(ROUNDINGS)}, got {rounding!r}.")
    # r > v - 1 (hence r >= floor(v)) while e + t < 1; beyond, shift by the excess.
    excess_lo = np.where(t_lo >= 0.25, t_lo - 0.25 + 1e-9, 0.0)
    excess_hi = np.where(t_hi >= 0.25, t_hi - 0.25 + 1e-9, 0.0)
    return (np.floor(v_lower - excess_lo).astype(np.int64),
            np.ceil(v_upper + excess_hi).astype(np.int64))


def _trunc_div(a, b):
    """C integer division (truncates toward zero); `b` > 0."""
    return np.where(a >= 0, a // b, -((-a) // b))


def quantize_multiplier(multiplier):
    """TFLite's `QuantizeMultiplier`: real multiplier -> (31-bit fixed point q, shift)
    with multiplier ~= q * 2**(shift - 31). Vectorized; returns int64 arrays."""
    m = np.asarray(multiplier, np.float64)
    fraction, shift = np.frexp(m)
    q = round_half_away(fraction * 2.0**31).astype(np.int64)
    shift = shift.astype(np.int64)
    full = q == 2**31
    q = np.where(full, q // 2, q)
    shift = np.where(full, shift + 1, shift)
    tiny = shift < -31
    q = np.where(tiny | (m == 0), 0, q)
    shift = np.where(tiny | (m == 0), 0, shift)
    big = shift > 30
    q = np.where(big, 2**31 - 1, q)
    shift = np.where(big, 30, shift)
    return q, shift


def multiply_by_quantized_multiplier(x, q, shift, method="double"):
    """TFLite's `MultiplyByQuantizedMultiplier`, bit-exact on int64 arrays holding int32
    values: round(x * q * 2**(shift - 31)).

    method: "double" (the int32 version: SaturatingRoundingDoublingHighMul, then
    RoundingDivideByPOT, halves away from zero), "single" (the int64 version: one
    rounding, halves up) or "double_up" (ruy's: the same first step, then a rounding
    right shift with halves up).
    """
    x = np.asarray(x, np.int64)
    if method == "single":
        total = 31 - np.asarray(shift, np.int64)
        return (x * q + (np.int64(1) << (total - 1))) >> total
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    a = x * (np.int64(1) << left)
    ab = a * q
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    high = _trunc_div(ab + nudge, np.int64(1 << 31))
    if method == "double_up":
        return (high + np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)) >> right
    mask = (np.int64(1) << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def mean_multiplier(real_multiplier, count):
    """The fixed-point multiplier of TFLite's int8 MEAN: QuantizeMultiplier(s_in / s_out),
    then divided by the element count with integer truncation and a shift of
    floor(log2(count))."""
    q, shift = quantize_multiplier(real_multiplier)
    q, shift = int(q), int(shift)
    extra = min(int(count).bit_length() - 1, 32, 31 + shift)
    return np.int64((q << extra) // int(count)), np.int64(shift - extra)


def activation_range(fused, scale, zero_point, op_label="op"):
    """The int8 clamp of a fused activation (TFLite's CalculateActivationRangeQuantized)."""
    name = ACTIVATION_NAMES.get(int(fused or 0), str(fused))
    scale = np.float32(scale)

    def q(real):
        return int(zero_point + round_half_away(np.float32(real) / scale))

    if name == "NONE":
        return INT8_MIN, INT8_MAX
    if name == "RELU":
        return max(INT8_MIN, q(0.0)), INT8_MAX
    if name == "RELU6":
        return max(INT8_MIN, q(0.0)), min(INT8_MAX, q(6.0))
    if name == "RELU_N1_TO_1":
        return max(INT8_MIN, q(-1.0)), min(INT8_MAX, q(1.0))
    raise UnsupportedOperatorError(
        f"{op_label} has the fused activation {name}, which the integer verifier does not "
        "support (supported: NONE, RELU, RELU6, RELU_N1_TO_1)."
    )


def requantize(acc_lower, acc_upper, multiplier, zero_point, act_min, act_max, *, point,
               rounding="floor_ceil", method="double", multiplier32=None):
    """Maps int32 accumulator bounds to int8 output bounds.

    Interval: the real values a*M, b*M rounded with `round_bounds` (floor/ceil, or the
    fixed-point rounding error for "nearest"), plus zp, clamped to [act_min, act_max].
    Point (`acc_lower` == `acc_upper`): the kernel's own rounding, `method` "double",
    "single" or "double_up" (TFLite's fixed-point `MultiplyByQuantizedMultiplier`
    variants) or "xnnpack" (float32: round half to even of float32(acc) * `multiplier32`).
    Accumulators outside int32, or a left shift (M >= 1) that would overflow, give the
    whole range [act_min, act_max].
    """
    multiplier = np.asarray(multiplier, np.float64)
    q, shift = quantize_multiplier(multiplier)
    magnitude = np.maximum(np.abs(acc_lower), np.abs(acc_upper))
    ok = (acc_lower >= INT32_MIN) & (acc_upper <= INT32_MAX)
    ok &= magnitude * (np.int64(1) << np.maximum(shift, 0)) <= INT32_MAX
    if point and method == "xnnpack":
        product = np.asarray(acc_lower, np.float32) * np.asarray(multiplier32, np.float32)
        lower = upper = np.rint(product.astype(np.float32)).astype(np.int64)
    elif point:
        lower = upper = multiply_by_quantized_multiplier(
            np.clip(acc_lower, INT32_MIN, INT32_MAX), q, shift, method)
    else:
        # fixed_point_error covers one- and two-step kernels (and XNNPACK's 0.5) alike.
        lower, upper = round_bounds(acc_lower * multiplier, acc_upper * multiplier, rounding,
                                    fixed_point_error(shift))
    lower = np.where(ok, np.clip(lower + zero_point, act_min, act_max), act_min)
    upper = np.where(ok, np.clip(upper + zero_point, act_min, act_max), act_max)
    return lower, upper


# --------------------------------------------------------------------------- geometry


def _window(size, kernel, stride, dilation, padding, op_label):
    """(output size, padding before) with TFLite's SAME/VALID rules."""
    effective = (kernel - 1) * dilation + 1
    if padding == 0:  # SAME
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        return out, total // 2, total - total // 2
    if padding == 1:  # VALID
        return (size - effective + stride) // stride, 0, 0
    raise UnsupportedOperatorError(f"{op_label}: unknown padding {padding}.")


def _patches(x, kh, kw, strides, dilations, out_hw, pads, fill):
    """Yields (i, j, view) of the padded input for every kernel tap, view shape
    (N, out_h, out_w, C)."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilations, out_hw
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                          j * dw: j * dw + sw * (ow - 1) + 1: sw, :]


def _geometry(op, in_shape, kh, kw, op_label):
    o = op.options
    dh = getattr(o, "dilationHFactor", 1) or 1
    dw = getattr(o, "dilationWFactor", 1) or 1
    oh, top, bottom = _window(in_shape[1], kh, o.strideH, dh, o.padding, op_label)
    ow, left, right = _window(in_shape[2], kw, o.strideW, dw, o.padding, op_label)
    return (o.strideH, o.strideW), (dh, dw), (oh, ow), ((top, bottom), (left, right))


def _check_exact(values_bound, weights_bound, terms, op_label):
    if float(values_bound) * float(weights_bound) * float(terms) >= _EXACT_LIMIT:
        raise UnsupportedOperatorError(
            f"{op_label}: accumulators too large for exact float64 integer arithmetic.")


# --------------------------------------------------------------------------- propagation


@dataclasses.dataclass
class Propagation:
    """Bounds of one batch.

    Attributes:
        lower, upper: (batch, classes) int64 bounds of the output codes the interpreter
            takes the arg-max of (the int8 output; after a final SOFTMAX its int8
            probabilities).
        tensors: {tensor index: (lower, upper)} of every int8 tensor when propagated with
            keep=True (shapes (batch, *static shape)), else only the logits.
        softmax_input: (lower, upper) of the input of a final SOFTMAX, else None.
        fold_input: (lower, upper) of the input of a final FULLY_CONNECTED, else None.
    """

    lower: np.ndarray
    upper: np.ndarray
    tensors: dict
    softmax_input: tuple | None = None
    fold_input: tuple | None = None
    rounding: str = "floor_ceil"


def final_fully_connected(graph):
    """The FULLY_CONNECTED whose output reaches the logits only through copies (so its
    exact accumulators can be folded into the margins), or None."""
    if graph.softmax is not None:
        return None
    producer = {t: op for op in graph.ops for t in op.outputs}
    t = graph.logits
    while t in producer and producer[t].name in COPY_OPS:
        t = producer[t].inputs[0]
    op = producer.get(t)
    if op is None or op.name != "FULLY_CONNECTED":
        return None
    if int(np.prod(graph.tensors[op.outputs[0]].shape)) != graph.num_classes:
        return None
    return op


# How each kernel set rounds the requantization of convolutions and fully connected
# layers, for the point simulation (checked against LiteRT 2.3's interpreters):
# reference kernels, TFLite's optimized builtin kernels, the XNNPACK delegate.
POINT_METHODS = {
    "reference": {"CONV_2D": "double", "DEPTHWISE_CONV_2D": "double",
                  "FULLY_CONNECTED": "single"},
    "builtin": {"CONV_2D": "double_up", "DEPTHWISE_CONV_2D": "double_up",
                "FULLY_CONNECTED": "double_up"},
    "xnnpack": {"CONV_2D": "xnnpack", "DEPTHWISE_CONV_2D": "xnnpack",
                "FULLY_CONNECTED": "xnnpack"},
}


class _Runner:
    def __init__(self, graph, point, keep, rounding, kernels="reference"):
        if rounding not in ROUNDINGS:
            raise ValueError(
                f"`rounding` must be one of {', '.join(ROUNDINGS)}, got {rounding!r}.")
        self.graph = graph
        self.tensors = graph.tensors
        self.point = point
        self.keep = keep
        self.rounding = rounding
        if kernels not in POINT_METHODS:
            raise ValueError(f"`kernels` must be one of {', '.join(POINT_METHODS)}, got "
                             f"{kernels!r}.")
        self.kernels = kernels
        self.values = {}
        self.last_use = {}
        for position, op in enumerate(graph.ops):
            for t in op.inputs:
                self.last_use[t] = position

    def label(self, op):
        return f"'{self.graph.path}' op {op.index} {op.name}"

    def get(self, t):
        if t in self.values:
            return self.values[t]
        tensor = self.tensors[t]
        if tensor.data is not None:
            c = tensor.data.astype(np.int64)[None]
            return c, c
        raise UnsupportedOperatorError(
            f"'{self.graph.path}': tensor {t} '{tensor.name}' is read before it is computed.")

    def set(self, t, lower, upper):
        shape = self.tensors[t].shape
        batch = lower.shape[0]
        lower = np.asarray(lower, np.int64).reshape((batch,) + shape)
        upper = lower if self.point else np.asarray(upper, np.int64).reshape((batch,) + shape)
        self.values[t] = (lower, upper)

    def quant(self, t):
        tensor = self.tensors[t]
        return np.float64(tensor.scale[0]), int(tensor.zero_point[0])

    def run(self, lower, upper):
        self.set(self.graph.entry, lower, upper)
        fold = final_fully_connected(self.graph)
        fold_input = softmax_input = None
        for position, op in enumerate(self.graph.ops):
            if op is fold and not self.point:
                fold_input = self.get(op.inputs[0])
            if op.name == "SOFTMAX":
                softmax_input = self.get(op.inputs[0])
            getattr(self, "op_" + op.name.lower())(op)
            if not self.keep:
                for t in op.inputs:
                    if self.last_use.get(t) == position and t != self.graph.logits:
                        self.values.pop(t, None)
        lower, upper = self.values[self.graph.logits]
        batch = lower.shape[0]
        tensors = self.values if self.keep else {self.graph.logits: (lower, upper)}
        if softmax_input is not None:
            softmax_input = tuple(v.reshape(batch, -1) for v in softmax_input)
        if fold_input is not None:
            fold_input = tuple(v.reshape(batch, -1) for v in fold_input)
        return Propagation(lower.reshape(batch, -1), upper.reshape(batch, -1), tensors,
                           softmax_input, fold_input, self.rounding)

    # ---- affine ops

    def _weights(self, t, axis):
        w = self.tensors[t]
        zp = w.zero_point
        if (w.scale.size > 1 or zp.size > 1) and w.quantized_dimension != axis:
            raise UnsupportedOperatorError(
                f"'{self.graph.path}': weights '{w.name}' are quantized per channel along "
                f"axis {w.quantized_dimension}; expected the output-channel axis {axis}.")
        if w.scale.size not in (1, w.data.shape[axis]):
            raise UnsupportedOperatorError(
                f"'{self.graph.path}': weights '{w.name}' have {w.scale.size} scales for "
                f"{w.data.shape[axis]} channels.")
        shape = [1] * w.data.ndim
        shape[axis] = -1
        centered = w.data.astype(np.int64) - (zp.reshape(shape) if zp.size > 1 else zp[0])
        return centered, w.scale.astype(np.float64)

    def _bias(self, op, channels):
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            return self.tensors[op.inputs[2]].data.astype(np.int64).reshape(-1)
        return np.zeros(channels, np.int64)

    def _affine(self, op, x_lo, x_hi, weights, apply):
        """Exact int64 bounds of apply(x - zp_x, weights) via float64 integer products."""
        if self.point:
            acc = np.rint(apply(x_lo.astype(np.float64), weights.astype(np.float64)))
            acc = acc.astype(np.int64)
            return acc, acc
        mid2 = (x_lo + x_hi).astype(np.float64)
        rad2 = (x_hi - x_lo).astype(np.float64)
        a = np.rint(apply(mid2, weights.astype(np.float64))).astype(np.int64)
        r = np.rint(apply(rad2, np.abs(weights).astype(np.float64))).astype(np.int64)
        return (a - r) // 2, (a + r) // 2

    def _finish_affine(self, op, acc_lo, acc_hi, w_scale, channels):
        s_in, _ = self.quant(op.inputs[0])
        s_out, zp_out = self.quant(op.outputs[0])
        bias = self._bias(op, channels)
        multiplier = s_in * np.broadcast_to(w_scale, (channels,)) / s_out
        act = activation_range(op.options.fusedActivationFunction, s_out, zp_out,
                               self.label(op))
        multiplier32 = (np.float32(s_in) * np.broadcast_to(w_scale, (channels,)).astype(
            np.float32)) / np.float32(s_out)
        lower, upper = requantize(acc_lo + bias, acc_hi + bias, multiplier, zp_out, *act,
                                  point=self.point, rounding=self.rounding,
                                  method=POINT_METHODS[self.kernels][op.name],
                                  multiplier32=multiplier32)
        self.set(op.outputs[0], lower, upper)

    def _convolution(self, op, w, w_scale, kh, kw, out_channels, window_product):
        """Accumulates `window_product(view, weights, i, j)` over the kernel window of a
        2-D convolution's input interval, then requantizes."""
        lo, hi = self.get(op.inputs[0])
        shape = self.tensors[op.inputs[0]].shape
        _, zp_in = self.quant(op.inputs[0])
        strides, dilations, out_hw, pads = _geometry(op, shape, kh, kw, self.label(op))
        batch = lo.shape[0]
        x_lo = lo.reshape((-1,) + shape[1:]) - zp_in
        x_hi = hi.reshape((-1,) + shape[1:]) - zp_in

        def apply(x, weights):
            out = np.zeros((x.shape[0],) + out_hw + (out_channels,))
            for i, j, view in _patches(x, kh, kw, strides, dilations, out_hw, pads, 0.0):
                out += window_product(view, weights, i, j)
            return out

        acc_lo, acc_hi = self._affine(op, x_lo, x_hi, w, apply)
        self._finish_affine(op, acc_lo.reshape(batch, -1, out_channels),
                            acc_hi.reshape(batch, -1, out_channels), w_scale, out_channels)

    def op_conv_2d(self, op):
        shape = self.tensors[op.inputs[0]].shape
        if len(shape) != 4:
            raise UnsupportedOperatorError(f"{self.label(op)}: input of rank {len(shape)}.")
        w, w_scale = self._weights(op.inputs[1], 0)
        out_channels, kh, kw, channels = w.shape
        if channels != shape[3]:
            raise UnsupportedOperatorError(f"{self.label(op)}: grouped convolutions are not "
                                           "supported.")
        _check_exact(510, np.abs(w).max(initial=0), kh * kw * channels, self.label(op))
        self._convolution(op, w, w_scale, kh, kw, out_channels,
                          lambda view, weights, i, j: view @ weights[:, i, j, :].T)

    def op_depthwise_conv_2d(self, op):
        shape = self.tensors[op.inputs[0]].shape
        w, w_scale = self._weights(op.inputs[1], 3)
        _, kh, kw, out_channels = w.shape
        channels = shape[3]
        if out_channels % channels:
            raise UnsupportedOperatorError(f"{self.label(op)}: {out_channels} output channels "
                                           f"for {channels} input channels.")
        multiplier = out_channels // channels
        _check_exact(510, np.abs(w).max(initial=0), kh * kw, self.label(op))

        def window_product(view, weights, i, j):
            if multiplier > 1:
                view = np.repeat(view, multiplier, axis=-1)
            return view * weights[0, i, j, :]

        self._convolution(op, w, w_scale, kh, kw, out_channels, window_product)

    def op_fully_connected(self, op):
        o = op.options
        if getattr(o, "weightsFormat", 0) not in (0, None):
            raise UnsupportedOperatorError(f"{self.label(op)}: shuffled weights format.")
        lo, hi = self.get(op.inputs[0])
        _, zp_in = self.quant(op.inputs[0])
        w, w_scale = self._weights(op.inputs[1], 0)
        units, depth = w.shape
        batch = lo.shape[0]
        _check_exact(510, np.abs(w).max(initial=0), depth, self.label(op))
        x_lo = lo.reshape(batch, -1, depth) - zp_in
        x_hi = hi.reshape(batch, -1, depth) - zp_in
        acc_lo, acc_hi = self._affine(op, x_lo, x_hi, w, lambda x, weights: x @ weights.T)
        self._finish_affine(op, acc_lo, acc_hi, w_scale, units)

    # ---- elementwise and pooling

    def _broadcast(self, t, value, rank):
        shape = self.tensors[t].shape
        batch = value.shape[0]
        return value.reshape((batch,) + (1,) * (rank - len(shape)) + shape)

    def op_add(self, op):
        (a, b), out = op.inputs[:2], op.outputs[0]
        rank = max(len(self.tensors[a].shape), len(self.tensors[b].shape))
        (a_lo, a_hi), (b_lo, b_hi) = self.get(a), self.get(b)
        a_lo, a_hi = (self._broadcast(a, v, rank) for v in (a_lo, a_hi))
        b_lo, b_hi = (self._broadcast(b, v, rank) for v in (b_lo, b_hi))
        s_a, zp_a = self.quant(a)
        s_b, zp_b = self.quant(b)
        s_out, zp_out = self.quant(out)
        act = activation_range(op.options.fusedActivationFunction, s_out, zp_out,
                               self.label(op))
        if self.point:
            add = self._add_xnnpack if self.kernels == "xnnpack" else self._add_reference
            lower = np.clip(add(a_lo - zp_a, b_lo - zp_b, s_a, s_b, s_out) + zp_out, *act)
            self.set(out, lower, lower)
            return
        m_a, m_b = s_a / s_out, s_b / s_out
        v_lo = (a_lo - zp_a) * m_a + (b_lo - zp_b) * m_b
        v_hi = (a_hi - zp_a) * m_a + (b_hi - zp_b) * m_b
        terms = (np.maximum(np.abs(a_lo - zp_a), np.abs(a_hi - zp_a)) * m_a
                 + np.maximum(np.abs(b_lo - zp_b), np.abs(b_hi - zp_b)) * m_b)
        # The reference kernel rescales each input to 2**20 / (2 max(s_a, s_b)) units with
        # a rounding of its own, then rounds the sum to the output: the input roundings
        # count at the output multiplier; the multipliers' relative errors at `terms`.
        # XNNPACK rounds both multipliers to multiples of 2**-shift <= max(m_a, m_b) 2**-20.
        (_, sh_a), (_, sh_b), (_, sh_o), real_out = self._add_multipliers(s_a, s_b, s_out)
        codes = (np.maximum(np.abs(a_lo - zp_a), np.abs(a_hi - zp_a))
                 + np.maximum(np.abs(b_lo - zp_b), np.abs(b_hi - zp_b)))
        slack = (real_out * (fixed_point_error(sh_a) + fixed_point_error(sh_b))
                 + 0.5 * max(m_a, m_b) * 2.0**-20 * codes + RELATIVE_TOLERANCE * terms)
        lower, upper = round_bounds(v_lo, v_hi, self.rounding, fixed_point_error(sh_o), slack)
        self.set(out, np.clip(lower + zp_out, *act), np.clip(upper + zp_out, *act))

    @staticmethod
    def _add_multipliers(s_a, s_b, s_out):
        twice_max = 2.0 * float(max(np.float32(s_a), np.float32(s_b)))
        real_out = twice_max / (2.0**20 * s_out)
        return (quantize_multiplier(s_a / twice_max), quantize_multiplier(s_b / twice_max),
                quantize_multiplier(real_out), real_out)

    @staticmethod
    def _add_xnnpack(a, b, s_a, s_b, s_out):
        """XNNPACK's int8 ADD: 20-bit integer multipliers sharing one shift, one rounding
        (halves up) of the int32 sum."""
        scale_a = np.float32(np.float32(s_a) / np.float32(s_out))
        scale_b = np.float32(np.float32(s_b) / np.float32(s_out))
        exponent = int(np.float32(max(scale_a, scale_b)).view(np.uint32) >> 23) - 127
        shift = 20 - exponent

        def fixed(scale):
            bits = np.uint32(np.float32(scale).view(np.uint32) + np.uint32(shift << 23))
            return int(np.rint(bits.view(np.float32)))

        acc = (1 << (shift - 1)) + a * fixed(scale_a) + b * fixed(scale_b)
        return acc >> shift

    @classmethod
    def _add_reference(cls, a, b, s_a, s_b, s_out):
        """TFLite's reference int8 ADD (left shift 20, three fixed-point multipliers)."""
        (q_a, sh_a), (q_b, sh_b), (q_o, sh_o), _ = cls._add_multipliers(s_a, s_b, s_out)
        scaled_a = multiply_by_quantized_multiplier(a * (1 << 20), q_a, sh_a)
        scaled_b = multiply_by_quantized_multiplier(b * (1 << 20), q_b, sh_b)
        return multiply_by_quantized_multiplier(scaled_a + scaled_b, q_o, sh_o)

    def _pool_setup(self, op):
        lo, hi = self.get(op.inputs[0])
        shape = self.tensors[op.inputs[0]].shape
        o = op.options
        kh, kw = o.filterHeight, o.filterWidth
        oh, top, bottom = _window(shape[1], kh, o.strideH, 1, o.padding, self.label(op))
        ow, left, right = _window(shape[2], kw, o.strideW, 1, o.padding, self.label(op))
        if self.quant(op.inputs[0]) != self.quant(op.outputs[0]):
            raise UnsupportedOperatorError(
                f"{self.label(op)}: input and output quantization differ (TFLite requires "
                "them equal for int8 pooling).")
        s_out, zp_out = self.quant(op.outputs[0])
        act = activation_range(o.fusedActivationFunction, s_out, zp_out, self.label(op))
        geometry = (kh, kw, (o.strideH, o.strideW), (1, 1), (oh, ow),
                    ((top, bottom), (left, right)))
        return lo.reshape((-1,) + shape[1:]), hi.reshape((-1,) + shape[1:]), geometry, act

    def op_max_pool_2d(self, op):
        lo, hi, geometry, act = self._pool_setup(op)
        batch = self.get(op.inputs[0])[0].shape[0]
        fill = np.iinfo(np.int64).min // 4
        out = []
        for value in (lo, hi) if not self.point else (lo,):
            best = None
            for _, _, view in _patches(value, *geometry, fill):
                best = view.copy() if best is None else np.maximum(best, view)
            out.append(np.clip(best, *act).reshape(batch, -1))
        self.set(op.outputs[0], out[0], out[-1])

    def op_average_pool_2d(self, op):
        lo, hi, geometry, act = self._pool_setup(op)
        batch = self.get(op.inputs[0])[0].shape[0]

        def window_sum(value):
            total = None
            for _, _, view in _patches(value, *geometry, 0):
                total = view.copy() if total is None else total + view
            return total

        count = window_sum(np.ones((1,) + lo.shape[1:3] + (1,), np.int64))
        if self.point:
            s = window_sum(lo)
            half = count // 2
            avg = np.where(s > 0, (s + half) // count, -((-s + half) // count))
            avg = np.clip(avg, *act).reshape(batch, -1)
            self.set(op.outputs[0], avg, avg)
            return
        sum_lo, sum_hi = window_sum(lo), window_sum(hi)
        if self.rounding == "nearest":  # round(sum / count), ties either way
            lower = _ceil_div(2 * sum_lo - count, 2 * count)
            upper = (2 * sum_hi + count) // (2 * count)
        else:
            lower, upper = sum_lo // count, _ceil_div(sum_hi, count)
        lower, upper = np.clip(lower, *act), np.clip(upper, *act)
        self.set(op.outputs[0], lower.reshape(batch, -1), upper.reshape(batch, -1))

    def op_mean(self, op):
        lo, hi = self.get(op.inputs[0])
        shape = self.tensors[op.inputs[0]].shape
        axes_tensor = self.tensors[op.inputs[1]]
        if axes_tensor.data is None:
            raise UnsupportedOperatorError(f"{self.label(op)}: axes are not constant.")
        axes = sorted({int(a) % len(shape) for a in np.asarray(axes_tensor.data).reshape(-1)})
        count = int(np.prod([shape[a] for a in axes]))
        s_in, zp_in = self.quant(op.inputs[0])
        s_out, zp_out = self.quant(op.outputs[0])
        data_axes = tuple(a + 1 for a in axes)
        sum_lo = lo.sum(axis=data_axes)
        sum_hi = sum_lo if self.point else hi.sum(axis=data_axes)
        m = s_in / (count * s_out)
        # Two int8 kernels exist: round(sum(q - zp_in) * M) + zp_out, and (older
        # reference/optimized) round(sum(q) * M) + zp_out - trunc(zp_in * s_in / s_out).
        bias = int(np.float32(zp_in) * np.float32(s_in) / np.float32(s_out))
        q, shift = mean_multiplier(s_in / s_out, count)
        if self.point and self.kernels == "xnnpack":  # float32 scale, round half to even
            scale = np.float32(np.float32(s_in) / np.float32(s_out)) / np.float32(count)
            product = (sum_lo - count * zp_in).astype(np.float32) * np.float32(scale)
            value = np.clip(np.rint(product.astype(np.float32)) + zp_out, INT8_MIN, INT8_MAX)
            self.set(op.outputs[0], value.astype(np.int64).reshape(lo.shape[0], -1), None)
            return
        if self.point:
            value = multiply_by_quantized_multiplier(sum_lo - count * zp_in, q, shift) + zp_out
            value = np.clip(value, INT8_MIN, INT8_MAX)
            self.set(op.outputs[0], value.reshape(lo.shape[0], -1), None)
            return
        error = fixed_point_error(shift)
        a_lo, a_hi = round_bounds((sum_lo - count * zp_in) * m, (sum_hi - count * zp_in) * m,
                                  self.rounding, error)
        b_lo, b_hi = round_bounds(sum_lo * m, sum_hi * m, self.rounding, error)
        lower = np.minimum(a_lo + zp_out, b_lo + zp_out - bias)
        upper = np.maximum(a_hi + zp_out, b_hi + zp_out - bias)
        batch = lo.shape[0]
        self.set(op.outputs[0], np.clip(lower, INT8_MIN, INT8_MAX).reshape(batch, -1),
                 np.clip(upper, INT8_MIN, INT8_MAX).reshape(batch, -1))

    def op_concatenation(self, op):
        out = op.outputs[0]
        rank = len(self.tensors[out].shape)
        axis = int(op.options.axis) % rank + 1
        s_out, zp_out = self.quant(out)
        act = activation_range(op.options.fusedActivationFunction, s_out, zp_out,
                               self.label(op))
        lows, highs = [], []
        for t in op.inputs:
            lo, hi = self.get(t)
            lo, hi = (self._broadcast(t, v, rank) for v in (lo, hi))
            s_in, zp_in = self.quant(t)
            if (s_in, zp_in) != (s_out, zp_out):
                # The kernel computes round(q * m - zp_in * m) in float32.
                m = s_in / s_out
                if self.point:
                    lo = hi = round_half_away((lo - zp_in) * m).astype(np.int64)
                else:
                    slack = RELATIVE_TOLERANCE * (np.abs(lo) + np.abs(hi) + abs(zp_in)) * m
                    lo, hi = round_bounds((lo - zp_in) * m, (hi - zp_in) * m, self.rounding,
                                          0.5, slack)
                lo = np.clip(lo + zp_out, INT8_MIN, INT8_MAX)
                hi = np.clip(hi + zp_out, INT8_MIN, INT8_MAX)
            lows.append(np.clip(lo, *act))
            highs.append(np.clip(hi, *act))
        self.set(out, np.concatenate(lows, axis), np.concatenate(highs, axis))

    def _copy(self, op):
        lo, hi = self.get(op.inputs[0])
        self.set(op.outputs[0], lo, hi)

    op_reshape = op_squeeze = op_expand_dims = _copy

    def _requantize_op(self, op, act):
        lo, hi = self.get(op.inputs[0])
        s_in, zp_in = self.quant(op.inputs[0])
        _, zp_out = self.quant(op.outputs[0])
        s_out = self.quant(op.outputs[0])[0]
        lower, upper = requantize(lo - zp_in, hi - zp_in, s_in / s_out, zp_out, *act,
                                  point=self.point, rounding=self.rounding)
        self.set(op.outputs[0], lower, upper)

    def _activation(self, op, fused):
        s_out, zp_out = self.quant(op.outputs[0])
        self._requantize_op(op, activation_range(fused, s_out, zp_out, self.label(op)))

    def op_relu(self, op):
        self._activation(op, 1)

    def op_relu_n1_to_1(self, op):
        self._activation(op, 2)

    def op_relu6(self, op):
        self._activation(op, 3)

    def op_quantize(self, op):
        self._requantize_op(op, (INT8_MIN, INT8_MAX))

    def op_softmax(self, op):
        lo, hi = self.get(op.inputs[0])
        batch = lo.shape[0]
        s_in, _ = self.quant(op.inputs[0])
        s_out, zp_out = self.quant(op.outputs[0])
        beta = float(getattr(op.options, "beta", 1.0) or 1.0)
        if self.point:
            value = softmax_reference(lo.reshape(-1, lo.shape[-1]), s_in, beta, s_out, zp_out)
            self.set(op.outputs[0], value.reshape(batch, -1), None)
            return
        p_lo, p_hi = softmax_probability_bounds(lo.reshape(-1, lo.shape[-1]),
                                                hi.reshape(-1, hi.shape[-1]), s_in * beta)
        lower = np.ceil(p_lo / s_out - 0.5 - SOFTMAX_ERROR).astype(np.int64) + zp_out
        upper = np.floor(p_hi / s_out + 0.5 + SOFTMAX_ERROR).astype(np.int64) + zp_out
        self.set(op.outputs[0], np.clip(lower, INT8_MIN, INT8_MAX).reshape(batch, -1),
                 np.clip(upper, INT8_MIN, INT8_MAX).reshape(batch, -1))


def softmax_reference(q, input_scale, beta, output_scale, output_zero_point):
    """LiteRT's int8 softmax kernel (float32 exp table, round half away from zero)."""
    q = np.asarray(q, np.int64)
    scale = np.float32(-np.float32(input_scale) * np.float32(beta))
    table = np.exp(scale * np.arange(256, dtype=np.float32)).astype(np.float32)
    diff = q.max(axis=-1, keepdims=True) - q  # table[255 - max + q] = exp(scale * diff)
    values = table[diff]
    total = np.zeros(values.shape[:-1], np.float32)
    for k in range(values.shape[-1]):
        total = (total + values[..., k]).astype(np.float32)
    inverse = (np.float32(1.0) / (total * np.float32(output_scale))).astype(np.float32)
    rescaled = (values * inverse[..., None]).astype(np.float32)
    out = round_half_away(rescaled).astype(np.int64) + output_zero_point
    return np.clip(out, INT8_MIN, INT8_MAX)


def softmax_probability_bounds(lower, upper, scale):
    """Exact bounds of softmax(scale * q) over the integer box [lower, upper] (float64)."""
    a = lower.astype(np.float64) * scale
    b = upper.astype(np.float64) * scale
    shift = b.max(axis=-1, keepdims=True)
    ea, eb = np.exp(a - shift), np.exp(b - shift)
    sa, sb = ea.sum(-1, keepdims=True), eb.sum(-1, keepdims=True)
    p_lo = ea / (ea + sb - eb)
    p_hi = eb / (eb + sa - ea)
    return np.clip(p_lo, 0, 1), np.clip(p_hi, 0, 1)


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


def propagate(graph, lower, upper=None, *, point=False, keep=False, rounding="floor_ceil",
              kernels="reference"):
    """Propagates int8 input bounds through `graph` (an `IntegerGraph`).

    Args:
        lower, upper: int arrays (batch, *input shape) of int8 codes of the entry tensor;
            for `point=True` pass the quantized inputs as `lower` only.
        point: simulate the integer kernels on single points.
        keep: keep the bounds of every intermediate tensor in `Propagation.tensors`.
        rounding: "floor_ceil" (default; sound for any kernel whose requantization error
            is below one unit) or "nearest" (tighter; uses the rounding error of TFLite's
            fixed-point kernels and XNNPACK). See `ROUNDINGS`.
        kernels: whose rounding the point simulation follows: "reference" (TFLite's
            reference kernels), "builtin" (its optimized kernels) or "xnnpack" (the
            XNNPACK delegate). Intervals are sound for all three.

    Returns:
        A `Propagation`.
    """
    lower = np.asarray(lower, np.int64)
    upper = lower if (point or upper is None) else np.asarray(upper, np.int64)
    if not point and np.any(lower > upper):
        raise ValueError("`lower` must be <= `upper` everywhere.")
    return _Runner(graph, point, keep, rounding, kernels).run(lower, upper)


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
        pairs |= _softmax_pairs(graph, result, labels, before, rows)
    if result.fold_input is not None:
        pairs |= _fold_pairs(graph, result, labels, before, rows)
    return np.all(pairs | is_own, axis=1)


def _softmax_pairs(graph, result, labels, before, rows):
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


def _fold_pairs(graph, result, labels, before, rows):
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
