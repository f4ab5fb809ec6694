"""Pruning masks against NumPy references, and their errors."""

import keras
import numpy as np
import pytest
from keras import ops

import cactus_keras
from cactus_keras.compression import magnitude_masks, compressible_kernels, sparsity


def _kernels(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 3, 2, 4)).astype("float32"), rng.normal(size=(36, 5)).astype("float32")]


def _reference(kernels, ratio, method):
    if method == "local_l1":
        out = []
        for k in kernels:
            flat = np.abs(k).ravel()
            pruned = np.argsort(flat, kind="stable")[: int(round(ratio * flat.size))]
            mask = np.ones(flat.size, "float32")
            mask[pruned] = 0
            out.append(mask.reshape(k.shape))
        return out
    if method == "global_l1":
        flat = np.concatenate([np.abs(k).ravel() for k in kernels])
        pruned = np.argsort(flat, kind="stable")[: int(round(ratio * flat.size))]
        mask = np.ones(flat.size, "float32")
        mask[pruned] = 0
        out, start = [], 0
        for k in kernels:
            out.append(mask[start : start + k.size].reshape(k.shape))
            start += k.size
        return out
    scores = np.concatenate([np.sqrt((k.reshape(-1, k.shape[-1]) ** 2).mean(0)) for k in kernels])
    pruned = np.argsort(scores, kind="stable")[: int(round(ratio * scores.size))]
    unit = np.ones(scores.size, "float32")
    unit[pruned] = 0
    out, start = [], 0
    for k in kernels:
        out.append(np.broadcast_to(unit[start : start + k.shape[-1]], k.shape))
        start += k.shape[-1]
    return out


@pytest.mark.parametrize("method", ["global_l1", "local_l1", "global_l2_structured"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.9])
def test_masks_match_numpy_reference(method, ratio):
    kernels = _kernels()
    masks = [ops.convert_to_numpy(m) for m in magnitude_masks(kernels, ratio, method)]
    for got, want in zip(masks, _reference(kernels, ratio, method)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method", ["global_l1", "local_l1"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7, 0.95])
def test_achieved_sparsity_equals_requested_ratio_even_with_ties(method, ratio):
    kernels = _kernels(1)
    # Many exactly equal magnitudes: a threshold would prune all of them at once.
    kernels[0][:, :, :, :2] = 0.5
    masks = magnitude_masks(kernels, ratio, method)
    if method == "global_l1":
        total = sum(k.size for k in kernels)
        assert sparsity(masks) == pytest.approx(round(ratio * total) / total)
    else:
        for k, m in zip(kernels, masks):
            zeros = float(np.sum(ops.convert_to_numpy(m) == 0))
            assert zeros == round(ratio * k.size)


def test_structured_ratio_counts_units():
    kernels = _kernels(2)
    masks = [ops.convert_to_numpy(m) for m in magnitude_masks(kernels, 0.5, "global_l2_structured")]
    units = [np.all(m == 0, axis=tuple(range(m.ndim - 1))) for m in masks]
    assert sum(u.sum() for u in units) == round(0.5 * 9)
    for m, u in zip(masks, units):
        assert np.all(m[..., ~u] == 1)


def test_ratio_sampled_as_tensor():
    kernels = _kernels()
    masks = magnitude_masks(kernels, ops.convert_to_tensor(0.5), "global_l1")
    assert sparsity(masks) == pytest.approx(0.5, abs=1e-3)


def test_compressible_kernels_skip_bias_batchnorm_and_optionally_output():
    net = cactus_keras.models.cnn3(batch_norm=True)
    kernels = compressible_kernels(net)
    assert [k.path.split("/")[-2] for k in kernels] == ["block1_conv", "block2_conv", "logits"]
    assert len(compressible_kernels(net, exclude_output=True)) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 1.0}, r"\[0, 1\)"),
        ({"ratio": -0.1}, r"\[0, 1\)"),
        ({"ratio": (0.8, 0.2)}, "low <= high"),
        ({"ratio": (0.1, 0.2, 0.3)}, "low, high"),
        ({"pruning_method": "random"}, "global_l1"),
        ({"num_samples": 0}, "num_samples"),
        ({"refresh_every": 0}, "refresh_every"),
    ],
)
def test_pruning_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cactus_keras.Pruning(**kwargs)


def test_network_with_nothing_prunable():
    net = keras.Sequential([keras.Input((4,)), keras.layers.Rescaling(2.0), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no compressible kernel"):
        compressible_kernels(net)
    out_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="other than the output layer"):
        cactus_keras.CactusModel(out_only, 0.1, compression=[cactus_keras.Pruning(exclude_output=True)])


def test_evaluate_compressed_rows_and_network_untouched():
    keras.utils.set_random_seed(0)
    net = cactus_keras.models.cnn3((12, 12, 1), 3, batch_norm=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 12, 12, 1)).astype("float32")
    y = net.predict(x, verbose=0).argmax(-1)
    weights = [w.copy() for w in net.get_weights()]
    table = cactus_keras.evaluate_compressed(net, x, y, 0.001, ratios=[0, 0.5], pruning_method=["global_l1", "local_l1"])
    assert [(r["pruning_method"], r["ratio"]) for r in table.rows] == [
        ("global_l1", 0.0), ("global_l1", 0.5), ("local_l1", 0.0), ("local_l1", 0.5)]
    assert table.lookup(0.0, "global_l1")["clean_accuracy"] == 1.0
    direct = cactus_keras.certify(net, x, y, 0.001, verbose=0).certified_accuracy
    assert table.lookup(0.0, "local_l1")["certified_accuracy"] == direct
    assert table.lookup(0.5, "global_l1")["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert not table.recalibrated_batchnorm
    recalibrated = cactus_keras.evaluate_compressed(net, x, y, 0.001, ratios=[0.5], recalibrate_batchnorm=x)
    assert recalibrated.recalibrated_batchnorm
    for before, after in zip(weights, net.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert "global_l1" in str(table)
