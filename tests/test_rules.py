"""Bounds worked out by hand: per-layer intervals, relaxations, margins and model errors.

Every expected number is derived in the comments next to it.
"""

import keras
import numpy as np
import pytest
from keras import layers, ops

from cactus_keras import bounds
from cactus_keras.bounds import UnsupportedModelError
from cactus_keras.bounds.nonlinear import relu_relaxation, s_shaped_relaxation
from cactus_keras.bounds.propagation import crown_refined_values, crown_refinement, interval_pass
from cactus_keras.bounds.rules import MonotoneRule

from random_models import BUILDERS, layer_classes

F32 = "float32"


def _np(x):
    return ops.convert_to_numpy(x)


def _box(lower, upper):
    return bounds.Box(ops.convert_to_tensor(np.asarray(lower, F32)), ops.convert_to_tensor(np.asarray(upper, F32)))


def _set(layer, *weights):
    layer.set_weights([np.asarray(w, F32) for w in weights])


def _output_interval(model, lower, upper):
    """IBP interval of the model output for one box (batch of 1)."""
    graph = bounds.parse_network(model)
    result = interval_pass(graph, _box([lower], [upper]))
    box = result.boxes[graph.output]
    return _np(box.lower)[0], _np(box.upper)[0]


def _margins(model, lower, upper, labels, method):
    graph = bounds.parse_network(model)
    n = len(labels)
    box = _box([lower] * n, [upper] * n)
    return _np(bounds.margin_lower_bounds(graph, box, np.asarray(labels), method))


# ------------------------------------------------------------------- 2-2-2 ReLU network
#
# Input box x1, x2 in [-1, 1]; s = x1 + x2 in [-2, 2].
# Layer 1: kernel [[1, 1], [1, 1]], bias [1, 0]:  h1 = s + 1 in [-1, 3],  h2 = s in [-2, 2].
# ReLU:    r1 in [0, 3],  r2 in [0, 2].
# Layer 2 (identity kernel, bias [0.5, -0.5]): z0 = r1 + 0.5 in [0.5, 3.5],
#                                              z1 = r2 - 0.5 in [-0.5, 1.5].
#
# Margins (z_y - z_j):
#   label 0: z0 - z1 = r1 - r2 + 1.  The exact minimum is 1 (relu(s+1) - relu(s) >= 0).
#     IBP (last layer folded):  min r1 - max r2 + 1 = 0 - 2 + 1 = -1.
#     CROWN: h1 in [-1, 3] is unstable with u > -l, so r1 >= h1 (lower slope 1);
#       h2 in [-2, 2]: r2 <= 2/4 (h2 + 2) = 0.5 s + 1.  So
#       r1 - r2 + 1 >= (s + 1) - (0.5 s + 1) + 1 = 0.5 s + 1 >= 0 over s in [-2, 2].
#     CROWN (0) is strictly tighter than IBP (-1).
#   label 1: z1 - z0 = r2 - r1 - 1.  The exact minimum is -2.
#     IBP: 0 - 3 - 1 = -4.
#     CROWN: h2 has u = -l, so r2 >= 0 (lower slope 0); r1 <= 3/4 (h1 + 1) = 0.75 s + 1.5;
#       r2 - r1 - 1 >= -0.75 s - 2.5 >= -4.
# With one hidden layer the pre-activation boxes are exact already (one affine map of the
# input box), so CROWN refines nothing and CROWN-IBP equals CROWN.

LOWER = [-1.0, -1.0]
UPPER = [1.0, 1.0]


def _two_layer(kernel2=((1, 0), (0, 1)), bias2=(0.5, -0.5)):
    model = keras.Sequential(
        [keras.Input((2,)), layers.Dense(2, activation="relu"), layers.Dense(2)]
    )
    _set(model.layers[0], [[1, 1], [1, 1]], [1, 0])
    _set(model.layers[1], kernel2, bias2)
    return model


def test_ibp_interval_of_each_layer():
    model = _two_layer()
    graph = bounds.parse_network(model)
    # Fused activation: dense, relu, dense.
    assert len(graph.nodes) == 3
    result = interval_pass(graph, _box([LOWER], [UPPER]))
    expected = [
        ([-1, -2], [3, 2]),  # h = (s + 1, s)
        ([0, 0], [3, 2]),  # relu(h)
        ([0.5, -0.5], [3.5, 1.5]),  # z = r + (0.5, -0.5)
    ]
    for node, (lower, upper) in zip(graph.nodes, expected):
        box = result.boxes[node.output]
        np.testing.assert_allclose(_np(box.lower), [lower], atol=1e-6)
        np.testing.assert_allclose(_np(box.upper), [upper], atol=1e-6)


def test_margins_of_two_layer_network_by_hand():
    model = _two_layer()
    labels = [0, 1]
    # Rows: label 0 then label 1; the label's own entry is 0.
    ibp = _margins(model, LOWER, UPPER, labels, "ibp")
    np.testing.assert_allclose(ibp, [[0, -1], [-4, 0]], atol=1e-6)
    crown = _margins(model, LOWER, UPPER, labels, "crown")
    np.testing.assert_allclose(crown, [[0, 0], [-4, 0]], atol=1e-6)
    crown_ibp = _margins(model, LOWER, UPPER, labels, "crown-ibp")
    np.testing.assert_allclose(crown_ibp, [[0, 0], [-4, 0]], atol=1e-6)
    # "best" is the larger of IBP and alpha-CROWN per margin: at least CROWN, and at most
    # the true minima (z0 - z1 = relu(s + 1) - relu(s) + 1 >= 1, z1 - z0 >= -2, s = x1 + x2).
    best = _margins(model, LOWER, UPPER, labels, "best")
    alpha = _margins(model, LOWER, UPPER, labels, "alpha-crown")
    np.testing.assert_allclose(best, np.maximum(ibp, alpha), atol=1e-6)
    assert np.all(best >= crown - 1e-6)
    assert np.all(best <= np.array([[0, 1], [-2, 0]]) + 1e-5)
    # CROWN is strictly tighter than IBP on the label-0 margin (0 > -1).
    assert crown[0, 1] > ibp[0, 1] + 0.5
    assert crown_refined_values(bounds.parse_network(model)) == []
    # The bounds hold: the exact minima are 1 and -2 (on a grid of the box).
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-1, 1, 41)), -1).reshape(-1, 2)
    z = model.predict(grid.astype(F32), verbose=0)
    assert (z[:, 0] - z[:, 1]).min() == pytest.approx(1.0, abs=1e-5)
    assert (z[:, 1] - z[:, 0]).min() == pytest.approx(-2.0, abs=1e-5)


def test_folding_the_last_layer_beats_subtracting_logit_intervals():
    # Both logits are r1 + r2 + 0.2, in [0.2, 5.2]: subtracting the intervals gives
    # 0.2 - 5.2 = -5, but the folded margin z0 - z1 = 0 * r + 0 is exactly 0.
    model = _two_layer(kernel2=((1, 1), (1, 1)), bias2=(0.2, 0.2))
    graph = bounds.parse_network(model)
    logits = interval_pass(graph, _box([LOWER], [UPPER])).boxes[graph.output]
    np.testing.assert_allclose(_np(logits.lower), [[0.2, 0.2]], atol=1e-6)
    np.testing.assert_allclose(_np(logits.upper), [[5.2, 5.2]], atol=1e-6)
    subtracted = _np(logits.lower)[0, 0] - _np(logits.upper)[0, 1]
    assert subtracted == pytest.approx(-5.0, abs=1e-5)
    for method in bounds.BOUNDS:
        margins = _margins(model, LOWER, UPPER, [0, 1], method)
        np.testing.assert_allclose(margins, 0.0, atol=1e-6)


# ------------------------------------------- a 3-layer network where refinement matters
#
# Layer 1 and ReLU as above (h1 = s + 1, h2 = s, s in [-2, 2]).
# Layer 2: g = r2 - r1 - 1 (kernel [[-1], [1]], bias [-1]); then q = relu(g).
# Layer 3: z0 = q, z1 = 0.
#   Exact: r2 - r1 = relu(s) - relu(s + 1) is in [-1, 0], so g in [-2, -1] and q = 0.
#   IBP box of g: [0 - 3 - 1, 2 - 0 - 1] = [-4, 1] (unstable).
#   CROWN box of g: upper: r2 <= 0.5 s + 1, -r1 <= -h1 = -s - 1 (lower slope 1), so
#     g <= -0.5 s - 1 <= 0; lower: r2 >= 0, -r1 >= -(0.75 s + 1.5), so g >= -0.75 s - 2.5
#     >= -4.  Refined box [-4, 0]: q is stably inactive, q = 0.
# Margin for label 1, z1 - z0 = -q:
#   IBP: -max q = -1.
#   CROWN-IBP (IBP box of g): q <= 1/5 (g + 4) = 0.2 g + 0.8, so -q >= -0.2 g - 0.8, and
#     -0.2 g = 0.2 r1 - 0.2 r2 + 0.2 >= 0.2 (s + 1) - 0.2 (0.5 s + 1) + 0.2 = 0.1 s + 0.2
#     >= 0, giving -0.8.
#   CROWN: q = 0 exactly, giving 0.
# Margin for label 0, q - 0: every method gives 0 (q >= 0; the ReLU lower slope is 0
# for the IBP box since u = 1 < -l = 4).


def _three_layer():
    model = keras.Sequential(
        [
            keras.Input((2,)),
            layers.Dense(2, activation="relu"),
            layers.Dense(1, activation="relu"),
            layers.Dense(2),
        ]
    )
    _set(model.layers[0], [[1, 1], [1, 1]], [1, 0])
    _set(model.layers[1], [[-1], [1]], [-1])
    _set(model.layers[2], [[1, 0]], [0, 0])
    return model


def test_crown_refinement_is_strictly_tighter_than_crown_ibp():
    model = _three_layer()
    graph = bounds.parse_network(model)
    g = graph.nodes[2].output
    assert crown_refined_values(graph) == [g]
    box = _box([LOWER], [UPPER])
    ibp_g = interval_pass(graph, box).boxes[g]
    np.testing.assert_allclose(_np(ibp_g.lower), [[-4]], atol=1e-6)
    np.testing.assert_allclose(_np(ibp_g.upper), [[1]], atol=1e-6)
    crown_g = interval_pass(graph, box, refine=crown_refinement(graph)).boxes[g]
    np.testing.assert_allclose(_np(crown_g.lower), [[-4]], atol=1e-6)
    np.testing.assert_allclose(_np(crown_g.upper), [[0]], atol=1e-6)
    labels = [0, 1]
    expected = {
        "ibp": [[0, 0], [-1, 0]],
        "crown-ibp": [[0, 0], [-0.8, 0]],
        "crown": [[0, 0], [0, 0]],
        "best": [[0, 0], [0, 0]],
    }
    for method, values in expected.items():
        np.testing.assert_allclose(_margins(model, LOWER, UPPER, labels, method), values, atol=1e-6, err_msg=method)


# ----------------------------------------------------------------- single layers


def _single(layer, in_shape, flatten=False):
    inputs = keras.Input(in_shape)
    out = layer(inputs)
    if flatten:
        out = layers.Flatten()(out)
    return keras.Model(inputs, out)


def test_dense_interval():
    # y1 = x1 + 3 x2 + 0.5,  y2 = -2 x1 + 0.5 x2 - 1,  x1 in [0, 1], x2 in [-1, 2]:
    # y1 in [0 - 3 + 0.5, 1 + 6 + 0.5] = [-2.5, 7.5]
    # y2 in [-2 - 0.5 - 1, 0 + 1 - 1] = [-3.5, 0]
    layer = layers.Dense(2)
    model = _single(layer, (2,))
    _set(layer, [[1, -2], [3, 0.5]], [0.5, -1])
    lower, upper = _output_interval(model, [0, -1], [1, 2])
    np.testing.assert_allclose(lower, [-2.5, -3.5], atol=1e-6)
    np.testing.assert_allclose(upper, [7.5, 0.0], atol=1e-6)


def test_conv2d_interval():
    # 3x3 single-channel input with centre X[i, j] = 3i + j and radius
    # R[i, j] = 0.1 (3i + j + 1); kernel [[1, -1], [-2, 0.5]], bias 0.25, 'valid'.
    # Output (i, j): X[i,j] - X[i,j+1] - 2 X[i+1,j] + 0.5 X[i+1,j+1] + 0.25
    #   centre = -4.75 - 4.5 i - 1.5 j:        [[-4.75, -6.25], [-9.25, -10.75]]
    #   radius = R[i,j] + R[i,j+1] + 2 R[i+1,j] + 0.5 R[i+1,j+1]
    #          = 1.35 + 1.35 i + 0.45 j:       [[1.35, 1.8], [2.7, 3.15]]
    # Check (0, 0) directly: x00 in [-0.1, 0.1], x01 in [0.8, 1.2], x10 in [2.6, 3.4],
    #   x11 in [3.5, 4.5]: lower = -0.1 - 1.2 - 6.8 + 1.75 + 0.25 = -6.1,
    #   upper = 0.1 - 0.8 - 5.2 + 2.25 + 0.25 = -3.4.
    layer = layers.Conv2D(1, 2)
    model = _single(layer, (3, 3, 1), flatten=True)
    _set(layer, np.array([[1, -1], [-2, 0.5]]).reshape(2, 2, 1, 1), [0.25])
    centre = np.arange(9, dtype=F32).reshape(3, 3, 1)
    radius = 0.1 * (np.arange(9, dtype=F32) + 1).reshape(3, 3, 1)
    lower, upper = _output_interval(model, centre - radius, centre + radius)
    np.testing.assert_allclose(lower, [-6.1, -8.05, -11.95, -13.9], atol=1e-5)
    np.testing.assert_allclose(upper, [-3.4, -4.45, -6.55, -7.6], atol=1e-5)


def test_batch_normalization_inference_interval():
    # gamma [2, -1], beta [0.5, 0], moving mean [1, -1], moving variance [4, 0.25]:
    #   y1 = 2 (x1 - 1) / 2 + 0.5 = x1 - 0.5          x1 in [0, 3]     -> [-0.5, 2.5]
    #   y2 = -(x2 + 1) / 0.5 = -2 x2 - 2               x2 in [-1, 0.5]  -> [-3, 0]
    layer = layers.BatchNormalization(epsilon=1e-9)
    model = _single(layer, (2,))
    _set(layer, [2, -1], [0.5, 0], [1, -1], [4, 0.25])
    lower, upper = _output_interval(model, [0, -1], [3, 0.5])
    np.testing.assert_allclose(lower, [-0.5, -3.0], atol=1e-5)
    np.testing.assert_allclose(upper, [2.5, 0.0], atol=1e-5)


def test_rescaling_interval():
    # y = -2 x + 1: x1 in [0, 1] -> [-1, 1], x2 in [-1, 3] -> [-5, 3].
    model = _single(layers.Rescaling(-2.0, offset=1.0), (2,))
    lower, upper = _output_interval(model, [0, -1], [1, 3])
    np.testing.assert_allclose(lower, [-1, -5], atol=1e-6)
    np.testing.assert_allclose(upper, [1, 3], atol=1e-6)


def test_normalization_interval():
    # mean [1, 2], variance [4, 0.25]: y = (x - m) / sqrt(v)
    #   x1 in [-1, 3] -> [-1, 1],  x2 in [2, 3] -> [0, 2].
    model = _single(layers.Normalization(mean=[1, 2], variance=[4, 0.25]), (2,))
    lower, upper = _output_interval(model, [-1, 2], [3, 3])
    np.testing.assert_allclose(lower, [-1, 0], atol=1e-5)
    np.testing.assert_allclose(upper, [1, 2], atol=1e-5)
    # invert=True: y = x sqrt(v) + m:  x1 in [-1, 1] -> [-1, 3],  x2 in [0, 2] -> [2, 3].
    model = _single(layers.Normalization(mean=[1, 2], variance=[4, 0.25], invert=True), (2,))
    lower, upper = _output_interval(model, [-1, 0], [1, 2])
    np.testing.assert_allclose(lower, [-1, 2], atol=1e-5)
    np.testing.assert_allclose(upper, [3, 3], atol=1e-5)


def test_average_pooling2d_interval():
    # 2x4 input, pool 2: lower = window means of L, upper = window means of U.
    #   L = [[0, 1, 2, 3], [4, 5, 6, 7]]:  (0+1+4+5)/4 = 2.5,  (2+3+6+7)/4 = 4.5
    #   U = L + [[1, 0, 2, 0], [0, 1, 0, 4]]:  2.5 + 2/4 = 3.0,  4.5 + 6/4 = 6.0
    model = _single(layers.AveragePooling2D(2), (2, 4, 1), flatten=True)
    low = np.arange(8, dtype=F32).reshape(2, 4, 1)
    up = low + np.array([[1, 0, 2, 0], [0, 1, 0, 4]], F32).reshape(2, 4, 1)
    lower, upper = _output_interval(model, low, up)
    np.testing.assert_allclose(lower, [2.5, 4.5], atol=1e-6)
    np.testing.assert_allclose(upper, [3.0, 6.0], atol=1e-6)
    # 'same' padding, pool 2, stride 2 on 3x3: padded elements are not counted.
    #   L = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]:  (0+1+3+4)/4 = 2,  (2+5)/2 = 3.5,
    #   (6+7)/2 = 6.5,  8;  U = L + 1.
    model = _single(layers.AveragePooling2D(2, padding="same"), (3, 3, 1), flatten=True)
    low = np.arange(9, dtype=F32).reshape(3, 3, 1)
    lower, upper = _output_interval(model, low, low + 1)
    np.testing.assert_allclose(lower, [2, 3.5, 6.5, 8], atol=1e-6)
    np.testing.assert_allclose(upper, [3, 4.5, 7.5, 9], atol=1e-6)


def test_max_pooling2d_interval():
    # L = [[0, 3], [1, -2]], U = [[5, 4], [2, 0]]: [max L, max U] = [3, 5].
    model = _single(layers.MaxPooling2D(2), (2, 2, 1), flatten=True)
    lower, upper = _output_interval(
        model, np.array([[0, 3], [1, -2]], F32)[..., None], np.array([[5, 4], [2, 0]], F32)[..., None]
    )
    np.testing.assert_allclose(lower, [3], atol=1e-6)
    np.testing.assert_allclose(upper, [5], atol=1e-6)


def test_global_average_pooling2d_interval():
    # Channel 0: L = [[0, 1], [2, 3]] -> 1.5,  U = L + 1 -> 2.5.
    # Channel 1: L = [[-1, -1], [-1, -5]] -> -2,  U = [[0, 0], [0, 4]] -> 1.
    model = _single(layers.GlobalAveragePooling2D(), (2, 2, 2))
    low = np.stack([[[0, 1], [2, 3]], [[-1, -1], [-1, -5]]], -1).astype(F32)
    up = np.stack([[[1, 2], [3, 4]], [[0, 0], [0, 4]]], -1).astype(F32)
    lower, upper = _output_interval(model, low, up)
    np.testing.assert_allclose(lower, [1.5, -2], atol=1e-6)
    np.testing.assert_allclose(upper, [2.5, 1], atol=1e-6)


def test_add_interval():
    # Add()([x, d]) with d = (x1, -x2), x1 in [0, 1], x2 in [-1, 1]:
    #   d1 in [0, 1], d2 in [-1, 1];  sums of boxes: [0, 2] and [-2, 2]
    #   (the second is really x2 - x2 = 0, which interval arithmetic cannot see).
    inputs = keras.Input((2,))
    dense = layers.Dense(2)
    out = layers.Add()([inputs, dense(inputs)])
    model = keras.Model(inputs, out)
    _set(dense, [[1, 0], [0, -1]], [0, 0])
    lower, upper = _output_interval(model, [0, -1], [1, 1])
    np.testing.assert_allclose(lower, [0, -2], atol=1e-6)
    np.testing.assert_allclose(upper, [2, 2], atol=1e-6)
    # The margin folds the Add: z0 - z1 = 2 x1 + 0 x2 >= 0 on the box (IBP: 0 - 2 = -2).
    np.testing.assert_allclose(_margins(model, [0, -1], [1, 1], [0], "ibp"), [[0, 0]], atol=1e-6)


@pytest.mark.parametrize(
    "layer, fn",
    [
        (layers.ReLU(), lambda x: np.maximum(x, 0)),
        (layers.Activation("relu"), lambda x: np.maximum(x, 0)),
        (layers.Activation("sigmoid"), lambda x: 1 / (1 + np.exp(-x))),
        (layers.Activation("tanh"), np.tanh),
    ],
    ids=["ReLU", "relu", "sigmoid", "tanh"],
)
def test_monotone_activation_interval(layer, fn):
    # [f(l), f(u)] for a box left of 0, across 0 and right of 0.
    low = np.array([-2, -1, 0.5], F32)
    up = np.array([-1, 3, 2], F32)
    lower, upper = _output_interval(_single(layer, (3,)), low, up)
    np.testing.assert_allclose(lower, fn(low.astype("float64")), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(upper, fn(up.astype("float64")), rtol=1e-6, atol=1e-6)


def test_fused_activation_interval():
    # Dense(1, activation="tanh"): y = tanh(x1 - x2), x1 - x2 in [-1 - 1, 1 + 1] = [-2, 2].
    layer = layers.Dense(1, activation="tanh")
    model = _single(layer, (2,))
    _set(layer, [[1], [-1]], [0])
    lower, upper = _output_interval(model, [-1, -1], [1, 1])
    np.testing.assert_allclose(lower, [np.tanh(-2)], rtol=1e-6)
    np.testing.assert_allclose(upper, [np.tanh(2)], rtol=1e-6)


# ------------------------------------------------------------------- relaxations


def _grid(lower, upper, n=2001):
    t = np.linspace(0, 1, n, dtype="float64")[:, None]
    return lower[None] + t * (upper - lower)[None]


def test_relu_relaxation_by_hand():
    # (l, u):            lower slope   upper slope, intercept
    # (1, 3) active:     1             1, 0
    # (-3, -1) inactive: 0             0, 0
    # (-1, 3) unstable:  1 (3 > 1)     3/4, 3/4   (u (x - l) / (u - l))
    # (-3, 1) unstable:  0 (1 < 3)     1/4, 3/4
    # (-2, 2) unstable:  0 (tie)       1/2, 1
    # (0, 2) active:     1             1, 0
    # (-2, 0) inactive:  0             0, 0
    lower = np.array([1, -3, -1, -3, -2, 0, -2], F32)
    upper = np.array([3, -1, 3, 1, 2, 2, 0], F32)
    r = [_np(v) for v in relu_relaxation(ops.convert_to_tensor(lower), ops.convert_to_tensor(upper))]
    np.testing.assert_allclose(r[0], [1, 0, 1, 0, 0, 1, 0], atol=1e-7)
    np.testing.assert_allclose(r[1], 0, atol=1e-7)
    np.testing.assert_allclose(r[2], [1, 0, 0.75, 0.25, 0.5, 1, 0], atol=1e-7)
    np.testing.assert_allclose(r[3], [0, 0, 0.75, 0.75, 1, 0, 0], atol=1e-7)
    x = _grid(lower.astype("float64"), upper.astype("float64"))
    f = np.maximum(x, 0)
    assert np.all(r[0] * x + r[1] <= f + 1e-6)
    assert np.all(f <= r[2] * x + r[3] + 1e-6)


_S_FUNCTIONS = {
    "sigmoid": (ops.sigmoid, lambda x: ops.sigmoid(x) * (1 - ops.sigmoid(x)), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (ops.tanh, lambda x: 1 - ops.tanh(x) ** 2, np.tanh),
    "softsign": (lambda x: x / (1 + ops.abs(x)), lambda x: 1 / (1 + ops.abs(x)) ** 2, lambda x: x / (1 + np.abs(x))),
}


@pytest.mark.parametrize("name", sorted(_S_FUNCTIONS))
def test_s_shaped_relaxation_encloses_the_function(name):
    function, derivative, reference = _S_FUNCTIONS[name]
    # Left of 0, right of 0, across 0 (both ways round), touching 0, wide and tiny boxes.
    lower = np.array([-3, -6, 0.5, 0, -2, -0.5, -4, -1, 1, -1e-7, -0.3], F32)
    upper = np.array([-1, -0.2, 2.5, 3, 1, 3, 4, 0, 1 + 1e-7, 1e-7, -0.3], F32)
    r = [
        _np(v).astype("float64")
        for v in s_shaped_relaxation(function, derivative, ops.convert_to_tensor(lower), ops.convert_to_tensor(upper))
    ]
    x = _grid(lower.astype("float64"), upper.astype("float64"))
    f = reference(x)
    tol = 2e-6
    assert np.all(r[0] * x + r[1] <= f + tol), (r[0] * x + r[1] - f).max(axis=0)
    assert np.all(f <= r[2] * x + r[3] + tol), (f - r[2] * x - r[3]).max(axis=0)
    # Both lines touch f at an end of the box: the lower one at l, the upper one at u.
    l64, u64 = lower.astype("float64"), upper.astype("float64")
    np.testing.assert_allclose(r[0] * l64 + r[1], reference(l64), atol=tol)
    np.testing.assert_allclose(r[2] * u64 + r[3], reference(u64), atol=tol)
    # Left of 0 the function is convex: the upper line is the chord (also exact at l);
    # right of 0 it is concave: the lower line is the chord (also exact at u).
    left, right = (upper <= 0) & (upper - lower > 1e-3), (lower >= 0) & (upper - lower > 1e-3)
    np.testing.assert_allclose((r[2] * l64 + r[3])[left], reference(l64)[left], atol=tol)
    np.testing.assert_allclose((r[0] * u64 + r[1])[right], reference(u64)[right], atol=tol)


# -------------------------------------------------------- batch norm in a training pass


def test_batch_normalization_training_pass_uses_clean_batch_statistics():
    inputs = keras.Input((2, 2, 3))
    bn = layers.BatchNormalization(epsilon=1e-3)
    model = keras.Model(inputs, layers.Flatten()(bn(inputs)))
    gamma = np.array([1.5, -0.5, 2.0], F32)
    beta = np.array([0.1, -0.2, 0.3], F32)
    # Moving statistics far from the batch's, so using them would fail the check.
    _set(bn, gamma, beta, [5, -5, 5], [9, 9, 9])
    graph = bounds.parse_network(model)
    rng = np.random.default_rng(0)
    clean = rng.normal(0.5, 2.0, (8, 2, 2, 3)).astype(F32)
    radius = rng.uniform(0, 0.3, clean.shape).astype(F32)
    box = _box(clean - radius, clean + radius)
    result = interval_pass(graph, box, clean=ops.convert_to_tensor(clean), training=True)
    # Per channel: scale = gamma / sqrt(var + eps), over batch and both spatial axes.
    mean = clean.astype("float64").mean(axis=(0, 1, 2))
    var = clean.astype("float64").var(axis=(0, 1, 2))
    scale = gamma / np.sqrt(var + 1e-3)
    centre = (clean - mean) * scale + beta
    spread = radius * np.abs(scale)
    bn_key = graph.nodes[0].output
    np.testing.assert_allclose(_np(result.boxes[bn_key].lower), centre - spread, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(result.boxes[bn_key].upper), centre + spread, rtol=1e-4, atol=1e-4)
    # The clean pass is the layer in training mode: the same normalization.
    np.testing.assert_allclose(_np(result.clean[bn_key]), centre, rtol=1e-4, atol=1e-4)
    # Without the clean batch there are no statistics to use.
    with pytest.raises(ValueError, match=r"BatchNormalization '.*' needs the clean inputs.*clean="):
        interval_pass(graph, box, training=True)


# ----------------------------------------------------------------- model structure


def _with_head(head):
    inputs = keras.Input((2,))
    x = layers.Dense(2, activation="relu", name="hidden")(inputs)
    x = head(x)
    model = keras.Model(inputs, x)
    _set(model.get_layer("hidden"), [[1, 1], [1, 1]], [1, 0])
    return model


@pytest.mark.parametrize(
    "softmax",
    [
        lambda: layers.Softmax(),
        lambda: layers.Activation("softmax"),
        None,  # fused: Dense(2, activation="softmax")
    ],
    ids=["Softmax", "Activation", "fused"],
)
def test_output_softmax_is_dropped(softmax):
    def head(x):
        if softmax is None:
            return layers.Dense(2, activation="softmax", name="logits")(x)
        return softmax()(layers.Dense(2, name="logits")(x))

    with_softmax = _with_head(head)
    _set(with_softmax.get_layer("logits"), np.eye(2), [0.5, -0.5])
    plain = _two_layer()
    graph = bounds.parse_network(with_softmax)
    assert len(graph.nodes) == 3
    for method in bounds.BOUNDS:
        np.testing.assert_allclose(
            _margins(with_softmax, LOWER, UPPER, [0, 1], method),
            _margins(plain, LOWER, UPPER, [0, 1], method),
            atol=1e-6,
        )
    # The same hand-computed numbers as the plain network.
    np.testing.assert_allclose(_margins(with_softmax, LOWER, UPPER, [0, 1], "ibp"), [[0, -1], [-4, 0]], atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_softmax_inside_the_network_is_rejected(fused):
    inputs = keras.Input((2,))
    if fused:
        x = layers.Dense(3, activation="softmax", name="mid")(inputs)
    else:
        x = layers.Softmax(name="mid")(layers.Dense(3)(inputs))
    model = keras.Model(inputs, layers.Dense(2)(x))
    with pytest.raises(UnsupportedModelError, match=r"softmax inside the network \(layer 'mid'\)"):
        bounds.parse_network(model)


@pytest.mark.parametrize(
    "make, cls",
    [
        (lambda: layers.LayerNormalization(name="odd_layer"), "LayerNormalization"),
        (lambda: layers.Lambda(lambda t: t * 2.0, name="odd_layer"), "Lambda"),
        (lambda: layers.Dense(2, activation="gelu", name="odd_layer"), "Dense, activation=gelu"),
    ],
    ids=["LayerNormalization", "Lambda", "gelu"],
)
def test_unsupported_layer_is_named_with_its_class(make, cls):
    inputs = keras.Input((2,))
    x = make()(layers.Dense(2)(inputs))
    model = keras.Model(inputs, layers.Dense(2)(x))
    with pytest.raises(UnsupportedModelError) as info:
        bounds.parse_network(model)
    assert f"'odd_layer' ({cls})" in str(info.value)
    assert "register_rule" in str(info.value)


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="my_net")
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 2), F32))
    with pytest.raises(UnsupportedModelError, match=r"'my_net' of class Net is a subclassed model"):
        bounds.parse_network(net)


def test_sequential_without_input_shape_is_rejected():
    model = keras.Sequential([layers.Dense(2)], name="shapeless")
    with pytest.raises(UnsupportedModelError, match=r"'shapeless' has no known input shape"):
        bounds.parse_network(model)


def _nested_functional_outer():
    inner = keras.Sequential([keras.Input((2,)), layers.Dense(2, activation="relu")], name="inner")
    inputs = keras.Input((2,))
    outer = layers.Dense(2)
    model = keras.Model(inputs, outer(inner(inputs)))
    _set(inner.layers[0], [[1, 1], [1, 1]], [1, 0])
    _set(outer, np.eye(2), [0.5, -0.5])
    return model


def _nested_sequential_outer():
    inputs = keras.Input((2,))
    hidden = layers.Dense(2, activation="relu")
    inner = keras.Model(inputs, hidden(inputs), name="inner")
    model = keras.Sequential([keras.Input((2,)), inner, layers.Dense(2)])
    _set(hidden, [[1, 1], [1, 1]], [1, 0])
    _set(model.layers[-1], np.eye(2), [0.5, -0.5])
    return model


@pytest.mark.parametrize("build", [_nested_functional_outer, _nested_sequential_outer], ids=["functional", "sequential"])
def test_nested_model_bounds_equal_the_flat_model(build):
    nested, flat = build(), _two_layer()
    x = np.random.default_rng(0).uniform(-1, 1, (5, 2)).astype(F32)
    np.testing.assert_allclose(nested.predict(x, verbose=0), flat.predict(x, verbose=0), atol=1e-6)
    nested_graph, flat_graph = bounds.parse_network(nested), bounds.parse_network(flat)
    assert len(nested_graph.nodes) == len(flat_graph.nodes) == 3
    box = _box([LOWER], [UPPER])
    nested_boxes = interval_pass(nested_graph, box).boxes
    flat_boxes = interval_pass(flat_graph, box).boxes
    for a, b in zip(nested_graph.nodes, flat_graph.nodes):
        np.testing.assert_allclose(_np(nested_boxes[a.output].lower), _np(flat_boxes[b.output].lower), atol=1e-6)
        np.testing.assert_allclose(_np(nested_boxes[a.output].upper), _np(flat_boxes[b.output].upper), atol=1e-6)
    for method in bounds.BOUNDS:
        np.testing.assert_allclose(
            _margins(nested, LOWER, UPPER, [0, 1], method), _margins(flat, LOWER, UPPER, [0, 1], method), atol=1e-6
        )
    np.testing.assert_allclose(_margins(nested, LOWER, UPPER, [0, 1], "crown"), [[0, 0], [-4, 0]], atol=1e-6)


def test_every_registered_layer_type_is_in_the_random_models():
    # The soundness tests run on these models; a rule missing from them is untested.
    used = set().union(*(layer_classes(build(0)) for build in BUILDERS.values()))
    missing = sorted(c.__name__ for c in bounds.registered_layer_classes() if c not in used)
    assert not missing, f"add {missing} to a builder in tests/random_models.py"


class _Doubling(layers.Layer):
    def call(self, x):
        return 2.0 * x


class _DoublingRule(MonotoneRule):
    pass


def test_register_rule_refuses_a_duplicate_unless_replace():
    before = bounds.rules._REGISTRY[layers.Dense]
    with pytest.raises(ValueError, match=r"Dense \(DenseRule\) already has a bound rule; pass replace=True"):
        bounds.register_rule(layers.Dense)(_DoublingRule)
    assert bounds.rules._REGISTRY[layers.Dense] is before
    # Registering the same rule again is not a conflict.
    bounds.register_rule(layers.Dense)(before)
    try:
        bounds.register_rule(layers.Dense, replace=True)(_DoublingRule)
        assert bounds.rules.rule_for(layers.Dense(2), [(3,)]).__class__ is _DoublingRule
    finally:
        bounds.register_rule(layers.Dense, replace=True)(before)


def test_register_rule_checks_its_arguments():
    with pytest.raises(TypeError, match="keras.layers.Layer subclasses, got 'Dense'"):
        bounds.register_rule("Dense")
    with pytest.raises(TypeError, match="at least one Keras layer class"):
        bounds.register_rule()
    with pytest.raises(TypeError, match="decorates BoundRule subclasses"):
        bounds.register_rule(_Doubling)(int)
    assert _Doubling not in bounds.registered_layer_classes()


def test_a_rule_of_ones_own_registers_falls_back_to_base_classes_and_unregisters():
    class Tripling(_Doubling):
        pass

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Tripling()(layers.Dense(2)(inputs)))
    with pytest.raises(UnsupportedModelError):
        bounds.parse_network(model)
    bounds.register_rule(_Doubling)(_DoublingRule)
    try:
        # The subclass finds its base class's rule along its class hierarchy.
        assert isinstance(bounds.rules.rule_for(Tripling(), [(3,)]), _DoublingRule)
        bounds.parse_network(model)
    finally:
        bounds.unregister_rule(_Doubling)
    assert _Doubling not in bounds.registered_layer_classes()
    with pytest.raises(UnsupportedModelError):
        bounds.parse_network(model)
