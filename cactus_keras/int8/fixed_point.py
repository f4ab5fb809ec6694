"""TFLite's int8 fixed-point arithmetic, bit for bit, on int64 NumPy arrays.

The quantities every int8 kernel derives from a file's scales: the 31-bit fixed-point
multiplier and shift of a real multiplier (`quantize_multiplier`), the three variants
of `MultiplyByQuantizedMultiplier` the kernels round with, the largest error of that
rounding (`fixed_point_error`), the multipliers of MEAN and ADD, and the int8 clamp of
a fused activation. Both the interval rules (`integer_intervals`) and the bit-exact
simulation (`cactus_keras.export.integer_simulation`) are written on top of these, and
the int8 training member uses the same quantities. This module imports neither
TensorFlow nor the TFLite schema, so every layer of the package can use it.

Example:

```python
q, shift = quantize_multiplier(0.3)                   # 0.3 ~ q * 2**(shift - 31)
multiply_by_quantized_multiplier(np.array([7]), q, shift)   # array([2])
```
"""

from __future__ import annotations

import numpy as np

# TFLite's ActivationFunctionType codes (schema.fbs); fixed by the file format, so this
# module needs neither TensorFlow nor the schema (tests/test_int8_arithmetic.py checks
# them against the schema).
ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


class UnsupportedOperatorError(ValueError):
    """The int8 model contains ops the integer verifier has no bound rule for."""

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def round_half_away(v):
    """Rounds to the nearest integer, halves away from zero (TFLite's `TfLiteRound`)."""
    v = np.asarray(v, np.float64)
    return np.where(v >= 0, np.floor(v + 0.5), -np.floor(-v + 0.5))


def ceil_div(a, b):
    """Integer ceil(a / b) for b > 0."""
    return -((-a) // b)


def trunc_div(a, b):
    """C integer division (truncates toward zero); `b` > 0."""
    return np.where(a >= 0, a // b, -((-a) // b))


def fixed_point_error(shift):
    """Largest |r - v| of TFLite's `MultiplyByQuantizedMultiplier` (before the relative
    multiplier error): 0.5, plus 2**(shift - 1) for the first of two roundings when the
    result is shifted right."""
    shift = np.asarray(shift)
    return 0.5 + np.where(shift < 0, 0.5 * 2.0 ** np.minimum(shift, 0), 0.0)


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
    high = trunc_div(ab + nudge, np.int64(1 << 31))
    if method == "double_up":
        return (high + np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)) >> right
    mask = (np.int64(1) << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def largest_magnitude(x):
    """max |x| (0 for an empty array), without an |x| temporary."""
    x = np.asarray(x)
    return 0.0 if x.size == 0 else float(max(x.max(), -x.min()))


def interval_magnitude(lower, upper):
    """max |v| over bounds with lower <= upper (a point: `lower is upper`):
    max(max upper, -min lower), two passes for both arrays."""
    return max(float(np.max(upper, initial=0)), -float(np.min(lower, initial=0)))


def requantization_fits(acc_lower, acc_upper, shift, largest=None):
    """Where the kernels' requantization is defined: the accumulator lies in int32 and
    its left shift (a multiplier >= 1) does not overflow int32. Elsewhere the output
    can be anything in the activation range. Returns True when it holds everywhere,
    else a bool array. `largest`: `interval_magnitude(acc_lower, acc_upper)` when
    already known."""
    if largest is None:
        largest = interval_magnitude(acc_lower, acc_upper)
    if largest * 2.0 ** max(int(np.max(shift, initial=0)), 0) <= INT32_MAX:
        return True  # everywhere (the common case: one check, no elementwise pass)
    magnitude = np.maximum(np.abs(acc_lower), np.abs(acc_upper))
    ok = (acc_lower >= INT32_MIN) & (acc_upper <= INT32_MAX)
    return ok & (magnitude * (np.int64(1) << np.maximum(shift, 0)) <= INT32_MAX)


def mean_multiplier(real_multiplier, count):
    """The fixed-point multiplier of TFLite's int8 MEAN: QuantizeMultiplier(s_in / s_out),
    then divided by the element count with integer truncation and a shift of
    floor(log2(count))."""
    q, shift = quantize_multiplier(real_multiplier)
    q, shift = int(q), int(shift)
    extra = min(int(count).bit_length() - 1, 32, 31 + shift)
    return np.int64((q << extra) // int(count)), np.int64(shift - extra)


def add_multipliers(s_a, s_b, s_out):
    """TFLite's int8 ADD setup: both inputs are rescaled to units of
    2 max(s_a, s_b) / 2**20 (left shift 20) and the sum back to the output scale.
    Returns ((q_a, shift_a), (q_b, shift_b), (q_out, shift_out), real output multiplier).
    """
    twice_max = 2.0 * float(max(np.float32(s_a), np.float32(s_b)))
    real_out = twice_max / (2.0**20 * s_out)
    return (quantize_multiplier(s_a / twice_max), quantize_multiplier(s_b / twice_max),
            quantize_multiplier(real_out), real_out)


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
