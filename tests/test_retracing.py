"""Repeated calls reuse their compiled functions: fine-tuning (fit and evaluate twice,
then certification of the compressed network) and a tuning trial's epochs trace each
step function once, not once per call.

A Keras step function's Python body runs only while TensorFlow traces it, so counting
calls of `train_step`, `test_step` and `predict_step` counts traces.
"""

import collections

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras.bounds.margins import BoundedModel
from cactus_keras.compression import FixedMaskPruning

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="counts tf.function traces")


@pytest.fixture
def traces(monkeypatch):
    counts = collections.Counter()

    def count(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            counts[f"{cls.__name__}.{name}"] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    count(cactus_keras.CactusModel, "train_step")
    count(cactus_keras.CactusModel, "test_step")
    count(BoundedModel, "predict_step")
    return counts


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    return x, (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")


def _network():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])


def test_fine_tuning_traces_each_step_once(traces):
    x, y = _data()
    network = _network()
    model = cactus_keras.CactusModel(network, 0.01, compression=[FixedMaskPruning(0.5)],
                                     include_full_network=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))

    def work():
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        model.evaluate(x, y, batch_size=16, verbose=0)
        cactus_keras.evaluate_compressed(network, x, y, 0.01, ratios=[0.5])
        cactus_keras.certify(model, x, y, 0.01)

    work()
    first = dict(traces)
    assert first["CactusModel.train_step"] >= 1 and first["BoundedModel.predict_step"] >= 1
    work()
    work()
    assert dict(traces) == first
    # The counter sees a retrace: a new model is a new function.
    cactus_keras.certify(keras.models.clone_model(network), x, y, 0.01)
    assert traces["BoundedModel.predict_step"] > first["BoundedModel.predict_step"]


@pytest.mark.slow
def test_a_tuning_trial_traces_nothing_after_its_first_epoch(traces):
    keras_tuner = pytest.importorskip("keras_tuner")
    from cactus_keras.tuning import CactusHyperModel

    x, y = _data()
    hypermodel = CactusHyperModel(_network, epsilon=0.01, targets="prune:0.5,quantize:8",
                                  epochs=4, standard_weight=0.5, awp_radius=1.0)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    after_epoch = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            after_epoch.append(dict(traces))

    hypermodel.fit(hp, model, x[:48], y[:48], validation_data=(x[48:], y[48:]), epochs=4,
                   batch_size=16, verbose=0, callbacks=[Snapshot()])
    assert len(after_epoch) == 4
    assert after_epoch[-1] == after_epoch[0], after_epoch
