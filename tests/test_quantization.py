"""Fake quantization against NumPy, and the AWP quantization member."""

import keras
import numpy as np
import pytest
from keras import ops

import cactus_keras
from cactus_keras.compression import AWPQuantization, fake_quantize, quantization_scale


def _numpy_fake_quantize(w, bits, per_channel):
    levels = 2 ** (bits - 1) - 1
    if per_channel:
        largest = np.abs(w).reshape(-1, w.shape[-1]).max(0)
    else:
        largest = np.abs(w).max()
    scale = np.where(largest > 0, largest / levels, 1.0)
    return np.clip(np.round(w / scale), -levels, levels) * scale


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("shape", [(3, 3, 2, 5), (20, 7)])
def test_fake_quantize_matches_numpy(bits, per_channel, shape):
    w = np.random.default_rng(bits).normal(size=shape).astype("float32")
    w[..., 0] = 0.0  # an all-zero channel keeps its zeros
    got = ops.convert_to_numpy(fake_quantize(w, bits, per_channel))
    np.testing.assert_allclose(got, _numpy_fake_quantize(w, bits, per_channel), rtol=1e-6, atol=1e-7)
    levels = 2 ** (bits - 1) - 1
    scale = ops.convert_to_numpy(quantization_scale(w, bits, per_channel))
    codes = got / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert np.abs(codes).max() <= levels + 1e-4
    # Round to nearest: each weight moves by at most half a step.
    assert np.all(np.abs(got - w) <= scale / 2 + 1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 1}, "2 to 8"), ({"bits": 9}, "2 to 8"), ({"bits": 8.0}, "2 to 8"),
    ({"awp_radius": -0.1}, "eta"), ({"awp_steps": 0}, "awp_steps"),
])
def test_quantization_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AWPQuantization(**kwargs)


def _model(eta=0.5, steps=1, seed=0):
    keras.utils.set_random_seed(seed)
    net = cactus_keras.models.cnn3((12, 12, 1), 3)
    model = cactus_keras.CactusModel(net, 0.02, standard_weight=0.2,
                                     compression=[AWPQuantization(bits=4, awp_radius=eta, awp_steps=steps)])
    model.compile(optimizer="adam")
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (n, 12, 12, 1)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize("steps", [1, 3])
def test_awp_delta_respects_its_radius_and_increases_the_member_loss(steps):
    model = _model(eta=0.5, steps=steps)
    x, y = _data()
    member = model.compression[0]
    kernels = member.select_kernels(model.network)
    current = [ops.convert_to_numpy(k.value) for k in kernels]
    results = {}

    def evaluate(mapping):
        # The member loss as CactusModel computes it, recorded for both points.
        with keras.StatelessScope(state_mapping=mapping):
            box = cactus_keras.bounds.input_box(x, model.epsilon.value)
            margins, logits = cactus_keras.bounds.margin_lower_bounds(
                model.graph, box, y, "ibp", clean=x, training=True)
        labels = ops.convert_to_tensor(y.astype("int32"))
        per_sample = 0.2 * cactus_keras.training.losses.standard_loss(labels, logits) + \
            0.8 * cactus_keras.training.losses.certified_loss(labels, margins)
        return per_sample, None, None, logits, margins

    context = cactus_keras.compression.MemberContext(
        name=member.name, step=model.train_steps.value, seed_generator=model.seed_generator,
        training=True, loss=lambda vals: ops.mean(evaluate(model._mapping(kernels, vals))[0]))
    values = member.compress([k.value for k in kernels], context)
    radii = [ops.convert_to_numpy(r) for r in member.radii(current)]
    moved = 0
    for value, c, r in zip(values, current, radii):
        delta = ops.convert_to_numpy(value) - c
        assert np.all(np.abs(delta) <= r * (1 + 1e-5) + 1e-8)
        moved += np.mean(np.abs(delta) > 0.5 * r)
    assert moved > 0.5 * len(values)  # most weights move far: the ascent is not a no-op
    loss_at = lambda vals: float(ops.mean(evaluate(model._mapping(kernels, vals))[0]))
    assert loss_at(values) > loss_at(current) * 1.01


def test_awp_radius_covers_rounding_so_quantized_kernels_lie_in_the_ball():
    model = _model(eta=0.5)
    kernels = [k.value for k in model.compression[0].select_kernels(model.network)]
    member = model.compression[0]
    for k, r in zip(kernels, member.radii(kernels)):
        q = fake_quantize(k, member.bits, member.per_channel)
        assert np.all(np.abs(ops.convert_to_numpy(q - k)) <= ops.convert_to_numpy(r) + 1e-7)


@pytest.mark.slow
def test_quantized_member_trains_logs_metrics_and_saves(tmp_path):
    model = _model()
    x, y = _data()
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert "certified_accuracy_quantized" in history.history
    # In evaluation the member is the fake-quantized network itself.
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    table = cactus_keras.evaluate_compressed(model, x, y, 0.02, ratios=[], bits=[4])
    assert logs["certified_accuracy_quantized"] == pytest.approx(table.rows[0]["certified_accuracy"])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.compression[0].get_config() == model.compression[0].get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_pruning_and_quantization_members_combine():
    keras.utils.set_random_seed(0)
    net = cactus_keras.models.cnn3((12, 12, 1), 3)
    model = cactus_keras.CactusModel(net, 0.02, compression=[cactus_keras.Pruning(0.5), AWPQuantization(bits=8)])
    model.compile(optimizer="adam")
    x, y = _data(32)
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert {"certified_accuracy_pruned", "certified_accuracy_quantized"} <= set(history.history)
    assert [r.name for r in model.member_results(x, y, training=False)] == [None, "pruned", "quantized"]
