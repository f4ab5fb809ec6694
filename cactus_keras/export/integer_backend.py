"""The interval and clean-point steps of CONV_2D and FULLY_CONNECTED on TensorFlow's CPU
kernels.

The same integers as `IntervalArithmetic.accumulate` followed by its `requantize` (and as
`KernelSimulation`'s accumulate and requantize on points), in fewer, multi-threaded
passes: the centred int8 bounds go into TensorFlow once, the centre and radius products
run as float32 convolutions / matrix products (convolutions split by input channel,
matrix products by depth, into the groups the planner of `integer_linear` proves exact,
the groups added in float64), the exact float64 accumulator bounds
(W(l + u) -+ |W|(u - l)) / 2 + bias are requantized there (both ends in one stacked
pass), and only the int8 bounds come back. The CPU kernels sum products directly
(oneDNN / Eigen: GEMM or direct loops, never Winograd or FFT), so every partial sum
stays the exact integer the plan bounds; every float64 step is the same IEEE operation
as the NumPy path's, so the bounds are bit for bit those of `IntervalArithmetic`, and the
clean points' codes those of `KernelSimulation` (tests/test_integer_linear.py checks
both paths agree).

Where the fast path's conditions do not hold (an accumulator that could leave int32, a
rounding tolerance that needs the elementwise excess, a depth step too large for
float32, another backend) the functions return None and the NumPy path runs.

Example:

```python
bounds = affine_interval(rule, "nearest", (lower, upper))  # or None
codes = affine_point(rule, "xnnpack", (q, q))              # or None
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.int8.fixed_point import INT32_MAX, fixed_point_error
from cactus_keras.int8.rounding import RELATIVE_TOLERANCE
from cactus_keras.export.integer_simulation import POINT_METHODS, requantize_exact

# False: always the NumPy path (the reference the tests compare against).
ENABLED = True
_TF = {}


def _tensorflow():
    """TensorFlow when it is the Keras backend (None otherwise)."""
    if "tf" not in _TF:
        import keras

        tf = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
        _TF["tf"] = tf
    return _TF["tf"]


def _largest(tf, x):
    return float(tf.reduce_max(tf.abs(x)).numpy()) if tf.size(x) > 0 else 0.0


def _constants(tf, linear, key, arrays):
    """The weights as TensorFlow constants, made once per linear map and plan (a
    conversion per call copies cnn7's dense weights, 51 MB, every batch)."""
    cache = linear.backend_cache
    if key not in cache:
        with tf.device("/CPU:0"):
            cache[key] = [tf.constant(a) for a in arrays()]
    return cache[key]


def _sum(tf, parts):
    """The float32 parts (each exact) added in float64 (exact: the planner's bound)."""
    out = None
    for part in parts:
        part = tf.cast(part, tf.float64)
        out = part if out is None else out + part
    return out


def _convolution(tf, linear, x, bound, absolute):
    """Exact float64 convolution of the float32 integers x (|x| <= bound), or None."""
    strides, dilations, out_hw, pads = linear.geometry
    if max(strides) > 1 and max(dilations) > 1:
        return None
    if any(p for pair in pads for p in pair):
        x = tf.pad(x, ((0, 0),) + tuple(tuple(p) for p in pads) + ((0, 0),))

    def convolve(inputs, kernel):
        out = tf.nn.convolution(inputs, kernel, strides=list(strides), padding="VALID",
                                dilations=list(dilations))
        return out[:, : out_hw[0], : out_hw[1]]

    # Channel groups cost one convolution in all; tap groups a whole one each.
    channels = linear.channel_groups(bound)
    if channels is not None:
        kernels = _constants(tf, linear, ("channels", tuple(channels), absolute),
                             lambda: linear._channel_kernels(channels, absolute))
        if len(channels) == 1:
            return tf.cast(convolve(x, kernels[0]), tf.float64)
        return _sum(tf, (convolve(x[..., start:end], kernel)
                         for (start, end), kernel in zip(channels, kernels)))
    groups = linear.tap_groups(bound)
    if groups is None:
        return None
    kernels = _constants(tf, linear, ("conv", tuple(groups), absolute),
                         lambda: linear._group_kernels(groups, absolute))
    return _sum(tf, (convolve(x, kernel) for kernel in kernels))


def _matmul(tf, linear, x, bound, absolute):
    """Exact float64 x @ W of the float32 integers x (|x| <= bound), or None."""
    chunks = linear.plan(bound)
    if chunks is None:
        return None
    weights = (linear.absolute if absolute else linear.matrix)[np.float32]
    slices = _constants(tf, linear, ("dense", tuple(chunks), absolute),
                        lambda: [weights[start:end] for start, end in chunks])
    if len(chunks) == 1:
        return tf.cast(tf.matmul(x, slices[0]), tf.float64)
    return _sum(tf, (tf.matmul(x[:, start:end], w) for (start, end), w in zip(chunks, slices)))


def _product(tf, rule, x, bound, absolute=False):
    """Exact float64 W x (or |W| x), channels last, of float32 integers |x| <= bound, or
    None where this path does not apply."""
    from cactus_keras.export.integer_linear import Convolution, FullyConnected

    linear = rule.linear
    if isinstance(linear, Convolution):
        return _convolution(tf, linear, x, bound, absolute)
    if isinstance(linear, FullyConnected):
        return _matmul(tf, linear, x, bound, absolute)
    return None


def _centred(tf, rule, value):
    """The layout of an int8 value (NumPy) minus the input zero point, float32 (exact:
    q - zp lies in [-255, 255])."""
    v = rule.layout(value)
    if rule.linear.__class__.__name__ == "FullyConnected":
        v = v.reshape(-1, v.shape[-1])
    return tf.cast(v, tf.float32) - np.float32(rule.zp_in)


def affine_interval(rule, rounding, value):
    """int64 (lower, upper) of an `IntegerAffineRule` over the int8 box `value`, the
    same as the NumPy path gives, or None where this path does not apply.

    The rounding runs once on both ends stacked, the upper end negated: with
    round-to-nearest arithmetic fl(-a - b) = -fl(a + b) and floor(x) = -ceil(-x), so
    ceil(-v_u - e - t_u) is -floor(v_u + e + t_u) of the NumPy path bit for bit (and
    floor(-v_u) is -ceil(v_u)): half the operations, each on twice the values."""
    tf = _tensorflow() if ENABLED else None
    if tf is None or rounding not in ("floor_ceil", "nearest") or value[0].size == 0:
        return None
    batch = value[0].shape[0]
    r = rule.requantization
    with tf.device("/CPU:0"):
        l, u = _centred(tf, rule, value[0]), _centred(tf, rule, value[1])
        centre, radius = l + u, u - l  # in [-510, 510]: exact in float32
        bound_c, bound_r = (float(b) for b in tf.stack(
            [tf.reduce_max(tf.abs(centre)), tf.reduce_max(tf.abs(radius))]).numpy())
        centre = _product(tf, rule, centre, bound_c)
        radius = _product(tf, rule, radius, bound_r, absolute=True)
        if centre is None or radius is None:
            return None
        # W (l + u) -+ |W| (u - l) are even integers, twice the accumulator bounds:
        # 2a = centre -+ radius + 2 bias, exact; stacked as [2a_lower, -2a_upper] =
        # sign (centre + 2 bias) - radius. (2a) * (M / 2) is the float64 product a * M
        # of the NumPy path bit for bit (M / 2 is exact, so is the real product).
        bias2 = 2.0 * rule.bias.astype(np.float64)
        sign = np.array([1.0, -1.0]).reshape((2,) + (1,) * len(centre.shape))
        acc2 = sign * (centre + bias2) - radius
        # |a| <= (max|l + u| + max|u - l|) / 2 * max_n sum_k |w_kn| + max|b|: checks that
        # pass on this bound pass on the exact largest accumulator too (no reduction).
        largest_acc = ((bound_c + bound_r) * 0.5 * rule.linear.column_l1
                       + float(np.max(np.abs(rule.bias), initial=0)))
        multiplier = r.multiplier
        shift = r.quantized[1]
        left = 2.0 ** max(int(np.max(shift, initial=0)), 0)
        largest_m = float(np.max(np.abs(multiplier), initial=0))
        if largest_acc * left > INT32_MAX or (
                rounding == "floor_ceil" and RELATIVE_TOLERANCE * largest_acc * largest_m >= 0.25):
            largest_acc = float(tf.reduce_max(tf.abs(acc2))) * 0.5  # the exact one
        if largest_acc * left > INT32_MAX:
            return None  # some accumulator may leave int32: the NumPy path masks it
        v = acc2 * (multiplier * 0.5)  # [v_lower, -v_upper]
        if rounding == "floor_ceil":
            if RELATIVE_TOLERANCE * largest_acc * largest_m >= 0.25:
                return None
            q = tf.floor(v)  # [floor(v_lower), -ceil(v_upper)]
        else:
            # round_bounds("nearest") with the fixed-point error, slack 0, same order
            # (its "+ 0.0" adds nothing to a tolerance >= +0):
            # [ceil(v_lower - e - t), -floor(v_upper + e + t)].
            error = fixed_point_error(shift)
            q = tf.math.ceil(v - error - RELATIVE_TOLERANCE * tf.abs(v))
        act_min, act_max = r.activation
        q = tf.clip_by_value(sign * q + float(r.zero_point), float(act_min), float(act_max))
        q = tf.cast(q, tf.int64).numpy().reshape(2, batch, -1, rule.channels)
    return q[0], q[1]


def affine_point(rule, kernels, value):
    """int64 output codes of an `IntegerAffineRule` on the int8 points `value` (a pair
    `(q, q)`), rounded like `KernelSimulation(kernels)`, bit for bit: the accumulators
    of the CPU product (exact, as above), the XNNPACK requantization (float32
    multiply, round half to even) in TensorFlow, the fixed-point ones in NumPy. None
    where this path does not apply."""
    tf = _tensorflow() if ENABLED else None
    if tf is None:
        return None
    batch = value[0].shape[0]
    r = rule.requantization
    with tf.device("/CPU:0"):
        x = _centred(tf, rule, value[0])
        bound = _largest(tf, x)
        acc = _product(tf, rule, x, bound)
        if acc is None:
            return None
        acc = acc + rule.bias.astype(np.float64)  # exact integers
        method = POINT_METHODS[kernels].get(r.op_name, "double")
        # |acc| <= max|x| max_n sum_k |w_kn| + max|b| (the exact maximum where that fails).
        largest = bound * rule.linear.column_l1 + float(np.max(np.abs(rule.bias), initial=0))
        left = 2.0 ** max(int(np.max(r.quantized[1], initial=0)), 0)
        if largest * left > INT32_MAX:
            largest = float(tf.reduce_max(tf.abs(acc)))
        act_min, act_max = r.activation
        if method == "xnnpack" and largest * left <= INT32_MAX:
            # float32(acc) * multiplier32, rounded half to even (np.rint): an integer
            # below 2**53 converts to the float32 that int64 -> float32 gives.
            v = tf.round(tf.cast(acc, tf.float32) * r.multiplier32.astype(np.float32))
            # |v| >= 2**24 may round when the zero point is added, but stays far
            # outside [act_min, act_max], so the clamp gives the same code.
            q = tf.clip_by_value(v + float(r.zero_point), float(act_min), float(act_max))
            out = tf.cast(q, tf.int64).numpy()
        else:
            out = requantize_exact(tf.cast(acc, tf.int64).numpy(), r.multiplier, r.zero_point,
                                   act_min, act_max, method=method,
                                   multiplier32=r.multiplier32, quantized_multiplier=r.quantized)
    out = out.reshape(batch, -1, rule.channels)
    return out, out
