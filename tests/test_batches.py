"""The experiment runner's batches: an order fixed by (seed, epoch), and on TensorFlow
the same batches through tf.data."""

import keras
import numpy as np
import pytest

from cactus_keras.experiments.training import ShuffledBatches


def _batches(n=70, batch_size=16, seed=3):
    rng = np.random.default_rng(0)
    x = rng.random((n, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 5, n)
    return ShuffledBatches(x, y, batch_size, seed)


def test_each_epoch_is_a_permutation_in_sorted_batches():
    batches = _batches()
    for epoch in (0, 1):
        batches.epoch = epoch
        indices = np.concatenate([batches.order(epoch)[i * 16:(i + 1) * 16] for i in range(len(batches))])
        assert sorted(indices.tolist()) == list(range(70))
        for i in range(len(batches)):
            chunk = batches.order(epoch)[i * 16:(i + 1) * 16]
            assert np.all(np.diff(chunk) > 0)
            np.testing.assert_array_equal(batches[i][0], batches.x[chunk])
    assert not np.array_equal(batches.order(0), batches.order(1))
    # Fixed by (seed, epoch): another object, the same order.
    np.testing.assert_array_equal(_batches().order(1), batches.order(1))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data path")
def test_the_tf_dataset_gives_the_same_batches_as_the_py_dataset():
    batches = _batches()
    dataset = batches.as_tf_dataset()
    assert int(dataset.cardinality()) == len(batches) == 5
    for epoch in (0, 2):
        batches.epoch = epoch  # as EpochOfBatches sets it before the epoch's iteration
        got = list(dataset.as_numpy_iterator())
        assert len(got) == len(batches)
        for i, (bx, by) in enumerate(got):
            ex, ey = batches[i]
            np.testing.assert_array_equal(bx, ex)
            np.testing.assert_array_equal(by, ey)
