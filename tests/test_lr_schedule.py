"""The learning-rate schedule: constant, step and cosine, per epoch, across a resume."""

import csv
import json
import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import cli
from cactus_keras.experiments import TrainConfig
from cactus_keras.training import EpochLearningRate, check_lr_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordLearningRate(keras.callbacks.Callback):
    """The optimizer's learning rate as the first batch of each epoch sees it."""

    def __init__(self):
        super().__init__()
        self.rates = {}
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.rates[self._epoch] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


def _fit_rates(schedule, epochs=5, **options):
    """`(rates read from the optimizer, rates logged, the weight's step each epoch)`.

    One SGD step per epoch on the mean absolute error of a kernel far below its target:
    the gradient is -1, so each epoch moves the kernel by exactly its learning rate.
    """
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mae")
    record = RecordLearningRate()
    kernels = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: kernels.append(
        float(keras.ops.convert_to_numpy(model.layers[0].kernel)[0, 0])))
    history = model.fit(np.ones((4, 1)), np.full((4, 1), 100.0), batch_size=4, epochs=epochs,
                        verbose=0, callbacks=[EpochLearningRate(schedule, epochs, 0.1, **options),
                                              record, keep])
    steps = np.diff([0.0] + kernels)
    return [record.rates[e] for e in range(epochs)], history.history["learning_rate"], steps


def test_step_schedule_decays_after_the_given_epochs():
    rates, logged, steps = _fit_rates("step", lr_decay_epochs=(2, 4), lr_decay_factor=0.5)
    expected = [0.1, 0.1, 0.05, 0.05, 0.025]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    np.testing.assert_allclose(logged, expected, rtol=1e-6)
    # The optimizer steps with that rate.
    np.testing.assert_allclose(steps, expected, rtol=1e-5)


def test_cosine_schedule_follows_half_a_cosine_over_the_epochs():
    rates, _, steps = _fit_rates("cosine", epochs=4)
    expected = [0.1 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    np.testing.assert_allclose(steps, expected, rtol=1e-5)
    assert rates[0] == pytest.approx(0.1) and rates[2] == pytest.approx(0.05)


def test_constant_schedule_keeps_the_rate():
    rates, _, _ = _fit_rates("constant", epochs=3)
    np.testing.assert_allclose(rates, [0.1] * 3, rtol=1e-6)


@pytest.mark.parametrize("epochs, expected", [(20, (14, 17)), (70, (49, 60)), (160, (112, 136)),
                                              (10, (7, 9)), (2, (1,)), (1, ())])
def test_step_defaults_are_about_70_and_85_percent(epochs, expected):
    decay_epochs, factor = check_lr_schedule("step", epochs)
    assert decay_epochs == expected and factor == 0.2
    # The default epochs are those the rounding of 70% and 85% gives, inside the run.
    assert all(abs(e - f * epochs) <= 0.5 for e, f in zip(decay_epochs, (0.7, 0.85)))


def test_train_config_resolves_and_saves_the_step_defaults():
    config = TrainConfig(dataset="d", epsilon=0.1, epochs=20, lr_schedule="step")
    assert config.lr_decay_epochs == (14, 17) and config.lr_decay_factor == 0.2
    assert config.to_dict()["lr_decay_epochs"] == [14, 17]
    # A config read back from its saved dict is the same config.
    assert TrainConfig(**config.to_dict()) == config
    plain = TrainConfig(dataset="d", epsilon=0.1, epochs=20)
    assert plain.lr_schedule == "constant" and plain.lr_decay_epochs is None


@pytest.mark.parametrize("options, message", [
    (dict(lr_schedule="linear"), r"Unknown `lr_schedule` 'linear'"),
    (dict(lr_schedule="step", lr_decay_epochs=[0, 5]), r"`lr_decay_epochs` .*\[1, 9\]"),
    (dict(lr_schedule="step", lr_decay_epochs=[5, 10]), r"`lr_decay_epochs` .*\[1, 9\]"),
    (dict(lr_schedule="step", lr_decay_epochs=[6, 5]), r"`lr_decay_epochs` must be increasing"),
    (dict(lr_schedule="step", lr_decay_factor=0.0), r"`lr_decay_factor` .*\(0, 1\]"),
    (dict(lr_schedule="step", lr_decay_factor=-0.2), r"`lr_decay_factor`"),
    (dict(lr_schedule="cosine", lr_decay_factor=0.2), r"`lr_decay_factor` is an option of the 'step'"),
    (dict(lr_decay_epochs=[5]), r"`lr_decay_epochs` is an option of the 'step'"),
])
def test_bad_schedules_are_one_line_errors_naming_the_parameter(options, message):
    with pytest.raises(ValueError, match=message) as raised:
        TrainConfig(dataset="d", epsilon=0.1, epochs=10, **options)
    assert "\n" not in str(raised.value)
    config_options = {k: v for k, v in options.items() if k != "lr_schedule"}
    with pytest.raises(ValueError, match=message):
        EpochLearningRate(options.get("lr_schedule", "constant"), 10, 1e-3, **config_options)


@pytest.mark.parametrize("flags, message", [
    (["--lr-schedule", "exp"], "Unknown --lr-schedule 'exp'"),
    (["--lr-schedule", "step", "--lr-decay-epochs", "3"], r"--lr-decay-epochs must be .*\[1, 2\]"),
    (["--lr-schedule", "step", "--lr-decay-factor", "0"], r"--lr-decay-factor .*\(0, 1\]"),
    (["--lr-decay-factor", "0.5"], r"--lr-decay-factor is an option of the 'step' --lr-schedule"),
])
def test_bad_schedule_flags_are_one_line_errors_naming_the_flag(tmp_path, capsys, flags, message):
    code = cli.main(["train", "--dataset", str(tmp_path / "none.npz"), "--epsilon", "0.1",
                     "--epochs", "3", "--output", str(tmp_path / "run"), *flags])
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cactus-keras train: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


# ----- across a resume -----

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 6, 6), dtype=np.uint8)
    y = (x.reshape(40, -1).mean(axis=1) > 127).astype("int64")
    path = tmp_path_factory.mktemp("lr") / "tiny.npz"
    np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    return cactus_keras.data.load(str(path), download=False)


def _log_rates(directory):
    with open(os.path.join(directory, "training_log.csv")) as f:
        return {int(row["epoch"]): float(row["learning_rate"]) for row in csv.DictReader(f)}


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_a_resumed_run_continues_the_schedule(data, tmp_path, schedule):
    from cactus_keras.experiments.training import train

    options = dict(lr_decay_epochs=(1, 3), lr_decay_factor=0.5) if schedule == "step" else {}
    config = TrainConfig(dataset="tiny", epsilon=0.01, arch="mlp", epochs=4, batch_size=16,
                         learning_rate=0.01, compression="none", validation_samples=0,
                         lr_schedule=schedule, **options)
    whole_record = RecordLearningRate()
    whole = train(config, data, str(tmp_path / "whole"), verbose=0, callbacks=[whole_record])
    with pytest.raises(KeyboardInterrupt):
        train(config, data, str(tmp_path / "cut"), verbose=0, callbacks=[Interrupt()])
    resumed_record = RecordLearningRate()
    resumed = train(config, data, str(tmp_path / "cut"), verbose=0, resume=True,
                    callbacks=[resumed_record])
    expected = [0.01 * (0.5 ** sum(e >= d for d in (1, 3)) if schedule == "step"
                        else (1 + math.cos(math.pi * e / 4)) / 2) for e in range(4)]
    np.testing.assert_allclose([whole_record.rates[e] for e in range(4)], expected, rtol=1e-6)
    # The resumed run trains epochs 3 and 4 only, at the uninterrupted run's rates.
    assert sorted(resumed_record.rates) == [2, 3]
    for epoch in (2, 3):
        assert resumed_record.rates[epoch] == pytest.approx(whole_record.rates[epoch], rel=1e-6)
    assert _log_rates(tmp_path / "cut") == pytest.approx(_log_rates(tmp_path / "whole"), rel=1e-6)
    for a, b in zip(whole.network.get_weights(), resumed.network.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


JAX_SCRIPT = """
import json
import keras, numpy as np
from cactus_keras.training import EpochLearningRate
assert keras.backend.backend() == "jax"
model = keras.Sequential([keras.Input((1,)),
                          keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mae")
kernels = []
keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: kernels.append(
    float(keras.ops.convert_to_numpy(model.layers[0].kernel)[0, 0])))
history = model.fit(np.ones((4, 1)), np.full((4, 1), 100.0), batch_size=4, epochs=3, verbose=0,
                    callbacks=[EpochLearningRate("step", 3, 0.1, lr_decay_epochs=(1, 2)), keep])
print(json.dumps([float(v) for v in history.history["learning_rate"] + list(np.diff([0.0] + kernels))]))
"""


@pytest.mark.slow
def test_the_schedule_sets_the_rate_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    # The logged rates, then the weight's step of each epoch: the optimizer used them.
    np.testing.assert_allclose(seen, [0.1, 0.02, 0.004] * 2, rtol=1e-5)
