"""Bit-exact simulation of the int8 kernels that run a `.tflite` file.

`KernelSimulation` is the point side of the rules in `integer_ops`: the same ops on
single int8 inputs, rounded the way the kernels of one interpreter configuration round
(`kernels`): TFLite's reference kernels, its optimized builtin kernels, or the XNNPACK
delegate, which differ in how they round ties. Its arg-max is compared with the
interpreter's (`simulation_agreement`); it reproduces LiteRT 2.3's int8 outputs bit for
bit for every supported op (SOFTMAX with the reference kernels: up to one code at exact
ties).

Values are (lower, upper) pairs like the intervals' with `upper is lower`, so monotone
ops (copies, clamps, max pooling) are written once for both.

Example:

```python
simulation = KernelSimulation("xnnpack")
value, _ = simulation.requantize((acc, acc), requantization)
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.int8.fixed_point import (
    INT8_MAX,
    INT8_MIN,
    INT32_MAX,
    INT32_MIN,
    add_multipliers,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantization_fits,
    round_half_away,
)

# How each kernel set rounds the requantization of convolutions and fully connected
# layers (checked against LiteRT 2.3's interpreters): reference kernels, TFLite's
# optimized builtin kernels, the XNNPACK delegate. Other requantizing ops (standalone
# activations, int8 QUANTIZE) use "double" in all three.
POINT_METHODS = {
    "reference": {"CONV_2D": "double", "DEPTHWISE_CONV_2D": "double",
                  "FULLY_CONNECTED": "single"},
    "builtin": {"CONV_2D": "double_up", "DEPTHWISE_CONV_2D": "double_up",
                "FULLY_CONNECTED": "double_up"},
    "xnnpack": {"CONV_2D": "xnnpack", "DEPTHWISE_CONV_2D": "xnnpack",
                "FULLY_CONNECTED": "xnnpack"},
}


def check_kernels(kernels):
    if kernels not in POINT_METHODS:
        raise ValueError(f"`kernels` must be one of {', '.join(POINT_METHODS)}, got "
                         f"{kernels!r}.")
    return kernels


def requantize_exact(acc, multiplier, zero_point, act_min, act_max, method="double",
                     multiplier32=None, quantized_multiplier=None):
    """The kernel's requantization of int32 accumulators to int8 codes.

    `method`: "double", "single" or "double_up" (TFLite's fixed-point
    `MultiplyByQuantizedMultiplier` variants) or "xnnpack" (float32: round half to even
    of float32(acc) * `multiplier32`). Accumulators outside int32, or a left shift that
    would overflow, give `act_min` (the kernels' result is undefined there; the intervals
    give the whole range).
    """
    multiplier = np.asarray(multiplier, np.float64)
    q, shift = quantized_multiplier or quantize_multiplier(multiplier)
    ok = requantization_fits(acc, acc, shift)
    if method == "xnnpack":
        product = np.asarray(acc, np.float32) * np.asarray(multiplier32, np.float32)
        value = np.rint(product.astype(np.float32)).astype(np.int64)
    else:
        value = multiply_by_quantized_multiplier(np.clip(acc, INT32_MIN, INT32_MAX), q, shift,
                                                 method)
    value = np.clip(value + zero_point, act_min, act_max)
    return value if ok is True else np.where(ok, value, act_min)


def add_xnnpack(a, b, s_a, s_b, s_out):
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


def add_reference(a, b, s_a, s_b, s_out):
    """TFLite's reference int8 ADD (left shift 20, three fixed-point multipliers)."""
    (q_a, sh_a), (q_b, sh_b), (q_o, sh_o), _ = add_multipliers(s_a, s_b, s_out)
    scaled_a = multiply_by_quantized_multiplier(a * (1 << 20), q_a, sh_a)
    scaled_b = multiply_by_quantized_multiplier(b * (1 << 20), q_b, sh_b)
    return multiply_by_quantized_multiplier(scaled_a + scaled_b, q_o, sh_o)


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


def _point(value):
    return value, value


class KernelSimulation:
    """The int8 kernels of one interpreter configuration, on points.

    `kernels`: "reference", "builtin" or "xnnpack" (see `POINT_METHODS`). The methods
    mirror `IntervalArithmetic`'s and take (value, value) pairs.
    """

    point = True

    def __init__(self, kernels="reference"):
        self.kernels = check_kernels(kernels)

    def accumulate(self, linear, lower, upper):
        return _point(linear(lower).astype(np.int64))  # exact integers from integer_linear

    def requantize(self, accumulator, requantization):
        r = requantization
        method = POINT_METHODS[self.kernels].get(r.op_name, "double")
        return _point(requantize_exact(accumulator[0], r.multiplier, r.zero_point,
                                       *r.activation, method=method,
                                       multiplier32=r.multiplier32,
                                       quantized_multiplier=r.quantized))

    def add(self, a, b, add):
        kernel = add_xnnpack if self.kernels == "xnnpack" else add_reference
        value = kernel(a[0] - add.zp_a, b[0] - add.zp_b, add.s_a, add.s_b, add.s_out)
        return _point(np.clip(value + add.zp_out, *add.activation))

    def average(self, sums, count):
        """TFLite's int8 average pooling: round half away from zero of sum / count."""
        s, half = sums[0], count // 2
        return _point(np.where(s > 0, (s + half) // count, -((-s + half) // count)))

    def mean(self, sums, mean):
        s = sums[0]
        if self.kernels == "xnnpack":  # float32 scale, round half to even
            scale = np.float32(np.float32(mean.s_in) / np.float32(mean.s_out)) / np.float32(
                mean.count)
            product = (s - mean.count * mean.zp_in).astype(np.float32) * np.float32(scale)
            value = np.rint(product.astype(np.float32)).astype(np.int64) + mean.zp_out
        else:
            q, shift = mean.quantized
            value = multiply_by_quantized_multiplier(s - mean.count * mean.zp_in, q, shift)
            value = value + mean.zp_out
        return _point(np.clip(value, INT8_MIN, INT8_MAX))

    def rescale(self, value, zp_in, multiplier, zp_out):
        """round((q - zp_in) * m) + zp_out of a CONCATENATION input."""
        out = round_half_away((value[0] - zp_in) * multiplier).astype(np.int64)
        return _point(np.clip(out + zp_out, INT8_MIN, INT8_MAX))

    def softmax(self, value, softmax):
        return _point(softmax_reference(value[0], softmax.s_in, softmax.beta, softmax.s_out,
                                        softmax.zp_out))
