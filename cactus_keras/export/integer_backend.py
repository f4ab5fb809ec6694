"""The interval step of CONV_2D and FULLY_CONNECTED on TensorFlow's CPU kernels.

The same integers as `IntervalArithmetic.accumulate` followed by its `requantize`, in
fewer, multi-threaded passes: the centred int8 bounds go into TensorFlow once, the
centre and radius products run as float32 convolutions / matrix products (one per
depth chunk the planner of `integer_linear` proves exact, the chunks added in float64),
the exact float64 accumulator bounds (W(l + u) -+ |W|(u - l)) / 2 + bias are
requantized there, and only the int8 bounds come back. The CPU kernels sum products
directly (oneDNN / Eigen: GEMM or direct loops, never Winograd or FFT), so every partial
sum stays the exact integer the plan bounds; every float64 step is the same IEEE
operation, in the same order, as the NumPy path, so the bounds are bit for bit those of
`IntervalArithmetic` (tests/test_integer_linear.py checks both paths agree).

Where the fast path's conditions do not hold (an accumulator that could leave int32, a
rounding tolerance that needs the elementwise excess, a depth step too large for
float32, another backend) `affine_interval` returns None and the NumPy path runs.

Example:

```python
bounds = affine_interval(rule, "floor_ceil", (lower, upper))  # or None
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.int8.fixed_point import INT32_MAX, fixed_point_error

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


def _products(tf, rule, centre, radius):
    """Exact float64 W centre and |W| radius (channels last), or None."""
    from cactus_keras.export.integer_linear import Convolution, FullyConnected

    linear = rule.linear
    outputs = []
    for x, absolute in ((centre, False), (radius, True)):
        if isinstance(linear, Convolution):
            strides, dilations, out_hw, pads = linear.geometry
            if max(strides) > 1 and max(dilations) > 1:
                return None
            groups = linear.tap_groups(_largest(tf, x))
            if groups is None:
                return None
            if any(p for pair in pads for p in pair):
                x = tf.pad(x, ((0, 0),) + tuple(tuple(p) for p in pads) + ((0, 0),))
            out = None
            for kernel in _constants(tf, linear, ("conv", tuple(groups), absolute),
                                     lambda: linear._group_kernels(groups, absolute)):
                part = tf.nn.convolution(x, kernel, strides=list(strides), padding="VALID",
                                         dilations=list(dilations))
                part = tf.cast(part[:, : out_hw[0], : out_hw[1]], tf.float64)
                out = part if out is None else out + part
        elif isinstance(linear, FullyConnected):
            chunks = linear.plan(_largest(tf, x))
            if chunks is None:
                return None
            weights = (linear.absolute if absolute else linear.matrix)[np.float32]
            slices = _constants(tf, linear, ("dense", tuple(chunks), absolute),
                                lambda: [weights[start:end] for start, end in chunks])
            out = None
            for (start, end), w in zip(chunks, slices):
                part = tf.cast(tf.matmul(x[:, start:end], w), tf.float64)
                out = part if out is None else out + part
        else:
            return None
        outputs.append(out)
    return outputs


def affine_interval(rule, rounding, value):
    """int64 (lower, upper) of an `IntegerAffineRule` over the int8 box `value`, the
    same as the NumPy path gives, or None where this path does not apply."""
    tf = _tensorflow() if ENABLED else None
    if tf is None or rounding not in ("floor_ceil", "nearest"):
        return None
    lower, upper = (rule.layout(v) for v in value)
    if rule.linear.__class__.__name__ == "FullyConnected":
        lower, upper = lower.reshape(-1, lower.shape[-1]), upper.reshape(-1, upper.shape[-1])
    batch = value[0].shape[0]
    r = rule.requantization
    with tf.device("/CPU:0"):
        # q - zp lies in [-255, 255]; l + u and u - l in [-510, 510]: exact in float32.
        l = tf.cast(lower, tf.float32) - np.float32(rule.zp_in)
        u = tf.cast(upper, tf.float32) - np.float32(rule.zp_in)
        products = _products(tf, rule, l + u, u - l)
        if products is None:
            return None
        centre, radius = products
        # W (l + u) -+ |W| (u - l) are even integers (exact), so are their halves.
        bias = rule.bias.astype(np.float64)
        acc_lower = (centre - radius) * 0.5 + bias
        acc_upper = (centre + radius) * 0.5 + bias
        largest_acc = max(float(tf.reduce_max(acc_upper)), -float(tf.reduce_min(acc_lower)),
                          0.0)
        multiplier = r.multiplier
        shift = r.quantized[1]
        if largest_acc * 2.0 ** max(int(np.max(shift, initial=0)), 0) > INT32_MAX:
            return None  # some accumulator may leave int32: the NumPy path masks it
        from cactus_keras.export.integer_intervals import RELATIVE_TOLERANCE

        largest = largest_acc * float(np.max(np.abs(multiplier), initial=0))
        v_lower = acc_lower * multiplier
        v_upper = acc_upper * multiplier
        if rounding == "floor_ceil":
            if RELATIVE_TOLERANCE * largest >= 0.25:
                return None
            q_lower, q_upper = tf.floor(v_lower), tf.math.ceil(v_upper)
        else:
            # round_bounds("nearest") with the fixed-point error, slack 0, same order.
            error = fixed_point_error(shift)
            t_lower = RELATIVE_TOLERANCE * tf.abs(v_lower) + 0.0
            t_upper = RELATIVE_TOLERANCE * tf.abs(v_upper) + 0.0
            q_lower = tf.math.ceil(v_lower - error - t_lower)
            q_upper = tf.floor(v_upper + error + t_upper)
        act_min, act_max = r.activation
        out = []
        for q in (q_lower, q_upper):
            q = tf.clip_by_value(q + float(r.zero_point), float(act_min), float(act_max))
            out.append(tf.cast(q, tf.int64).numpy().reshape(batch, -1, rule.channels))
    return tuple(out)
