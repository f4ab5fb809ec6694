"""Certified fine-tuning of one fixed compressed network (the baselines' second stage):
a CactusModel with one fixed member and no full network."""

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras.compression import fake_quantize, magnitude_masks, compressible_kernels
from cactus_keras.compression import FixedMaskPruning, StraightThroughQuantization
from cactus_keras.compression.masks import output_is_excluded


def MaskedFineTuning(network, epsilon, ratio, method="global_l1"):
    return cactus_keras.CactusModel(
        network, epsilon, include_full_network=False,
        compression=[FixedMaskPruning(ratio, pruning_method=method)])


def QuantizedFineTuning(network, epsilon, bits=8):
    return cactus_keras.CactusModel(
        network, epsilon, include_full_network=False,
        compression=[StraightThroughQuantization(bits)])


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 16, 16, 1)).astype("float32") * 0.3
    for i, c in enumerate(y):
        x[i, 5 * c : 5 * c + 5, :, 0] += 0.6
    return np.clip(x, 0, 1), y


def _kernels(network, exclude_output=False):
    return [keras.ops.convert_to_numpy(k).copy() for k in compressible_kernels(network, exclude_output)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["global_l1", "local_l1", "global_l2_structured"])
def test_masked_fine_tuning_keeps_the_mask_fixed(method):
    x, y = _data()
    network = cactus_keras.models.cnn3((16, 16, 1), 3)
    # The structured method never prunes output units.
    excluded = output_is_excluded(method, False)
    before = _kernels(network, excluded)
    expected = [keras.ops.convert_to_numpy(m) for m in magnitude_masks(before, 0.6, method)]
    model = MaskedFineTuning(network, 0.01, ratio=0.6, method=method)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    after = _kernels(model.apply_compression(), excluded)
    for mask, old, new in zip(expected, before, after):
        assert np.all(new[mask == 0] == 0)
        kept = mask == 1
        # The kept weights were trained.
        assert not np.allclose(new[kept], old[kept])


def test_masked_fine_tuning_metrics_are_those_of_the_pruned_network():
    x, y = _data()
    network = cactus_keras.models.cnn3((16, 16, 1), 3)
    model = MaskedFineTuning(network, 0.01, ratio=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    metrics = model.evaluate(x, y, verbose=0, return_dict=True)
    pruned = model.apply_compression()
    result = cactus_keras.certify(pruned, x, y, 0.01)
    assert "certified_accuracy" not in metrics  # no full network in the set
    assert metrics["certified_accuracy_pruned"] == pytest.approx(result.certified_accuracy, abs=1e-6)
    assert metrics["clean_accuracy_pruned"] == pytest.approx(result.clean_accuracy, abs=1e-6)


def test_quantized_fine_tuning_trains_through_the_straight_through_estimator():
    x, y = _data()
    network = cactus_keras.models.cnn3((16, 16, 1), 3)
    before = _kernels(network)
    model = QuantizedFineTuning(network, 0.01, bits=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    trained = _kernels(network)
    # Rounding has zero gradient almost everywhere: without the STE nothing would move.
    assert all(not np.allclose(a, b) for a, b in zip(trained, before))
    metrics = model.evaluate(x, y, verbose=0, return_dict=True)
    quantized = model.apply_compression()
    for value, float_kernel in zip(_kernels(quantized), trained):
        np.testing.assert_allclose(value, keras.ops.convert_to_numpy(fake_quantize(float_kernel, 4)), atol=1e-6)
    result = cactus_keras.certify(quantized, x, y, 0.01)
    assert metrics["certified_accuracy_quantized"] == pytest.approx(result.certified_accuracy, abs=1e-6)


def test_a_fine_tuning_model_saves_and_loads_with_its_fixed_mask(tmp_path):
    x, y = _data()
    network = cactus_keras.models.cnn3((16, 16, 1), 3)
    model = MaskedFineTuning(network, 0.01, ratio=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.include_full_network is False
    # The loaded mask is the saved one, not one recomputed from the trained weights.
    for a, b in zip(model._member_states[0], loaded._member_states[0]):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    for a, b in zip(_kernels(loaded.apply_compression()), _kernels(model.apply_compression())):
        np.testing.assert_array_equal(a, b)


def test_members_alone_need_a_member():
    with pytest.raises(ValueError, match="at least one member"):
        cactus_keras.CactusModel(cactus_keras.models.cnn3((16, 16, 1), 3), 0.01,
                                 include_full_network=False)


def test_bad_arguments():
    network = cactus_keras.models.cnn3((16, 16, 1), 3)
    with pytest.raises(ValueError, match="ratio"):
        MaskedFineTuning(network, 0.01, ratio=1.0)
    with pytest.raises(ValueError, match="pruning_method"):
        MaskedFineTuning(network, 0.01, ratio=0.5, method="l3")
    with pytest.raises(ValueError, match="bits"):
        QuantizedFineTuning(network, 0.01, bits=12)
