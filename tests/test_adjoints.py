"""Every affine rule is its layer: forward, adjoint and |map| checked on random data.

For each case a tiny model is built around one layer, the layer's node is taken from
`parse_network(model).nodes`, and with random `x` and random coefficients `A` of shape
(batch, specs, *output_shape) we check

* `rule.forward(x) == layer(x)` (the decomposition `L(x) + offset` is the layer),
* `sum(A * L(x)) == sum_k sum(L_k^T(A) * x_k)` per (batch, spec) (the adjoint),
* `abs_linear` is the map with absolute weights: against the Jacobian `J` of `L`
  (probed with basis vectors), `abs_linear(r) == r @ |J|`, and for r >= 0
  `abs_linear(r) >= |linear(r)|`, with equality for layers with non-negative weights,
* the offset term of the backward pass is `sum(A * offset)`, and the interval of a box
  is the exact one, `J c + b +- |J| r`.
"""

import functools
import itertools
import zlib

import keras
import numpy as np
import pytest
from keras import layers, ops

from cactus_keras import bounds
from cactus_keras.bounds.propagation import _offset_term
from cactus_keras.bounds.rules import AffineRule

BATCH = 2
SPECS = 3


def _randomize(model, seed):
    """Random weights (biases included, so offsets are tested), random BN statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            shape = layer.moving_mean.shape
            values = []
            if layer.scale:
                values.append(rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape))
            if layer.center:
                values.append(rng.normal(0, 0.5, shape))
            values += [rng.normal(0, 0.5, shape), rng.uniform(0.3, 2.0, shape)]
            layer.set_weights([v.astype("float32") for v in values])
        elif isinstance(layer, layers.Normalization):
            continue
        elif layer.weights:
            values = [rng.normal(0, 1.0, w.shape).astype("float32") for w in layer.get_weights()]
            for v in values:
                if v.size >= 2:  # mixed signs in every kernel, however small
                    v.flat[0], v.flat[1] = -abs(v.flat[0]), abs(v.flat[1])
            layer.set_weights(values)
    return model


# ---------------------------------------------------------------------------- cases
# Each case builds (inputs, target_layer, outputs): the layer under test applied to
# one or more values computed from a single model input. `nonneg` marks layers whose
# linear map has non-negative weights (|L| == L).


class Case:
    def __init__(self, id, build, nonneg=False):
        self.id = id
        self.build = build
        self.nonneg = nonneg


def _single(layer_fn, in_shape, nonneg=False, id=None):
    def build():
        inputs = keras.Input(in_shape)
        layer = layer_fn()
        return inputs, layer, layer(inputs)

    return Case(id, build, nonneg)


def _conv_cases():
    cases = []
    conv = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}
    # Conv1D: every kernel 1..5, stride 1/2/3, both paddings, odd and even sizes.
    for k, s, p, n in itertools.product(range(1, 6), (1, 2, 3), ("same", "valid"), (7, 8)):
        cases.append(_single(
            functools.partial(layers.Conv1D, 2, k, strides=s, padding=p), (n, 3),
            id=f"conv1d-k{k}-s{s}-{p}-n{n}",
        ))
    # Conv2D: square and non-square kernels (even and odd), non-square inputs.
    for k, s, p, n in itertools.product(((2, 2), (3, 3), (4, 1), (5, 2)), (1, 2, 3), ("same", "valid"), ((7, 8), (8, 5))):
        cases.append(_single(
            functools.partial(layers.Conv2D, 2, k, strides=s, padding=p), (*n, 2),
            id=f"conv2d-k{k[0]}x{k[1]}-s{s}-{p}-n{n[0]}x{n[1]}",
        ))
    # Mixed strides per axis.
    for p in ("same", "valid"):
        cases.append(_single(
            functools.partial(layers.Conv2D, 2, (3, 2), strides=(2, 3), padding=p), (8, 7, 2),
            id=f"conv2d-k3x2-s2x3-{p}",
        ))
    # Conv3D: a few kernels and strides.
    for k, s, p in itertools.product((2, 3), (1, 2, 3), ("same", "valid")):
        cases.append(_single(
            functools.partial(layers.Conv3D, 2, k, strides=s, padding=p), (5, 6, 4, 2),
            id=f"conv3d-k{k}-s{s}-{p}",
        ))
    # Dilation 2 (stride 1).
    for d, k, p, n in itertools.product((1, 2, 3), (2, 3), ("same", "valid"), (7, 8)):
        shape = {1: (n, 2), 2: (n, n - 1, 2), 3: (n - 1, 5, n - 2, 1)}[d]
        cases.append(_single(
            functools.partial(conv[d], 2, k, dilation_rate=2, padding=p), shape,
            id=f"conv{d}d-k{k}-dil2-{p}-n{n}",
        ))
    # No bias: offset is None.
    cases.append(_single(
        functools.partial(layers.Conv2D, 3, 3, use_bias=False, padding="same"), (5, 5, 2),
        id="conv2d-nobias",
    ))
    # channels_first (TensorFlow on CPU cannot run it; see _check_channels_first). The
    # width (9) keeps every output's last axis apart from the 3 filters: a layer with as
    # many filters as that axis is refused (test_channels_first_conv_with_as_many_...).
    for k, s, p in itertools.product((2, 3), (1, 2), ("same", "valid")):
        cases.append(_single(
            functools.partial(layers.Conv2D, 3, k, strides=s, padding=p, data_format="channels_first"),
            (2, 7, 9), id=f"conv2d-channels_first-k{k}-s{s}-{p}",
        ))
    cases.append(_single(
        functools.partial(layers.Conv1D, 3, 3, strides=2, padding="same", data_format="channels_first"),
        (2, 7), id="conv1d-channels_first",
    ))
    return cases


def _dense_cases():
    return [
        _single(functools.partial(layers.Dense, 4), (5,), id="dense-2d"),
        _single(functools.partial(layers.Dense, 4), (3, 5), id="dense-3d"),
        _single(functools.partial(layers.Dense, 2), (2, 3, 5), id="dense-4d"),
        _single(functools.partial(layers.Dense, 3, use_bias=False), (5,), id="dense-nobias"),
    ]


def _pooling_cases():
    cases = []
    for q, s, p, n in itertools.product((2, 3), (1, 2, 3), ("same", "valid"), (7, 8)):
        cases.append(_single(
            functools.partial(layers.AveragePooling1D, q, strides=s, padding=p), (n, 2),
            nonneg=True, id=f"avgpool1d-q{q}-s{s}-{p}-n{n}",
        ))
    for q, s, p, n in itertools.product((2, 3), (1, 2, 3), ("same", "valid"), ((7, 8), (6, 5))):
        cases.append(_single(
            functools.partial(layers.AveragePooling2D, q, strides=s, padding=p), (*n, 2),
            nonneg=True, id=f"avgpool2d-q{q}-s{s}-{p}-n{n[0]}x{n[1]}",
        ))
    for p in ("same", "valid"):
        cases.append(_single(
            functools.partial(layers.AveragePooling2D, (3, 2), strides=(1, 2), padding=p), (7, 6, 2),
            nonneg=True, id=f"avgpool2d-q3x2-s1x2-{p}",
        ))
        cases.append(_single(
            functools.partial(layers.AveragePooling2D, 2, padding=p, data_format="channels_first"),
            (3, 7, 6), nonneg=True, id=f"avgpool2d-channels_first-{p}",
        ))
        cases.append(_single(
            functools.partial(layers.AveragePooling3D, 2, padding=p), (5, 4, 3, 2),
            nonneg=True, id=f"avgpool3d-{p}",
        ))
    for keep in (False, True):
        cases += [
            _single(functools.partial(layers.GlobalAveragePooling1D, keepdims=keep), (7, 3),
                    nonneg=True, id=f"gap1d-keepdims{keep}"),
            _single(functools.partial(layers.GlobalAveragePooling2D, keepdims=keep), (5, 4, 3),
                    nonneg=True, id=f"gap2d-keepdims{keep}"),
            _single(functools.partial(layers.GlobalAveragePooling2D, keepdims=keep, data_format="channels_first"),
                    (3, 5, 4), nonneg=True, id=f"gap2d-channels_first-keepdims{keep}"),
            _single(functools.partial(layers.GlobalAveragePooling3D, keepdims=keep), (3, 4, 2, 2),
                    nonneg=True, id=f"gap3d-keepdims{keep}"),
        ]
    return cases


def _reshape_cases():
    return [
        _single(layers.Flatten, (4, 3, 2), nonneg=True, id="flatten"),
        _single(functools.partial(layers.Flatten, data_format="channels_first"), (4, 3, 2),
                nonneg=True, id="flatten-channels_first-3d"),
        _single(functools.partial(layers.Flatten, data_format="channels_first"), (3, 5),
                nonneg=True, id="flatten-channels_first-2d"),
        _single(functools.partial(layers.Flatten, data_format="channels_first"), (6,),
                nonneg=True, id="flatten-channels_first-1d"),
        _single(functools.partial(layers.Reshape, (6, 4)), (4, 3, 2), nonneg=True, id="reshape"),
        _single(functools.partial(layers.Reshape, (-1, 2)), (4, 3), nonneg=True, id="reshape-minus1"),
        _single(functools.partial(layers.Permute, (2, 1)), (4, 3), nonneg=True, id="permute-21"),
        _single(functools.partial(layers.Permute, (3, 1, 2)), (4, 3, 2), nonneg=True, id="permute-312"),
        _single(functools.partial(layers.Permute, (2, 3, 1)), (4, 3, 2), nonneg=True, id="permute-231"),
        _single(functools.partial(layers.ZeroPadding1D, (1, 2)), (4, 3), nonneg=True, id="zeropad1d"),
        _single(functools.partial(layers.ZeroPadding2D, ((1, 2), (0, 1))), (4, 3, 2), nonneg=True,
                id="zeropad2d"),
        _single(functools.partial(layers.ZeroPadding2D, 1, data_format="channels_first"), (2, 4, 3),
                nonneg=True, id="zeropad2d-channels_first"),
        _single(functools.partial(layers.ZeroPadding3D, ((0, 1), (1, 0), (2, 1))), (3, 2, 4, 2),
                nonneg=True, id="zeropad3d"),
        _single(functools.partial(layers.Cropping1D, (1, 2)), (6, 3), nonneg=True, id="crop1d"),
        _single(functools.partial(layers.Cropping2D, ((1, 0), (0, 2))), (4, 5, 2), nonneg=True,
                id="crop2d"),
        _single(functools.partial(layers.Cropping2D, 1, data_format="channels_first"), (2, 4, 5),
                nonneg=True, id="crop2d-channels_first"),
        _single(functools.partial(layers.Cropping3D, ((0, 1), (1, 0), (1, 1))), (3, 2, 4, 2),
                nonneg=True, id="crop3d"),
    ]


def _elementwise_cases():
    return [
        _single(layers.BatchNormalization, (5,), id="batchnorm-2d"),
        _single(layers.BatchNormalization, (4, 3, 5), id="batchnorm-4d"),
        _single(functools.partial(layers.BatchNormalization, axis=1), (4, 3, 5), id="batchnorm-axis1"),
        _single(functools.partial(layers.BatchNormalization, axis=2), (4, 3, 5), id="batchnorm-axis2"),
        _single(functools.partial(layers.BatchNormalization, center=False, scale=False), (4, 3),
                nonneg=True, id="batchnorm-nocenter-noscale"),
        _single(functools.partial(layers.Rescaling, -0.5, offset=0.3), (4, 3), id="rescaling-offset"),
        _single(functools.partial(layers.Rescaling, 1 / 255.0), (4, 3), nonneg=True, id="rescaling"),
        _single(functools.partial(layers.Normalization, mean=[0.5, -1.0, 2.0], variance=[0.04, 1.0, 9.0]),
                (4, 3), nonneg=True, id="normalization"),
        _single(functools.partial(layers.Normalization, mean=[0.5, -1.0, 2.0], variance=[0.04, 1.0, 9.0], invert=True),
                (4, 3), nonneg=True, id="normalization-invert"),
        _single(functools.partial(layers.Normalization, axis=1, mean=[1.0, 2.0, 3.0, 4.0], variance=[1.0, 4.0, 0.25, 2.0]),
                (4, 3), nonneg=True, id="normalization-axis1"),
        _single(functools.partial(layers.Dropout, 0.5), (4, 3), nonneg=True, id="dropout"),
        _single(functools.partial(layers.GaussianNoise, 0.3), (4, 3), nonneg=True, id="gaussian-noise"),
        _single(functools.partial(layers.SpatialDropout1D, 0.3), (4, 3), nonneg=True, id="spatial-dropout"),
    ]


def _merge(layer_fn, branches, nonneg=False, id=None, in_shape=(4, 6)):
    """`branches` maps the model input to the layer's inputs."""

    def build():
        inputs = keras.Input(in_shape)
        xs = branches(inputs)
        layer = layer_fn()
        return inputs, layer, layer(xs)

    return Case(id, build, nonneg)


def _merge_cases():
    two = lambda x: [layers.Dense(3)(x), layers.Dense(3)(x)]  # noqa: E731
    three = lambda x: [layers.Dense(3)(x), layers.Dense(3)(x), layers.Dense(3)(x)]  # noqa: E731
    # The same value twice: the adjoint sums both inputs' coefficients.
    same = lambda x: [x, x]  # noqa: E731
    # A (1, 3) value broadcast against (4, 3).
    broadcast = lambda x: [  # noqa: E731
        layers.Dense(3)(x),
        layers.Dense(3)(layers.GlobalAveragePooling1D(keepdims=True)(x)),
    ]
    # A (3,) value against (4, 3): Keras expands the lower rank at axis 1.
    lower_rank = lambda x: [  # noqa: E731
        layers.Dense(3)(x),
        layers.Dense(3)(layers.GlobalAveragePooling1D()(x)),
    ]
    return [
        _merge(layers.Add, lower_rank, nonneg=True, id="add-lower-rank"),
        _merge(layers.Add, two, nonneg=True, id="add"),
        _merge(layers.Add, three, nonneg=True, id="add-3"),
        _merge(layers.Add, same, nonneg=True, id="add-same-value"),
        _merge(layers.Add, broadcast, nonneg=True, id="add-broadcast"),
        _merge(layers.Subtract, two, id="subtract"),
        _merge(layers.Subtract, broadcast, id="subtract-broadcast"),
        _merge(layers.Average, two, nonneg=True, id="average"),
        _merge(layers.Average, three, nonneg=True, id="average-3"),
        _merge(functools.partial(layers.Concatenate, axis=-1),
               lambda x: [layers.Dense(3)(x), x, layers.Dense(2)(x)], nonneg=True, id="concatenate-axis-1"),
        # (8, 3) and (4, 3) along axis 1.
        _merge(functools.partial(layers.Concatenate, axis=1),
               lambda x: [layers.Reshape((8, 3))(x), layers.Dense(3)(x)], nonneg=True, id="concatenate-axis1"),
        _merge(functools.partial(layers.Concatenate, axis=-2),
               lambda x: [layers.Reshape((8, 3))(x), layers.Dense(3)(x)], nonneg=True, id="concatenate-axis-2"),
        _merge(functools.partial(layers.Concatenate, axis=1), lambda x: [x, x], nonneg=True,
               id="concatenate-same-value", in_shape=(6,)),
    ]


CASES = _dense_cases() + _conv_cases() + _pooling_cases() + _reshape_cases() + _elementwise_cases() + _merge_cases()
assert len({c.id for c in CASES}) == len(CASES)
PARAMS = [pytest.param(c, id=c.id) for c in CASES]


@functools.lru_cache(maxsize=None)
def _channels_first_unavailable():
    """Why the backend cannot run channels_first conv / pooling here, or None.

    Probed once with known-good shapes, so that a failure of a rule under test is never
    mistaken for a missing backend kernel (TensorFlow's CPU kernels historically lacked
    NCHW convolutions; Keras 3 now works around it).
    """
    x = ops.ones((1, 2, 5, 4))
    kernel = ops.ones((2, 2, 2, 3))
    try:
        ops.conv(x, kernel, strides=2, padding="same", data_format="channels_first")
        ops.conv_transpose(ops.ones((1, 3, 3, 2)), kernel, strides=2, padding="same", data_format="channels_first")
        ops.average_pool(x, 2, padding="same", data_format="channels_first")
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return None


@functools.lru_cache(maxsize=None)
def _setup(case):
    """The layer, its rule and parameters, and random inputs and coefficients."""
    keras.utils.set_random_seed(7)
    inputs, layer, out = case.build()
    if len(out.shape) != 2:
        out = layers.Flatten()(out)
    model = _randomize(keras.Model(inputs, out), seed=zlib.crc32(case.id.encode()))
    graph = bounds.parse_network(model)
    nodes = [n for n in graph.nodes if n.rule.layer is layer]
    assert len(nodes) == 1, nodes
    node = nodes[0]
    assert isinstance(node.rule, AffineRule), type(node.rule)
    rule = node.rule
    params = rule.parameters(None, False)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + 1)
    xs = [rng.normal(0, 1, (BATCH, *s)).astype("float32") for s in rule.input_shapes]
    out_shape = tuple(layer.compute_output_shape(
        [(None, *s) for s in rule.input_shapes] if len(xs) > 1 else (None, *rule.input_shapes[0])
    )[1:])
    a = rng.normal(0, 1, (BATCH, SPECS, *out_shape)).astype("float32")
    return layer, rule, params, xs, a, out_shape


def _get(case):
    if "channels_first" in case.id and case.id.startswith(("conv", "avgpool")):
        reason = _channels_first_unavailable()
        if reason:
            pytest.skip(f"the backend on this device refuses channels_first convolution ({reason})")
    return _setup(case)


def _call_layer(layer, xs):
    return layer(xs if len(xs) > 1 else xs[0], training=False)


def _np(x):
    return ops.convert_to_numpy(x)


def _per_spec_sum(t):
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


@pytest.mark.parametrize("case", PARAMS)
def test_forward_is_the_layer(case):
    layer, rule, params, xs, a, out_shape = _get(case)

    expected = _np(_call_layer(layer, xs))
    got = _np(rule.forward(xs, params, training=False))
    affine = _np(rule.affine(xs, params))
    assert got.shape == expected.shape == (BATCH, *out_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(affine, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", PARAMS)
def test_transpose_is_the_adjoint(case):
    layer, rule, params, xs, a, out_shape = _get(case)

    lx = _np(rule.linear(xs, params))
    transposed = [_np(t) for t in rule.transpose(ops.convert_to_tensor(a), params)]
    assert len(transposed) == len(xs)
    lhs = _per_spec_sum(a * lx[:, None])
    rhs = 0.0
    for t, x in zip(transposed, xs):
        # Exactly the input's shape: a broadcastable shape would hide a wrong adjoint.
        assert t.shape == (BATCH, SPECS, *x.shape[1:])
        rhs = rhs + _per_spec_sum(t * x[:, None])
    np.testing.assert_allclose(rhs, lhs, rtol=1e-4, atol=1e-4 * np.abs(a).sum() / BATCH / SPECS)


def _jacobians(rule, params, xs):
    """J_k of shape (in_size_k, out_size): row i is L applied to basis vector e_i of
    input k (all other inputs zero)."""
    result = []
    for k, x in enumerate(xs):
        size = int(np.prod(x.shape[1:]))
        basis = np.eye(size, dtype="float32").reshape(size, *x.shape[1:])
        inputs = [basis if j == k else np.zeros((size, *y.shape[1:]), "float32") for j, y in enumerate(xs)]
        result.append(_np(rule.linear(inputs, params)).reshape(size, -1))
    return result


@pytest.mark.parametrize("case", PARAMS)
def test_abs_linear_has_absolute_weights(case):
    layer, rule, params, xs, a, out_shape = _get(case)
    rng = np.random.default_rng(5)
    rs = [np.abs(x) * rng.uniform(0, 1, x.shape).astype("float32") for x in xs]

    abs_l = _np(rule.abs_linear(rs, params))
    lin = _np(rule.linear(rs, params))
    jacobians = _jacobians(rule, params, xs)
    assert abs_l.shape == lin.shape == (BATCH, *out_shape)
    tol = 1e-5 * (1 + np.abs(abs_l))
    assert np.all(abs_l >= np.abs(lin) - tol)
    if case.nonneg:
        assert all(np.all(j >= 0) for j in jacobians)
        np.testing.assert_allclose(abs_l, lin, rtol=1e-5, atol=1e-5)
    # Exactly the map with absolute weights.
    expected = sum(r.reshape(BATCH, -1) @ np.abs(j) for r, j in zip(rs, jacobians))
    np.testing.assert_allclose(abs_l.reshape(BATCH, -1), expected, rtol=1e-4, atol=1e-4)
    if not case.nonneg:
        # The case really has negative weights (else it would not test abs).
        assert any(np.any(j < 0) for j in jacobians)


@pytest.mark.parametrize("case", PARAMS)
def test_offset_term_and_interval_are_exact(case):
    layer, rule, params, xs, a, out_shape = _get(case)
    rng = np.random.default_rng(6)
    radii = [rng.uniform(0, 0.5, x.shape).astype("float32") for x in xs]
    boxes = [bounds.Box(ops.convert_to_tensor(x - r), ops.convert_to_tensor(x + r)) for x, r in zip(xs, radii)]

    offset = rule.offset(params)
    term = None if offset is None else _np(_offset_term(ops.convert_to_tensor(a), offset))
    affine = _np(rule.affine(xs, params))
    lin = _np(rule.linear(xs, params))
    box = rule.interval(boxes, params)
    lower, upper = _np(box.lower), _np(box.upper)
    jacobians = _jacobians(rule, params, xs)
    full_offset = affine - lin
    expected_term = _per_spec_sum(a * full_offset[:, None])
    if term is None:
        np.testing.assert_allclose(full_offset, 0.0, atol=1e-6)
    else:
        np.testing.assert_allclose(term, expected_term, rtol=1e-4, atol=1e-4)
    radius = sum(r.reshape(BATCH, -1) @ np.abs(j) for r, j in zip(radii, jacobians)).reshape(lower.shape)
    np.testing.assert_allclose(lower, affine - radius, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(upper, affine + radius, rtol=1e-4, atol=1e-4)


def test_channels_first_conv_bounds_contain_the_model_outputs():
    """End to end: the model's outputs at points of the box lie in the IBP box and the
    clean pass of the bound graph is the model, eager and compiled."""
    if _channels_first_unavailable():
        pytest.skip(f"the backend refuses channels_first convolution ({_channels_first_unavailable()})")
    model = _randomize(
        keras.Sequential([
            keras.Input((2, 5, 7)),
            layers.Conv2D(3, 2, strides=2, padding="same", data_format="channels_first"),
            layers.Flatten(),
        ]),
        seed=3,
    )
    graph = bounds.parse_network(model)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (4, 2, 5, 7)).astype("float32")
    box = bounds.input_box(x, 0.05)
    points = _np(box.lower) + rng.uniform(0, 1, x.shape).astype("float32") * _np(box.upper - box.lower)
    result = bounds.interval_pass(graph, box, clean=ops.convert_to_tensor(points))
    out = _np(model(points, training=False))
    np.testing.assert_allclose(model.predict(points, verbose=0), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(result.clean[graph.output]), out, rtol=1e-5, atol=1e-5)
    lower, upper = _np(result.boxes[graph.output].lower), _np(result.boxes[graph.output].upper)
    assert np.all(out >= lower - 1e-5) and np.all(out <= upper + 1e-5)


@pytest.mark.parametrize("make, shape", [
    (functools.partial(layers.Conv2D, 3, 2, strides=2, padding="same"), (2, 5, 6)),
    (functools.partial(layers.Conv2D, 3, 2, strides=2, padding="valid"), (2, 7, 6)),
    (functools.partial(layers.Conv1D, 4, 3, padding="valid"), (2, 6)),
], ids=["conv2d-filters-eq-width-same", "conv2d-filters-eq-width-valid",
        "conv1d-filters-eq-length"])
def test_channels_first_conv_with_as_many_filters_as_columns_is_refused(make, shape):
    """Keras on TensorFlow adds such a layer's bias along the last axis in eager calls
    and along the channels in compiled ones, so the network has no one function to
    certify: the rule refuses it, naming the layer."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras adds a channels-first bias along the channels on this backend")
    model = _randomize(keras.Sequential([keras.Input(shape),
                                         make(data_format="channels_first", name="cf"),
                                         layers.Flatten()]), seed=4)
    x = np.random.default_rng(4).uniform(0, 1, (3, *shape)).astype("float32")
    assert not np.allclose(_np(model(x, training=False)), model.predict(x, verbose=0),
                           atol=1e-3)
    with pytest.raises(bounds.UnsupportedModelError,
                       match=r"Conv layer 'cf' \(data_format='channels_first'\) has as many "
                             r"filters as its output's last axis"):
        bounds.parse_network(model)
