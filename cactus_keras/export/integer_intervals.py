"""Sound integer intervals of each rounding step of the int8 kernels.

`IntervalArithmetic` is the interval side of the rules in `integer_ops`: given integer
bounds [lower, upper] of an op's inputs (int64, batch first), it returns integer bounds
that contain every value any supported kernel can write, whatever its tie rule:

* Accumulators (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) are exact: the centre and
  radius of the box go through the integer linear map and |W| (`integer_linear`), and
  (W(l + u) -+ |W|(u - l)) / 2 is the exact integer range of W x over the box.
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
  to the rounding structure of those kernels. Accumulators that could leave int32 (or
  overflow the left shift of a multiplier >= 1) give the whole activation range.
* ADD: the two inputs rescaled to the output scale, summed and rounded, with slack for
  the intermediate roundings of TFLite's kernel (inputs rescaled to 2**20 units) and
  XNNPACK's (20-bit multipliers).
* AVERAGE_POOL_2D (the exact average of the integer window sums, rounded), MEAN (both
  formulas of TFLite's int8 mean kernels), the rescaling of CONCATENATION inputs.
* SOFTMAX (only as the last op): exact bounds of the probabilities over the box of its
  int8 input, rounded with `SOFTMAX_ERROR` of slack.

Example:

```python
lower, upper = requantize_interval(np.array([-1000]), np.array([2500]), 0.01, 5, -128, 127)
# [-10, 25] + 5 -> ([-5], [30])
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.int8.fixed_point import (
    INT8_MAX,
    INT8_MIN,
    ceil_div,
    fixed_point_error,
    interval_magnitude,
    largest_magnitude,
    quantize_multiplier,
    requantization_fits,
)
from cactus_keras.int8.rounding import (  # noqa: F401 (re-exported for the export modules)
    DEFAULT_ROUNDING,
    RELATIVE_TOLERANCE,
    ROUNDINGS,
    check_rounding,
)

# The rounding models (`floor_ceil`, `nearest`), what each assumes and the runtimes it is
# sound for: one description in cactus_keras.int8.rounding, shared with the int8 member.
# Assumed error (in output units, before rounding) of the int8 SOFTMAX kernel against
# the exact softmax of its int8 input. LiteRT's x86/ARM kernel evaluates a float32 lookup
# table of exp (error ~1e-5 units); 1.0 also covers fixed-point and uint16-table variants.
SOFTMAX_ERROR = 1.0


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
    check_rounding(rounding)
    largest = max(largest_magnitude(v_lower), largest_magnitude(v_upper))
    if RELATIVE_TOLERANCE * largest + float(np.max(slack, initial=0)) < 0.25:
        # No excess anywhere: skip the elementwise tolerance (same bounds, less work).
        return np.floor(v_lower).astype(np.int64), np.ceil(v_upper).astype(np.int64)
    # r > v - 1 (hence r >= floor(v)) while e + t < 1; beyond, shift by the excess.
    excess_lo = np.where(t_lo >= 0.25, t_lo - 0.25 + 1e-9, 0.0)
    excess_hi = np.where(t_hi >= 0.25, t_hi - 0.25 + 1e-9, 0.0)
    return (np.floor(v_lower - excess_lo).astype(np.int64),
            np.ceil(v_upper + excess_hi).astype(np.int64))


def requantize_interval(acc_lower, acc_upper, multiplier, zero_point, act_min, act_max,
                        rounding=DEFAULT_ROUNDING, quantized_multiplier=None, overwrite=False):
    """Maps int32 accumulator bounds to int8 output bounds: the real values a*M, b*M
    rounded with `round_bounds` (floor/ceil, or the fixed-point rounding error for
    "nearest"), plus zp, clamped to [act_min, act_max]. Accumulators outside int32, or
    a left shift (M >= 1) that would overflow, give the whole range [act_min, act_max].
    `quantized_multiplier`: `quantize_multiplier(multiplier)` when already known.
    `overwrite`: the accumulators are float64 arrays of the caller's own that may be
    overwritten (saves two large temporaries)."""
    multiplier = np.asarray(multiplier, np.float64)
    _, shift = quantized_multiplier or quantize_multiplier(multiplier)
    largest_acc = interval_magnitude(acc_lower, acc_upper)
    ok = requantization_fits(acc_lower, acc_upper, shift, largest_acc)
    if (overwrite and acc_lower is not acc_upper and acc_lower.dtype == np.float64
            and acc_upper.dtype == np.float64):
        v_lower = np.multiply(acc_lower, multiplier, out=acc_lower)
        v_upper = np.multiply(acc_upper, multiplier, out=acc_upper)
    else:
        v_lower = np.multiply(acc_lower, multiplier, dtype=np.float64)
        v_upper = np.multiply(acc_upper, multiplier, dtype=np.float64)
    # |a * M| <= max|a| * max M: the tolerance check needs no pass over the values.
    largest = largest_acc * float(np.max(np.abs(multiplier), initial=0))
    if rounding == "floor_ceil" and RELATIVE_TOLERANCE * largest < 0.25:
        # The common case of `round_bounds` (no tolerance excess anywhere), fused: the
        # floor/ceil, the zero point and the clamp in place, clamped before the cast so
        # no out-of-range value is ever converted.
        np.floor(v_lower, out=v_lower)
        np.ceil(v_upper, out=v_upper)
        lower, upper = v_lower, v_upper
        for bound in (lower, upper):
            bound += zero_point
            np.clip(bound, act_min, act_max, out=bound)
        lower, upper = lower.astype(np.int64), upper.astype(np.int64)
    else:
        # fixed_point_error covers one- and two-step kernels (and XNNPACK's 0.5) alike.
        lower, upper = round_bounds(v_lower, v_upper, rounding, fixed_point_error(shift))
        lower = np.clip(lower + zero_point, act_min, act_max)
        upper = np.clip(upper + zero_point, act_min, act_max)
    if ok is True:
        return lower, upper
    return np.where(ok, lower, act_min), np.where(ok, upper, act_max)


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


class IntervalArithmetic:
    """The interval semantics of the int8 kernels, with a rounding model.

    Every method takes and returns (lower, upper) pairs of integer arrays (int64, or
    float64 holding exact integers for accumulators); the op rules of `integer_ops`
    call it wherever a kernel rounds. `rounding` is "floor_ceil" or
    "nearest" (see `ROUNDINGS`).

    Example:

    ```python
    arithmetic = IntervalArithmetic("nearest")
    lower, upper = arithmetic.requantize((acc_lower, acc_upper), requantization)
    ```
    """

    point = False

    def __init__(self, rounding=DEFAULT_ROUNDING):
        self.rounding = check_rounding(rounding)

    def accumulate(self, linear, lower, upper):
        """Exact bounds of the integer linear map over the box [lower, upper]."""
        # W (l + u) -+ |W| (u - l) = 2 sum_k min/max(w_k l_k, w_k u_k): even integers,
        # exact in float64 (integer_linear checks the bound), so the halves are too.
        centre = linear(lower + upper)
        radius = linear(upper - lower, absolute=True)
        low = centre - radius
        low *= 0.5
        centre += radius
        centre *= 0.5
        return low, centre

    def requantize(self, accumulator, requantization):
        r = requantization
        # The rules hand over accumulators of their own (fresh arrays): overwritten.
        return requantize_interval(*accumulator, r.multiplier, r.zero_point,
                                   *r.activation, rounding=self.rounding,
                                   quantized_multiplier=r.quantized, overwrite=True)

    def add(self, a, b, add):
        (a_lo, a_hi), (b_lo, b_hi) = a, b
        m_a, m_b = add.s_a / add.s_out, add.s_b / add.s_out
        a_lo, a_hi, b_lo, b_hi = a_lo - add.zp_a, a_hi - add.zp_a, b_lo - add.zp_b, b_hi - add.zp_b
        v_lo = a_lo * m_a + b_lo * m_b
        v_hi = a_hi * m_a + b_hi * m_b
        code_a = np.maximum(np.abs(a_lo), np.abs(a_hi))
        code_b = np.maximum(np.abs(b_lo), np.abs(b_hi))
        terms = code_a * m_a + code_b * m_b
        # The reference kernel rescales each input to 2**20 / (2 max(s_a, s_b)) units with
        # a rounding of its own, then rounds the sum to the output: the input roundings
        # count at the output multiplier; the multipliers' relative errors at `terms`.
        # XNNPACK rounds both multipliers to multiples of 2**-shift <= max(m_a, m_b) 2**-20.
        (_, sh_a), (_, sh_b), (_, sh_o), real_out = add.multipliers
        slack = (real_out * (fixed_point_error(sh_a) + fixed_point_error(sh_b))
                 + 0.5 * max(m_a, m_b) * 2.0**-20 * (code_a + code_b)
                 + RELATIVE_TOLERANCE * terms)
        lower, upper = round_bounds(v_lo, v_hi, self.rounding, fixed_point_error(sh_o), slack)
        return (np.clip(lower + add.zp_out, *add.activation),
                np.clip(upper + add.zp_out, *add.activation))

    def average(self, sums, count):
        """round(sum / count) of TFLite's int8 average pooling (ties either way)."""
        sum_lo, sum_hi = sums
        if self.rounding == "nearest":
            return ceil_div(2 * sum_lo - count, 2 * count), (2 * sum_hi + count) // (2 * count)
        return sum_lo // count, ceil_div(sum_hi, count)

    def mean(self, sums, mean):
        sum_lo, sum_hi = sums
        m = mean.s_in / (mean.count * mean.s_out)
        error = fixed_point_error(mean.quantized[1])
        offset = mean.count * mean.zp_in
        # Two int8 kernels exist: round(sum(q - zp_in) * M) + zp_out, and (older
        # reference/optimized) round(sum(q) * M) + zp_out - trunc(zp_in * s_in / s_out).
        a_lo, a_hi = round_bounds((sum_lo - offset) * m, (sum_hi - offset) * m,
                                  self.rounding, error)
        b_lo, b_hi = round_bounds(sum_lo * m, sum_hi * m, self.rounding, error)
        lower = np.minimum(a_lo + mean.zp_out, b_lo + mean.zp_out - mean.legacy_bias)
        upper = np.maximum(a_hi + mean.zp_out, b_hi + mean.zp_out - mean.legacy_bias)
        return np.clip(lower, INT8_MIN, INT8_MAX), np.clip(upper, INT8_MIN, INT8_MAX)

    def rescale(self, value, zp_in, multiplier, zp_out):
        """round((q - zp_in) * m) + zp_out of a CONCATENATION input (float32 kernel)."""
        lo, hi = value
        slack = RELATIVE_TOLERANCE * (np.abs(lo) + np.abs(hi) + abs(zp_in)) * multiplier
        lo, hi = round_bounds((lo - zp_in) * multiplier, (hi - zp_in) * multiplier,
                              self.rounding, 0.5, slack)
        return (np.clip(lo + zp_out, INT8_MIN, INT8_MAX),
                np.clip(hi + zp_out, INT8_MIN, INT8_MAX))

    def softmax(self, value, softmax):
        lo, hi = value
        p_lo, p_hi = softmax_probability_bounds(lo, hi, softmax.s_in * softmax.beta)
        lower = np.ceil(p_lo / softmax.s_out - 0.5 - SOFTMAX_ERROR).astype(np.int64)
        upper = np.floor(p_hi / softmax.s_out + 0.5 + SOFTMAX_ERROR).astype(np.int64)
        return (np.clip(lower + softmax.zp_out, INT8_MIN, INT8_MAX),
                np.clip(upper + softmax.zp_out, INT8_MIN, INT8_MAX))

