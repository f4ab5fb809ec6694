"""The exact integer convolution of the int8 verifier against a plain int64 reference:
every stride, dilation and padding, one or several float32 tap groups, and float64."""

import itertools

import numpy as np
import pytest

from cactus_keras.export import integer_linear


def reference(x, w, strides, dilations, out_hw, pads):
    """sum over taps of the padded input's windows times the tap's weights, in int64."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilations, out_hw
    (top, bottom), (left, right) = pads
    padded = np.pad(np.asarray(x, np.int64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros((x.shape[0], oh, ow, w.shape[0]), np.int64)
    for i in range(w.shape[1]):
        for j in range(w.shape[2]):
            view = padded[:, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                          j * dw: j * dw + sw * (ow - 1) + 1: sw, :]
            out += np.einsum("nhwc,oc->nhwo", view, w[:, i, j, :])
    return out


def convolution(w, size, stride, dilation, padding):
    kh = w.shape[1]
    oh, top, bottom = integer_linear.window(size, kh, stride, dilation, padding, "test")
    geometry = ((stride, stride), (dilation, dilation), (oh, oh), ((top, bottom), (top, bottom)))
    return integer_linear.Convolution(w, *geometry, "test"), geometry


@pytest.mark.parametrize("kernel,stride,dilation,channels,padding", [
    c for c in itertools.product([1, 2, 3, 4], [1, 2, 3], [1, 2], [1, 8], [0, 1])
    if not (c[1] > 1 and c[2] > 1)])
def test_convolution_is_exact(kernel, stride, dilation, channels, padding):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation + channels)
    w = rng.integers(-127, 128, (5, kernel, kernel, channels))
    x = rng.integers(-255, 256, (3, 9, 9, channels))
    conv, geometry = convolution(w, 9, stride, dilation, padding)
    expected = reference(x, w, *geometry)
    assert np.array_equal(conv(x.astype(np.float32)), expected)
    assert np.array_equal(conv(x.astype(np.float32), absolute=True),
                          reference(x, np.abs(w), *geometry))


def test_tap_groups_keep_float32_sums_exact():
    rng = np.random.default_rng(0)
    # Extreme weights and inputs: float32 sums of all 9 taps would pass 2**24.
    w = rng.choice([-127, 127], (6, 3, 3, 128))
    x = rng.choice([-510, 510], (2, 9, 9, 128))
    conv, geometry = convolution(w, 9, 1, 1, 0)
    groups = conv.tap_groups(510)
    assert groups is not None and len(groups) > 1
    limit = integer_linear.FLOAT32_EXACT / 512
    for start, end in groups:
        assert np.abs(w[:, :, :, :].reshape(6, 9, 128)[:, start:end]).sum(axis=(1, 2)).max() < limit
    assert np.array_equal(conv(x.astype(np.float32)), reference(x, w, *geometry))


def test_a_tap_too_large_for_float32_runs_in_float64():
    w = np.full((2, 3, 3, 4096), 127)
    x = np.full((1, 4, 4, 4096), 255)
    conv, geometry = convolution(w, 4, 1, 1, 0)
    assert conv.tap_groups(255) is None
    out = conv(x.astype(np.float32))
    assert out.dtype == np.float64
    assert np.array_equal(out, reference(x, w, *geometry))


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, 0), (2, 1, 0), (1, 2, 1), (2, 2, 0)])
def test_backend_and_im2col_convolutions_agree(monkeypatch, stride, dilation, padding):
    # The Keras backend's CPU convolution (the default where there is one) and the NumPy
    # im2col product give the same exact integers, in several float32 tap groups too.
    rng = np.random.default_rng(stride * 10 + dilation)
    w = rng.choice([-127, 127], (6, 3, 3, 128))
    x = rng.choice([-510, 510], (2, 9, 9, 128)).astype(np.float32)
    conv, geometry = convolution(w, 9, stride, dilation, padding)
    assert len(conv.tap_groups(510)) > 1
    expected = reference(x, w, *geometry)
    assert np.array_equal(conv(x), expected)
    monkeypatch.setattr(integer_linear, "BACKEND_CONVOLUTION", False)
    assert np.array_equal(conv(x), expected)
    assert np.array_equal(conv(x, absolute=True), reference(x, np.abs(w), *geometry))


@pytest.mark.parametrize("fuse", [0, None], ids=["xla", "op-by-op"])
@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
def test_backend_interval_step_gives_the_numpy_bounds(monkeypatch, rounding, fuse):
    # The TensorFlow interval step of CONV_2D / FULLY_CONNECTED (XLA-compiled or op by
    # op) and the NumPy accumulate + requantize give the same integers, op by op, on a
    # real int8 file.
    import keras

    from cactus_keras.export import integer_backend, integer_ops
    from cactus_keras.export.integer_intervals import IntervalArithmetic

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused interval step runs on the TensorFlow backend")
    monkeypatch.setattr(integer_backend, "FUSE_ELEMENTS", fuse)
    graph = _small_graph()
    rng = np.random.default_rng(1)
    arithmetic = IntervalArithmetic(rounding)
    shape = (4,) + graph.entry_tensor.shape[1:]
    lower = rng.integers(-128, 100, shape)
    value = (lower, np.minimum(lower + rng.integers(0, 60, shape), 127))
    checked = 0
    for op in graph.ops:
        rule = integer_ops.integer_rule_for(graph, op)
        if op.name not in ("CONV_2D", "FULLY_CONNECTED"):
            value = rule(arithmetic, value)
            continue
        fast = integer_backend.affine_interval(rule, rounding, value)
        assert fast is not None
        slow = _numpy_path(monkeypatch, rule, arithmetic, value)
        for a, b in zip(fast, slow):
            assert a.dtype == np.int8 and np.array_equal(a.reshape(b.shape), b)
        # A weight bound too loose to rule out int32 overflow: the exact largest
        # accumulator decides instead, and the bounds are the same.
        monkeypatch.setattr(rule.linear, "column_l1", 1e12)
        exact = integer_backend.affine_interval(rule, rounding, value)
        assert all(np.array_equal(a.reshape(b.shape), b) for a, b in zip(exact, slow))
        assert not np.array_equal(slow[0], slow[1])
        value = tuple(v.reshape((4,) + graph.tensors[op.outputs[0]].shape) for v in slow)
        checked += 1
    assert checked >= 2


def _numpy_path(monkeypatch, rule, arithmetic, value):
    """The rule's output on the NumPy path (the TensorFlow steps switched off)."""
    from cactus_keras.export import integer_backend

    with monkeypatch.context() as patch:
        patch.setattr(integer_backend, "ENABLED", False)
        return rule(arithmetic, value)


def _small_graph():
    import os
    import tempfile

    import keras

    import cactus_keras
    from cactus_keras import export

    keras.utils.set_random_seed(3)
    net = cactus_keras.models.cnn5((12, 12, 1), 4)
    x = np.random.default_rng(0).uniform(0, 1, (32, 12, 12, 1)).astype(np.float32)
    path = os.path.join(tempfile.mkdtemp(), "small.tflite")
    export.to_tflite(net, path, representative_data=x)
    return export.load_integer_graph(path)


def _tensorflow_or_skip():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused steps run on the TensorFlow backend")
    import tensorflow as tf

    return tf


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, 0), (2, 1, 0), (1, 2, 1)])
def test_channel_groups_are_exact_at_the_int8_extremes(stride, dilation, padding):
    # Split by input channel, each group's float32 convolution stays below 2**24 (the
    # planner's bound, checked here) and their float64 sum is the int64 reference, bit
    # for bit, with weights and inputs at the extremes (-128/127, -510/510).
    from cactus_keras.export import integer_backend

    tf = _tensorflow_or_skip()
    rng = np.random.default_rng(stride * 10 + dilation + padding)
    w = rng.choice([-128, 127, -127], (6, 3, 3, 96))
    x = rng.choice([-510, 510, 509, -1], (2, 9, 9, 96))
    conv, geometry = convolution(w, 9, stride, dilation, padding)
    groups = conv.channel_groups(510)
    assert groups is not None and len(groups) > 1
    assert groups[0][0] == 0 and groups[-1][1] == 96
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    limit = integer_linear.FLOAT32_EXACT / 512
    for start, end in groups:
        assert np.abs(w[..., start:end]).sum(axis=(1, 2, 3)).max() < limit
    for absolute in (False, True):
        parts = integer_backend._convolution_parts(tf, conv, tf.constant(x, tf.float32), 510,
                                                   absolute)
        out = integer_backend._sum(tf, parts)
        expected = reference(x, np.abs(w) if absolute else w, *geometry)
        assert out.dtype == tf.float64 and np.array_equal(out.numpy(), expected)


def test_channel_groups_refuse_a_channel_too_large_for_float32():
    w = np.full((2, 3, 3, 2), 127)
    conv, _ = convolution(w, 4, 1, 1, 0)
    assert conv.channel_groups(2.0**24 / (9 * 127)) is None  # one channel's 9 taps
    assert conv.channel_groups(510) == [(0, 2)]


def test_dense_chunks_are_even_exact_and_match_int64():
    from cactus_keras.export import integer_backend

    tf = _tensorflow_or_skip()
    rng = np.random.default_rng(5)
    w = rng.choice([-128, 127], (3000, 7))
    x = rng.choice([-510, 510], (4, 3000))
    dense = integer_linear.FullyConnected(w, "test")
    chunks = dense.plan(510)
    sizes = [end - start for start, end in chunks]
    assert len(chunks) > 2 and max(sizes) - min(sizes) <= 8  # even, in multiples of 8
    limit = integer_linear.FLOAT32_EXACT / 512
    assert all(np.abs(w[start:end]).sum(0).max() < limit for start, end in chunks)
    out = integer_backend._sum(
        tf, integer_backend._matmul_parts(tf, dense, tf.constant(x, tf.float32), 510, False))
    assert np.array_equal(out.numpy(), x @ w)
    assert np.array_equal(dense(x.astype(np.float32)), x @ w)


@pytest.mark.parametrize("fuse", [0, None], ids=["xla", "op-by-op"])
@pytest.mark.parametrize("kernels", ["xnnpack", "builtin", "reference"])
def test_backend_point_step_gives_the_numpy_codes(monkeypatch, kernels, fuse):
    # The clean-point step of CONV_2D / FULLY_CONNECTED on TensorFlow and the NumPy
    # simulation give the same int8 codes, op by op, inputs at the int8 extremes too.
    from cactus_keras.export import integer_backend, integer_ops
    from cactus_keras.export.integer_simulation import KernelSimulation

    _tensorflow_or_skip()
    monkeypatch.setattr(integer_backend, "FUSE_ELEMENTS", fuse)
    graph = _small_graph()
    rng = np.random.default_rng(2)
    simulation = KernelSimulation(kernels)
    shape = (6,) + graph.entry_tensor.shape[1:]
    q = rng.integers(-128, 128, shape)
    q[0], q[1] = -128, 127
    value = (q, q)
    checked = 0
    for op in graph.ops:
        rule = integer_ops.integer_rule_for(graph, op)
        if op.name not in ("CONV_2D", "FULLY_CONNECTED"):
            value = rule(simulation, value)
            continue
        fast = integer_backend.affine_point(rule, kernels, value)
        assert fast is not None and fast[0] is fast[1]
        slow = _numpy_path(monkeypatch, rule, simulation, value)
        assert fast[0].dtype in (np.int8, np.int64)
        assert np.array_equal(fast[0].reshape(slow[0].shape), slow[0])
        assert len(np.unique(slow[0])) > 2  # not a saturated layer
        out = slow[0].reshape((6,) + graph.tensors[op.outputs[0]].shape)
        value = (out, out)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
def test_xla_requantization_rounds_a_times_m_as_numpy_does(monkeypatch, rounding):
    # XLA on the CPU fuses a product into a following sum (one rounding instead of
    # two). Accumulators a and multipliers M chosen so that a M - e - t lies within
    # one rounding of an integer: the bounds depend on a M being rounded on its own,
    # as the NumPy path rounds it (checked: the exact a M gives other bounds here).
    import math
    from fractions import Fraction

    from cactus_keras.export import integer_backend
    from cactus_keras.export.integer_intervals import requantize_interval
    from cactus_keras.int8.fixed_point import fixed_point_error, quantize_multiplier
    from cactus_keras.int8.rounding import RELATIVE_TOLERANCE

    tf = _tensorflow_or_skip()
    rng = np.random.default_rng(7)
    n = 4000
    k = rng.integers(-120, 120, n).astype(np.float64)
    acc = rng.integers(1, 2**20, n) * rng.choice([-1, 1], n)
    error = fixed_point_error(quantize_multiplier((k + 0.5) / acc)[1])
    if rounding == "nearest":
        target = (k + error) / (1 - RELATIVE_TOLERANCE * np.sign(k + error))
    else:
        target = k
    multiplier = np.abs(target / acc) + 1e-30  # per channel, positive
    acc = acc * np.sign(target / acc)
    monkeypatch.setattr(integer_backend, "FUSE_ELEMENTS", 0)  # compiled at once
    steps = integer_backend._Steps(tf)
    parts = [tf.constant((2 * acc)[None].astype(np.float32))]  # l + u = 2a, exact
    radius = [tf.zeros((1, n), tf.float32)]
    zero = tf.constant(0.0, tf.float64)
    limits = tf.constant(-128.0, tf.float64), tf.constant(127.0, tf.float64)
    half = tf.constant(multiplier * 0.5)
    _, shift = quantize_multiplier(multiplier)
    if rounding == "floor_ceil":
        q = steps.floor_codes(parts, radius, zero, half, zero, *limits)
    else:
        v = steps.scaled(parts, radius, zero, half)
        q = steps.nearest_codes(v, tf.constant(fixed_point_error(shift)), zero, *limits)
    lower, upper = requantize_interval(acc[None], acc[None], multiplier, 0, -128, 127,
                                       rounding=rounding)
    assert len(steps.compiled) == (1 if rounding == "floor_ceil" else 2)
    q = q.numpy()
    assert q.dtype == np.int8
    assert np.array_equal(q[0], lower) and np.array_equal(q[1], upper)
    # The data is on the edge: rounding a M exactly instead changes some bounds.
    e = fixed_point_error(shift) if rounding == "nearest" else np.zeros(n)
    exact = [Fraction(int(a)) * Fraction(m) for a, m in zip(acc[:400], multiplier[:400])]
    if rounding == "nearest":
        moved = [math.ceil(x - Fraction(err) - Fraction(RELATIVE_TOLERANCE) * abs(x))
                 for x, err in zip(exact, e)]
    else:
        moved = [math.floor(x) for x in exact]
    assert np.any(np.clip(moved, -128, 127) != lower[0, :400])


def test_steps_compile_a_signature_once_its_work_pays_for_it(monkeypatch):
    # Op by op until a signature has been given FUSE_ELEMENTS values in all, then one
    # compiled function for it (the same codes either way); another shape starts over.
    from cactus_keras.export import integer_backend

    tf = _tensorflow_or_skip()
    monkeypatch.setattr(integer_backend, "FUSE_ELEMENTS", 3 * 2 * 50 * 4)
    steps = integer_backend._Steps(tf)
    rng = np.random.default_rng(3)
    args = lambda rows: (tf.constant(rng.uniform(-300, 300, (2, rows, 4))),  # noqa: E731
                         tf.constant(np.full(4, 0.5)), tf.constant(1.0, tf.float64),
                         tf.constant(-128.0, tf.float64), tf.constant(127.0, tf.float64))
    outputs = []
    for call in range(4):
        a = args(50)
        outputs.append((steps.nearest_codes(*a).numpy(),
                        np.clip(np.stack([np.ceil(a[0][0] - 0.5 - 2.0**-20 * np.abs(a[0][0])),
                                          -np.ceil(a[0][1] - 0.5 - 2.0**-20 * np.abs(a[0][1]))])
                                + 1, -128, 127)))
        assert len(steps.compiled) == (0 if call < 2 else 1)
    steps.nearest_codes(*args(51))
    assert len(steps.compiled) == 1
    for codes, expected in outputs:
        assert codes.dtype == np.int8 and np.array_equal(codes, expected)


def test_a_verification_of_many_batches_compiles_at_its_first_batch(monkeypatch):
    # Within expect_batches(n) a signature's first call counts n times: enough work in
    # all compiles at once; the same call outside the block stays op by op.
    from cactus_keras.export import integer_backend

    tf = _tensorflow_or_skip()
    monkeypatch.setattr(integer_backend, "FUSE_ELEMENTS", 4 * 2 * 50 * 4)
    args = (tf.constant(np.ones((2, 50, 4))), tf.constant(np.full(4, 0.5)),
            tf.constant(0.0, tf.float64), tf.constant(-128.0, tf.float64),
            tf.constant(127.0, tf.float64))
    steps = integer_backend._Steps(tf)
    steps.nearest_codes(*args)
    assert not steps.compiled
    steps = integer_backend._Steps(tf)
    with integer_backend.expect_batches(4):
        steps.nearest_codes(*args)
    assert len(steps.compiled) == 1
