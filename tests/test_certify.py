"""The public `certify` API: results, batching, saved models and errors."""

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import bounds


def _cnn(seed=0, softmax=False):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax" if softmax else None),
        ]
    )


def _data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n)


def test_result_fields_and_definition_of_certified():
    net = _cnn()
    x, _ = _data()
    y = net.predict(x, verbose=0).argmax(-1)
    result = cactus_keras.certify(net, x, y, epsilon=0.003, verbose=0)
    assert result.certified.dtype == bool and result.certified.shape == (50,)
    assert result.margin_lower.shape == (50, 3)
    np.testing.assert_array_equal(result.predicted, y)
    own = np.eye(3, dtype=bool)[y]
    np.testing.assert_allclose(result.margin_lower[own], 0.0)
    expected = np.all(np.where(own, 1.0, result.margin_lower) > 0, axis=1)
    np.testing.assert_array_equal(result.certified, expected)
    assert result.certified_accuracy == pytest.approx(expected.mean())
    assert 0 < result.certified_accuracy <= result.clean_accuracy
    assert result.to_dict()["samples"] == 50
    assert "certified accuracy" in result.summary()


def test_wrong_label_is_never_certified_and_epsilon_zero_certifies_correct():
    net = _cnn()
    x, _ = _data()
    y = net.predict(x, verbose=0).argmax(-1)
    zero = cactus_keras.certify(net, x, y, epsilon=0.0, verbose=0)
    # At epsilon 0 the box is the point: certified exactly where the margin is positive.
    assert zero.certified.mean() > 0.9
    wrong = cactus_keras.certify(net, x, (y + 1) % 3, epsilon=0.0, verbose=0)
    assert not wrong.certified.any()


def test_certified_fraction_shrinks_with_epsilon():
    net = _cnn()
    x, _ = _data(200)
    y = net.predict(x, verbose=0).argmax(-1)
    fractions = [
        cactus_keras.certify(net, x, y, epsilon=e, verbose=0).certified_accuracy
        for e in (0.0, 0.002, 0.01, 0.1)
    ]
    assert fractions == sorted(fractions, reverse=True)
    assert fractions[0] > fractions[-1]


@pytest.mark.parametrize("method", bounds.BOUNDS)
def test_batching_does_not_change_results(method):
    net = _cnn()
    x, y = _data(37)
    one = cactus_keras.certify(net, x, y, 0.01, bound=method, batch_size=64, verbose=0)
    many = cactus_keras.certify(net, x, y, 0.01, bound=method, batch_size=5, verbose=0)
    np.testing.assert_allclose(one.margin_lower, many.margin_lower, rtol=1e-5, atol=1e-5)


def test_softmax_output_is_certified_on_logits():
    with_softmax = _cnn(seed=3, softmax=True)
    logits = _cnn(seed=3, softmax=False)
    logits.set_weights(with_softmax.get_weights())
    x, y = _data()
    a = cactus_keras.certify(with_softmax, x, y, 0.01, verbose=0)
    b = cactus_keras.certify(logits, x, y, 0.01, verbose=0)
    np.testing.assert_allclose(a.margin_lower, b.margin_lower, rtol=1e-6)


def test_saved_model_gives_identical_certificates(tmp_path):
    net = _cnn()
    x, y = _data()
    path = str(tmp_path / "m.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    for method in ("ibp", "crown"):
        a = cactus_keras.certify(net, x, y, 0.01, bound=method, verbose=0)
        b = cactus_keras.certify(loaded, x, y, 0.01, bound=method, verbose=0)
        np.testing.assert_array_equal(a.certified, b.certified)
        np.testing.assert_array_equal(a.margin_lower, b.margin_lower)


def test_input_range_cuts_the_ball():
    net = _cnn()
    x, y = _data()
    cut = cactus_keras.certify(net, x, y, 0.05, verbose=0)
    uncut = cactus_keras.certify(net, x, y, 0.05, input_range=None, verbose=0)
    # The cut box is inside the uncut one, so its bounds are at least as high.
    assert np.all(cut.margin_lower >= uncut.margin_lower - 1e-5)
    assert np.any(cut.margin_lower > uncut.margin_lower + 1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"epsilon": -0.1}, ValueError, "epsilon"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"bound": "lirpa"}, ValueError, "ibp"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"input_range": (1, 0)}, ValueError, "input_range"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    net = _cnn()
    x, y = _data(4)
    args = {"epsilon": 0.1, **kwargs}
    with pytest.raises(error, match=message):
        cactus_keras.certify(net, x, y, **args)


def test_bad_data():
    net = _cnn()
    x, y = _data(4)
    with pytest.raises(ValueError, match=r"expects \(batch, 8, 8, 1\)"):
        cactus_keras.certify(net, x[..., 0], y, 0.1)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        cactus_keras.certify(net, x, np.array([0, 1, 2, 3]), 0.1)
    with pytest.raises(ValueError, match="one-hot"):
        cactus_keras.certify(net, x, np.eye(3)[[0, 1, 2, 0]], 0.1)
    with pytest.raises(ValueError, match="4 samples but `y` has 3"):
        cactus_keras.certify(net, x, y[:3], 0.1)


def test_unsupported_layer_is_named():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4)(inputs)
    h = keras.layers.LayerNormalization(name="my_norm")(h)
    net = keras.Model(inputs, keras.layers.Dense(2)(h))
    with pytest.raises(bounds.UnsupportedModelError, match=r"'my_norm' \(LayerNormalization\)"):
        cactus_keras.certify(net, np.zeros((2, 4)), [0, 1], 0.1)


def test_non_monotone_activation_is_named():
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="gelu", name="g"), keras.layers.Dense(2)])
    with pytest.raises(bounds.UnsupportedModelError, match="activation=gelu"):
        cactus_keras.certify(net, np.zeros((2, 4)), [0, 1], 0.1)


def test_unbuilt_sequential_and_subclassed_models_explain_the_fix():
    with pytest.raises(bounds.UnsupportedModelError, match="keras.Input"):
        cactus_keras.certify(keras.Sequential([keras.layers.Dense(2)]), np.zeros((2, 4)), [0, 1], 0.1)

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4)))
    with pytest.raises(bounds.UnsupportedModelError, match="subclassed"):
        cactus_keras.certify(net, np.zeros((2, 4)), [0, 1], 0.1)


def test_crown_memory_is_estimated_and_refused_with_advice(monkeypatch):
    from cactus_keras.bounds.propagation import crown_bytes_per_sample
    from cactus_keras.certification import certificates

    net = _cnn()
    graph = bounds.parse_network(net)
    # The conv reads the input box (exact interval, not refined); the 16 pre-activations
    # of Dense(16) are refined, [I; -I] rows over the widest earlier value (4x4x4 = 64).
    assert crown_bytes_per_sample(graph) == 4 * 2 * 16 * 64
    monkeypatch.setattr(certificates, "CROWN_SAMPLE_LIMIT", 1000)
    x, y = _data(4)
    with pytest.raises(ValueError, match="crown-ibp"):
        cactus_keras.certify(net, x, y, 0.1, bound="crown")
    # IBP needs no such memory and still runs.
    assert cactus_keras.certify(net, x, y, 0.1, bound="ibp", verbose=0).certified.shape == (4,)


@pytest.mark.parametrize(
    "shape, filters, padding",
    [((1, 6, 6), 4, "same"), ((1, 6, 4), 4, "valid"), ((2, 5, 7), 3, "valid")],
)
def test_channels_first_conv_margins_and_predictions_are_one_computation(shape, filters,
                                                                        padding):
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(filters, 3, padding=padding, data_format="channels_first",
                               bias_initializer=keras.initializers.RandomNormal(stddev=3.0))
    net = keras.Sequential([keras.Input(shape), conv, keras.layers.Flatten(),
                            keras.layers.Dense(3)])
    x = np.random.default_rng(0).uniform(0, 1, (32, *shape)).astype("float32")
    logits = net.predict(x, verbose=0)
    np.testing.assert_allclose(net(x).numpy(), logits, atol=1e-4)
    y = np.random.default_rng(1).integers(0, 3, 32)
    result = cactus_keras.certify(net, x, y, 0.0, verbose=0)
    # At epsilon 0 the margin bounds are the margins of the logits that `predicted` and
    # the clean accuracy come from.
    margins = logits[np.arange(32), y][:, None] - logits
    np.testing.assert_allclose(result.margin_lower, margins, atol=1e-3)
    np.testing.assert_array_equal(result.predicted, logits.argmax(-1))
    np.testing.assert_array_equal(result.certified, result.correct & (np.sort(
        np.where(np.eye(3, dtype=bool)[y], np.inf, margins), axis=1)[:, 0] > 0))


@pytest.mark.parametrize("shape, filters, padding",
                         [((1, 6, 6), 4, "valid"), ((2, 5, 5), 5, "same")])
def test_channels_first_conv_with_as_many_filters_as_columns_is_refused(shape, filters,
                                                                       padding):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras adds the bias along the channels on this backend")
    conv = keras.layers.Conv2D(filters, 3, padding=padding, data_format="channels_first",
                               name="cf_conv")
    net = keras.Sequential([keras.Input(shape), conv, keras.layers.Flatten(),
                            keras.layers.Dense(3)])
    x = np.random.default_rng(0).uniform(0, 1, (4, *shape)).astype("float32")
    with pytest.raises(bounds.UnsupportedModelError,
                       match=r"Conv layer 'cf_conv' \(data_format='channels_first'\) has as "
                             r"many filters.*data_format='channels_last'"):
        cactus_keras.certify(net, x, np.zeros(4, "int64"), 0.01, verbose=0)
