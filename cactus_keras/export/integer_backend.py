"""The interval and clean-point steps of CONV_2D and FULLY_CONNECTED on TensorFlow's CPU
kernels.

The same integers as `IntervalArithmetic.accumulate` followed by its `requantize` (and as
`KernelSimulation`'s accumulate and requantize on points), in fewer, multi-threaded
passes: the centred int8 bounds go into TensorFlow once, the centre and radius products
run as float32 convolutions / matrix products (convolutions split by input channel,
matrix products by depth, into the groups the planner of `integer_linear` proves exact,
the groups added in float64), the exact float64 accumulator bounds
(W(l + u) -+ |W|(u - l)) / 2 + bias are requantized there (both ends in one stacked
pass), and only the int8 bounds come back, as int8 arrays (`IntegerProgram` hands them
to the next affine rule as they are). The elementwise steps around the products (the
centring, the exact accumulators, the rounding) run as XLA-compiled loops once their
shapes have had enough work to pay for the compilation (`_Steps`). The CPU kernels sum
products directly (oneDNN / Eigen: GEMM or direct loops, never Winograd or FFT), so
every partial sum stays the exact integer the plan bounds; every float64 step is the
same IEEE operation as the NumPy path's (`_Steps` says how the compiled ones stay so),
so the bounds are bit for bit those of `IntervalArithmetic`, and the clean points'
codes those of `KernelSimulation` (tests/test_integer_linear.py checks both paths
agree).

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

import contextlib
import functools
import os

import numpy as np

from cactus_keras.int8.fixed_point import INT32_MAX, fixed_point_error
from cactus_keras.int8.rounding import RELATIVE_TOLERANCE
from cactus_keras.export.integer_simulation import POINT_METHODS, requantize_exact

# False: always the NumPy path (the reference the tests compare against).
ENABLED = True
# The elementwise steps run as XLA-compiled loops once a signature has been given this
# many values in all (`_Steps`); 0: always, None: never (the same bits, op by op).
# 2**21: a verification of 2,000 images of the smallest zoo network (cnn3) compiles;
# a compression search's candidate (1,000 validation images) compiles its largest
# layers only.
FUSE_ELEMENTS = 2**21
_TF = {}


def _tensorflow():
    """TensorFlow when it is the Keras backend (None otherwise)."""
    if "tf" not in _TF:
        import keras

        tf = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
        _TF["tf"] = tf
        _TF["pid"] = os.getpid()
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


def _convolution_parts(tf, linear, x, bound, absolute):
    """The float32 parts (each exact) of the convolution of the float32 integers x
    (|x| <= bound), whose float64 sum is exact, or None."""
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
            return [convolve(x, kernels[0])]
        return [convolve(x[..., start:end], kernel)
                for (start, end), kernel in zip(channels, kernels)]
    groups = linear.tap_groups(bound)
    if groups is None:
        return None
    kernels = _constants(tf, linear, ("conv", tuple(groups), absolute),
                         lambda: linear._group_kernels(groups, absolute))
    return [convolve(x, kernel) for kernel in kernels]


def _matmul_parts(tf, linear, x, bound, absolute):
    """The float32 parts (each exact) of x @ W of the float32 integers x (|x| <= bound),
    whose float64 sum is exact, or None."""
    chunks = linear.plan(bound)
    if chunks is None:
        return None
    weights = (linear.absolute if absolute else linear.matrix)[np.float32]
    slices = _constants(tf, linear, ("dense", tuple(chunks), absolute),
                        lambda: [weights[start:end] for start, end in chunks])
    if len(chunks) == 1:
        return [tf.matmul(x, slices[0])]
    return [tf.matmul(x[:, start:end], w) for (start, end), w in zip(chunks, slices)]


def _parts(tf, rule, x, bound, absolute=False):
    """The float32 parts of W x (or |W| x), channels last, of float32 integers
    |x| <= bound, each exact and their float64 sum exact, or None where this path does
    not apply."""
    from cactus_keras.export.integer_linear import Convolution, FullyConnected

    linear = rule.linear
    if isinstance(linear, Convolution):
        return _convolution_parts(tf, linear, x, bound, absolute)
    if isinstance(linear, FullyConnected):
        return _matmul_parts(tf, linear, x, bound, absolute)
    return None


class _Steps:
    """The elementwise steps around the products, as TensorFlow functions of tensors.

    `steps.name(*args)` runs step `name` as one XLA-compiled loop (a dozen passes over
    float64 arrays become one) once the work it has been given at that signature (the
    arguments' shapes and dtypes) reaches `FUSE_ELEMENTS`: the calls so far times the
    values of one call, the first call counting as the batches the verification expects
    (`expect_batches`). A compilation (0.06 to 0.16 s on the idle 2-core machine,
    `tools/bench_compile_cost.py`) costs about what the op-by-op steps cost on six to
    sixteen million values, so it pays off on large tensors at once
    and on small ones only when their shape recurs (a verification over many batches).
    Until then, and in a process forked after TensorFlow started (XLA's first
    compilation there can wait forever on a lock a thread of the parent held at the
    fork), the same operations run one by one. One compiled function per signature: no
    retracing.

    Both give the same bits as the NumPy path. XLA on the CPU contracts a product
    followed by a sum into a fused multiply-add, rounded once instead of twice; the
    steps are split so that every product feeding a sum is exact (by +-1 or by
    `RELATIVE_TOLERANCE`, a power of two), and the one inexact product, a M, ends a step
    (`scaled`): its value is stored and read back, rounded as NumPy rounds it, before the
    rounding bounds subtract from it. tests/test_integer_linear.py checks the bits on
    values where a M rounded otherwise gives other bounds.
    """

    NAMES = ("centred", "scaled", "floor_codes", "nearest_codes", "xnnpack_codes",
             "accumulators")

    def __init__(self, tf):
        self.tf = tf
        self.compiled = {}  # (name, signature) -> the XLA-compiled function
        self.work = {}  # (name, signature) -> values given so far
        for name in self.NAMES:
            setattr(self, name, functools.partial(self._run, name))

    def _run(self, name, *args):
        flat = [a for arg in args for a in (arg if isinstance(arg, list) else [arg])]
        key = (name, tuple((tuple(a.shape), str(a.dtype)) for a in flat))
        if len(self.work) > 4096:  # a long search's shapes: forget the old ones
            self.work.clear()
        values = max(int(np.prod(a.shape)) for a in flat)
        # A signature's first call counts the batches its caller expects (`expect_batches`).
        calls = 1 if key in self.work else _TF.get("expected_batches", 1)
        self.work[key] = self.work.get(key, 0) + values * calls
        fn = getattr(self, "_" + name)
        if (FUSE_ELEMENTS is None or self.work[key] < FUSE_ELEMENTS
                or os.getpid() != _TF.get("pid")):
            return fn(*args)
        if key not in self.compiled:
            # A partial of its own: TensorFlow counts retracing per function (per code
            # object, which every signature's function would share), and one trace
            # per signature is the design, not the excessive retracing it warns of.
            self.compiled[key] = self.tf.function(functools.partial(fn), jit_compile=True)
        return self.compiled[key](*args)

    def _centred(self, lower, upper, zero_point):
        """l + u and u - l of the centred int8 box (exact float32), and their largest
        magnitudes."""
        tf = self.tf
        lower = tf.cast(lower, tf.float32) - zero_point
        upper = tf.cast(upper, tf.float32) - zero_point
        centre, radius = lower + upper, upper - lower
        return centre, radius, tf.stack([tf.reduce_max(tf.abs(centre)),
                                         tf.reduce_max(tf.abs(radius))])

    def _doubled(self, centre_parts, radius_parts, bias2):
        """[2 a_lower, -2 a_upper] = +-(W(l + u) + 2 b) - |W|(u - l), stacked: exact
        float64 integers."""
        tf = self.tf
        centre = _sum(tf, centre_parts) + bias2
        radius = _sum(tf, radius_parts)
        return tf.stack([centre - radius, -centre - radius])

    def _scaled(self, centre_parts, radius_parts, bias2, half_multiplier):
        """[v_lower, -v_upper] = (2a) (M / 2): the float64 product a M of the NumPy path
        bit for bit (M / 2 is exact, so is the real product)."""
        return self._doubled(centre_parts, radius_parts, bias2) * half_multiplier

    def _accumulators(self, centre_parts, radius_parts, bias2):
        """max |a| over the box, exact."""
        tf = self.tf
        return tf.reduce_max(tf.abs(self._doubled(centre_parts, radius_parts, bias2))) * 0.5

    def _codes(self, q, zero_point, act_min, act_max):
        """[q_0, -q_1] + zp (exact integers), clamped to the activation range (within
        int8), as int8."""
        tf = self.tf
        q = tf.stack([q[0], -q[1]]) + zero_point
        return tf.cast(tf.clip_by_value(q, act_min, act_max), tf.int8)

    def _floor_codes(self, centre_parts, radius_parts, bias2, half_multiplier, zero_point,
                     act_min, act_max):
        """floor_ceil: [floor(v_lower), ceil(v_upper)] + zp, clamped: floor of the stacked
        [v_lower, -v_upper] (floor(-v) = -ceil(v)); no sum follows the product a M."""
        v = self._scaled(centre_parts, radius_parts, bias2, half_multiplier)
        return self._codes(self.tf.floor(v), zero_point, act_min, act_max)

    def _nearest_codes(self, v, error, zero_point, act_min, act_max):
        """nearest: [ceil(v_lower - e - t), floor(v_upper + e + t)] + zp, clamped, with
        t = RELATIVE_TOLERANCE |v| (exact: a power of two), `round_bounds`' order: with
        round-to-nearest arithmetic fl(-a - b) = -fl(a + b), so the stacked upper end is
        the negated bound bit for bit."""
        tf = self.tf
        q = tf.math.ceil(v - error - RELATIVE_TOLERANCE * tf.abs(v))
        return self._codes(q, zero_point, act_min, act_max)

    def _xnnpack_codes(self, parts, bias, multiplier32, zero_point, act_min, act_max):
        """XNNPACK's requantization of the exact accumulators: float32(a) * multiplier
        (float32), rounded half to even, plus zp, clamped, as int8. |v| >= 2**24 may
        round when the zero point is added, but stays far outside [act_min, act_max],
        so the clamp gives the same code."""
        tf = self.tf
        acc = _sum(tf, parts) + bias  # exact integers below 2**53
        v = tf.round(tf.cast(acc, tf.float32) * multiplier32)
        return tf.cast(tf.clip_by_value(v + zero_point, act_min, act_max), tf.int8)


@contextlib.contextmanager
def expect_batches(count):
    """Within the block, a step's first call at a signature counts as `count` calls: the
    batches of a verification, so that its steps compile at once when the whole
    verification's work pays for it (and the few batches of a small one never do)."""
    previous = _TF.get("expected_batches", 1)
    _TF["expected_batches"] = max(int(count), 1)
    try:
        yield
    finally:
        _TF["expected_batches"] = previous


def _steps(tf):
    """The `_Steps` of this process (made once: it keeps the compiled functions)."""
    if "steps" not in _TF:
        _TF["steps"] = _Steps(tf)
    return _TF["steps"]


def _layout(rule, value):
    """The layout of an int8 value (NumPy) the linear map takes."""
    v = rule.layout(value)
    if rule.linear.__class__.__name__ == "FullyConnected":
        v = v.reshape(-1, v.shape[-1])
    return v


def affine_interval(rule, rounding, value):
    """int8 (lower, upper) of an `IntegerAffineRule` over the int8 box `value`, the
    same integers as the NumPy path gives, or None where this path does not apply.

    The rounding runs once on both ends stacked, the upper end negated: with
    round-to-nearest arithmetic fl(-a - b) = -fl(a + b) and floor(x) = -ceil(-x), so
    ceil(-v_u - e - t_u) is -floor(v_u + e + t_u) of the NumPy path bit for bit (and
    floor(-v_u) is -ceil(v_u)): half the operations, each on twice the values."""
    tf = _tensorflow() if ENABLED else None
    if tf is None or rounding not in ("floor_ceil", "nearest") or value[0].size == 0:
        return None
    batch = value[0].shape[0]
    r = rule.requantization
    steps = _steps(tf)
    with tf.device("/CPU:0"):
        centre, radius, bounds = steps.centred(_layout(rule, value[0]), _layout(rule, value[1]),
                                               tf.constant(rule.zp_in, tf.float32))
        bound_c, bound_r = (float(b) for b in bounds.numpy())  # l + u, u - l: |.| <= 510
        centre = _parts(tf, rule, centre, bound_c)
        radius = _parts(tf, rule, radius, bound_r, absolute=True)
        if centre is None or radius is None:
            return None
        bias2 = tf.constant(2.0 * rule.bias.astype(np.float64))
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
            largest_acc = float(steps.accumulators(centre, radius, bias2))  # the exact one
        if largest_acc * left > INT32_MAX:
            return None  # some accumulator may leave int32: the NumPy path masks it
        if rounding == "floor_ceil" and RELATIVE_TOLERANCE * largest_acc * largest_m >= 0.25:
            return None  # the elementwise tolerance excess: the NumPy path
        act_min, act_max = (tf.constant(float(a), tf.float64) for a in r.activation)
        zero_point = tf.constant(float(r.zero_point), tf.float64)
        half = tf.constant(multiplier * 0.5, tf.float64)
        if rounding == "floor_ceil":
            q = steps.floor_codes(centre, radius, bias2, half, zero_point, act_min, act_max)
        else:
            v = steps.scaled(centre, radius, bias2, half)  # [v_lower, -v_upper]
            error = tf.constant(fixed_point_error(shift), tf.float64)
            q = steps.nearest_codes(v, error, zero_point, act_min, act_max)
        q = q.numpy().reshape(2, batch, -1, rule.channels)
    return q[0], q[1]


def affine_point(rule, kernels, value):
    """Output codes of an `IntegerAffineRule` on the int8 points `value` (a pair
    `(q, q)`), rounded like `KernelSimulation(kernels)`, bit for bit: the accumulators
    of the CPU product (exact, as above), the XNNPACK requantization (float32
    multiply, round half to even) in TensorFlow, the fixed-point ones in NumPy. None
    where this path does not apply."""
    tf = _tensorflow() if ENABLED else None
    if tf is None:
        return None
    batch = value[0].shape[0]
    r = rule.requantization
    steps = _steps(tf)
    with tf.device("/CPU:0"):
        x = tf.cast(_layout(rule, value[0]), tf.float32) - np.float32(rule.zp_in)
        bound = _largest(tf, x)
        parts = _parts(tf, rule, x, bound)
        if parts is None:
            return None
        bias = tf.constant(rule.bias.astype(np.float64))
        method = POINT_METHODS[kernels].get(r.op_name, "double")
        # |acc| <= max|x| max_n sum_k |w_kn| + max|b| (the exact maximum where that fails).
        largest = bound * rule.linear.column_l1 + float(np.max(np.abs(rule.bias), initial=0))
        left = 2.0 ** max(int(np.max(r.quantized[1], initial=0)), 0)
        act_min, act_max = r.activation
        if largest * left > INT32_MAX or method != "xnnpack":
            acc = _sum(tf, parts) + bias  # exact integers
            if largest * left > INT32_MAX:
                largest = float(tf.reduce_max(tf.abs(acc)))
        if method == "xnnpack" and largest * left <= INT32_MAX:
            out = steps.xnnpack_codes(
                parts, bias, tf.constant(r.multiplier32.astype(np.float32)),
                tf.constant(float(r.zero_point), tf.float32),
                tf.constant(float(act_min), tf.float32),
                tf.constant(float(act_max), tf.float32)).numpy()
        else:
            out = requantize_exact(tf.cast(acc, tf.int64).numpy(), r.multiplier, r.zero_point,
                                   act_min, act_max, method=method,
                                   multiplier32=r.multiplier32, quantized_multiplier=r.quantized)
    out = out.reshape(batch, -1, rule.channels)
    return out, out
