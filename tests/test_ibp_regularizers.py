"""The strong IBP recipe: Shi et al.'s regularisers, L1, and IBP initialization."""

import math

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import cli
from cactus_keras.bounds import IntervalPass, Box
from cactus_keras.experiments import TrainConfig
from cactus_keras.training import ibp_regularizers

TOLERANCE = 0.5


def shi_reference(input_box, boxes, tol=TOLERANCE):
    """Shi et al.'s regulariser in NumPy, written as their reference code computes it
    (ratio r, then min(r, 1 / max(r, 1e-12)); a layer whose ReLU term is not finite is
    skipped), except for the sign of a zero: with no inactive unit the code divides by
    -0.0, gets -inf and skips the layer; the paper's ratio is +inf there (balance 0)."""
    low0, up0 = input_box
    t0 = np.mean((up0 - low0) / 2)
    tightness, balance = 0.0, 0.0
    for low, up in boxes:
        centre, radius = (up + low) / 2, (up - low) / 2
        tightness += max(tol - t0 / max(radius.mean(), 1e-12), 0.0) / tol
        active, inactive = low > 0, up < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            inactive_mean = -np.float64(np.mean(centre * inactive)) + 0.0  # -0.0 -> +0.0
            mean_ratio = np.float64(np.mean(centre * active)) / inactive_mean
            delta = (centre - centre.mean()) ** 2
            var_ratio = np.float64(np.sum(delta * active)) / np.float64(np.sum(delta * inactive))
            mean_ratio = np.minimum(mean_ratio, 1 / np.maximum(mean_ratio, 1e-12))
            var_ratio = np.minimum(var_ratio, 1 / np.maximum(var_ratio, 1e-12))
            term = (np.maximum(tol - mean_ratio, 0) + np.maximum(tol - var_ratio, 0)) / tol
        if np.isfinite(term):
            balance += term
    return (tightness + balance) / len(boxes)


def _box(rng, shape, shift=0.0, width=1.0):
    lower = rng.normal(shift, 1.0, shape).astype("float32")
    return lower, lower + width * rng.uniform(0, 1, shape).astype("float32")


def test_regularizer_equals_numpy_on_sampled_pre_activation_bounds():
    rng = np.random.default_rng(0)
    input_box = _box(rng, (6, 5), width=0.2)
    cases = {
        "mixed": _box(rng, (6, 7)),
        "mostly active": _box(rng, (6, 3, 3, 2), shift=2.0),
        "no inactive unit": (np.full((6, 4), 0.5, "float32"), np.full((6, 4), 1.0, "float32")),
        # No active and no inactive unit: the 0/0 ratio adds nothing.
        "all unstable": (np.full((6, 4), -1.0, "float32"), np.full((6, 4), 1.0, "float32")),
        "wide": _box(rng, (6, 9), width=8.0),
    }
    boxes = {"input": Box(*map(keras.ops.convert_to_tensor, input_box))}
    for name, (low, up) in cases.items():
        boxes[name] = Box(keras.ops.convert_to_tensor(low), keras.ops.convert_to_tensor(up))
    interval = IntervalPass(boxes, {}, None)
    got = ibp_regularizers.ibp_regularizer(interval, list(cases), "input")
    expected = shi_reference(input_box, list(cases.values()))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    for name, box in cases.items():  # layer by layer, too
        got = ibp_regularizers.ibp_regularizer(interval, [name], "input")
        np.testing.assert_allclose(float(got), shi_reference(input_box, [box]), rtol=1e-5, err_msg=name)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(7),
        keras.layers.ReLU(),
        keras.layers.Dense(3),
    ])


def _numpy_pre_activation_boxes(net, lower, upper):
    """IBP through the MLP in NumPy: the input boxes of its two ReLUs."""
    boxes = []
    dense = [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    for layer in dense[:-1]:
        kernel, bias = (np.asarray(w, "float64") for w in layer.get_weights())
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        centre, radius = centre @ kernel + bias, radius @ np.abs(kernel)
        boxes.append((centre - radius, centre + radius))
        lower, upper = np.maximum(centre - radius, 0), np.maximum(centre + radius, 0)
    return boxes


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 6)).astype("float32"), rng.integers(0, 3, n)


def test_the_model_regularises_its_own_ibp_pre_activation_bounds():
    net = _mlp()
    x, y = _data()
    model = cactus_keras.CactusModel(net, epsilon=0.2, ibp_regularization=0.5)
    model.epsilon.assign(0.1)
    full = model.member_results(x, y, training=False)[0]
    lower, upper = np.clip(x - 0.1, 0, 1).astype("float64"), np.clip(x + 0.1, 0, 1).astype("float64")
    expected = shi_reference((lower, upper), _numpy_pre_activation_boxes(net, lower, upper))
    np.testing.assert_allclose(float(full.ibp_regularization), expected, rtol=1e-4)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_the_weight_decays_with_epsilon_and_is_zero_outside_the_ramp(fraction):
    net = _mlp()
    x, y = _data()
    plain = cactus_keras.CactusModel(net, epsilon=0.2)
    regularised = cactus_keras.CactusModel(net, epsilon=0.2, ibp_regularization=0.5)
    epsilon = 0.2 * fraction
    for model in (plain, regularised):
        model.epsilon.assign(epsilon)
    difference = float(regularised.compute_loss(x, y, training=False)) - float(
        plain.compute_loss(x, y, training=False))
    lower, upper = np.clip(x - epsilon, 0, 1).astype("float64"), np.clip(x + epsilon, 0, 1).astype("float64")
    term = shi_reference((lower, upper), _numpy_pre_activation_boxes(net, lower, upper))
    # Shi et al.: weight * (1 - epsilon / target) during the ramp; none at epsilon 0.
    decay = (1 - fraction) if 0 < fraction < 1 else 0.0
    np.testing.assert_allclose(difference, 0.5 * decay * term, rtol=1e-4, atol=1e-7)
    metric = regularised.get_metrics_result()["loss_ibp_regularization"]
    np.testing.assert_allclose(float(metric), 0.5 * decay * term, rtol=1e-4, atol=1e-7)


def _fit(net, x, y, **options):
    model = cactus_keras.CactusModel(net, epsilon=0.05, **options)
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0, shuffle=False,
                        callbacks=[cactus_keras.EpsilonRamp(2, start_epoch=1)])
    return history.history, [w.copy() for w in net.get_weights()]


@pytest.mark.parametrize("kind", ["mlp", pytest.param("cnn3-batch-norm-pruned", marks=pytest.mark.slow)])
def test_fit_logs_the_term_zero_in_the_warm_up_and_after_the_ramp(kind):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        make, options = _mlp, {}
        x, y = _data(32)
    else:
        def make(seed=0):
            keras.utils.set_random_seed(seed)
            return cactus_keras.models.cnn3((12, 12, 1), 3, batch_norm=True)

        options = {"compression": [cactus_keras.Pruning(0.5)]}
        x, y = rng.uniform(0, 1, (32, 12, 12, 1)).astype("float32"), rng.integers(0, 3, 32)
    history, weights = _fit(make(), x, y, ibp_regularization=0.5, **options)
    logged = history["loss_ibp_regularization"]
    assert logged[0] == 0.0 and logged[3] == 0.0, logged  # warm-up; at the target
    assert logged[1] > 0 and logged[2] > 0, logged
    assert all(math.isfinite(v) for v in history["loss"])
    if kind != "mlp":
        # The term trains: the same run without it ends elsewhere.
        _, plain = _fit(make(), x, y, **options)
        assert any(not np.allclose(a, b) for a, b in zip(weights, plain))


def test_l1_term_is_the_weight_times_the_kernels_absolute_sum():
    net = _mlp()
    x, y = _data()
    plain = cactus_keras.CactusModel(net, epsilon=0.1)
    regularised = cactus_keras.CactusModel(net, epsilon=0.1, l1_regularization=1e-3)
    difference = float(regularised.compute_loss(x, y, training=False)) - float(
        plain.compute_loss(x, y, training=False))
    kernels = [layer.get_weights()[0] for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    expected = 1e-3 * sum(np.abs(k).sum() for k in kernels)
    np.testing.assert_allclose(difference, expected, rtol=1e-4)
    np.testing.assert_allclose(float(regularised.get_metrics_result()["loss_l1_regularization"]),
                               expected, rtol=1e-5)
    assert "loss_l1_regularization" not in plain.get_metrics_result()


def test_options_survive_get_config_and_reach_the_model_from_train_config():
    model = cactus_keras.CactusModel(_mlp(), 0.1, ibp_regularization=0.5, l1_regularization=1e-6)
    config = model.get_config()
    assert config["ibp_regularization"] == 0.5 and config["l1_regularization"] == 1e-6
    from cactus_keras.experiments import build_model

    train_config = TrainConfig(dataset="d", epsilon=0.1, arch="mlp", compression="none",
                               ibp_regularization=0.5, l1_regularization=1e-6)
    built = build_model(train_config, (4, 4, 1), 3)
    assert built.ibp_regularization == 0.5 and built.l1_regularization == 1e-6


@pytest.mark.parametrize("options, message", [
    (dict(ibp_regularization=-0.5), r"`ibp_regularization` .* >= 0"),
    (dict(l1_regularization=-1e-6), r"`l1_regularization` .* >= 0"),
    (dict(ibp_regularization="0.5"), r"`ibp_regularization`"),
    (dict(l1_regularization=float("nan")), r"`l1_regularization`"),
])
def test_bad_weights_are_one_line_errors_naming_the_parameter(options, message):
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        cactus_keras.CactusModel(_mlp(), 0.1, **options)
    assert "\n" not in str(raised.value)
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(dataset="d", epsilon=0.1, **options)


def test_regulariser_needs_relus_a_full_network_and_a_ramp():
    keras.utils.set_random_seed(0)
    tanh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                             keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has no ReLU"):
        cactus_keras.CactusModel(tanh, 0.1, ibp_regularization=0.5)
    with pytest.raises(ValueError, match="include_full_network=False"):
        cactus_keras.CactusModel(_mlp(), 0.1, ibp_regularization=0.5, include_full_network=False,
                                 compression=[cactus_keras.FixedMaskPruning(0.5)])
    with pytest.raises(ValueError, match="`ramp_epochs` is 0"):
        TrainConfig(dataset="d", epsilon=0.1, ramp_epochs=0, ibp_regularization=0.5)


@pytest.mark.parametrize("flag", ["--ibp-regularization", "--l1-regularization"])
def test_bad_weight_flags_are_one_line_errors_naming_the_flag(tmp_path, capsys, flag):
    code = cli.main(["train", "--dataset", str(tmp_path / "none.npz"), "--epsilon", "0.1",
                     "--output", str(tmp_path / "run"), flag, "-1"])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cactus-keras train: error: {flag} ("), lines


@pytest.mark.parametrize("certified_loss", ["mtl-ibp", "sabr"])
def test_other_certified_losses_are_regularised_too(certified_loss):
    net = _mlp()
    x, y = _data()
    model = cactus_keras.CactusModel(net, 0.2, ibp_regularization=0.5, certified_loss=certified_loss,
                                     attack_steps=2)
    model.epsilon.assign(0.1)
    model.compute_loss(x, y, training=False)
    assert float(model.get_metrics_result()["loss_ibp_regularization"]) > 0


def test_ibp_initialization_is_shi_et_al_s():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(32, 3, activation="relu", bias_initializer="ones"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", bias_initializer="ones"),
        keras.layers.Dense(10),
    ])
    before = [w.copy() for w in net.get_weights()]
    cactus_keras.training.ibp_initialize(net, seed=0)
    conv, dense, output = (layer for layer in net.layers if layer.weights)
    for layer, fan_in in ((conv, 3 * 3 * 3), (dense, 10 * 10 * 32)):
        kernel = layer.get_weights()[0]
        # N(0, sigma^2) with sigma = sqrt(2 pi) / fan_in.
        assert np.std(kernel) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.05)
        assert abs(np.mean(kernel)) < 4 * math.sqrt(2 * math.pi) / fan_in / math.sqrt(kernel.size)
        np.testing.assert_array_equal(layer.get_weights()[1], 1.0)  # biases kept
    # The output layer keeps its own initialization, as in Shi et al.'s code.
    for a, b in zip(before[-2:], output.get_weights()):
        np.testing.assert_array_equal(a, b)
