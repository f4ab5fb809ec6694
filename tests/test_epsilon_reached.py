"""Certified training whose epsilon ramp cannot reach its target says so at the start,
and the epsilon actually reached is recorded in the run's files and the report."""

import csv
import json
import types

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import cli
from cactus_keras.experiments import TrainConfig
from cactus_keras.experiments.report import report_markdown, unreached_lines
from cactus_keras.experiments.runner import _epsilon_reached
from cactus_keras.experiments.training import epsilon_reached, train
from cactus_keras.training.schedules import EpsilonRamp


@pytest.mark.parametrize(
    "epochs, steps, expected",
    [(2, 1, 0.0), (3, 1, 0.1), (3, 5, 0.1), (10, 1, 0.1)],
)
def test_final_value_is_what_the_last_batch_trains_at(epochs, steps, expected):
    ramp = EpsilonRamp(1, start_epoch=1, end=0.1)
    assert ramp.final_value(epochs, steps) == pytest.approx(expected)
    # Batch b of epoch e trains at value_at(e + b / steps): the last one.
    assert ramp.final_value(epochs, steps) == ramp.value_at(epochs - 1 + (steps - 1) / steps)


def test_two_epochs_with_a_ramp_of_one_stop_short():
    ramp = EpsilonRamp(1, start_epoch=1, end=0.1)
    assert 0 < ramp.final_value(2, 3) < 0.1


class LastEpsilon(keras.callbacks.Callback):
    """The epsilon each training batch saw (the ramp sets it in on_train_batch_begin)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(float(keras.ops.convert_to_numpy(self.model.epsilon.value)))


def _fit(epochs, batch_size, capsys):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(2)])
    model = cactus_keras.CactusModel(net, epsilon=0.1)
    model.compile(optimizer="adam")
    x = np.random.default_rng(0).uniform(0, 1, (12, 4)).astype("float32")
    y = np.arange(12) % 2
    ramp, seen = EpsilonRamp(1, start_epoch=1), LastEpsilon()
    capsys.readouterr()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[ramp, seen])
    return ramp, seen.seen, capsys.readouterr().out


def test_fit_says_at_the_start_when_epsilon_cannot_be_reached(capsys):
    # One batch per epoch: the ramp's only epoch trains at its start value, 0.
    ramp, seen, out = _fit(2, 12, capsys)
    assert seen == [0.0, 0.0] and ramp.reached == 0.0
    lines = [line for line in out.splitlines() if "Warning" in line]
    assert len(lines) == 1
    assert lines[0].startswith("Warning: epsilon cannot reach its target 0.1:")
    assert "the last batch trains at epsilon 0." in lines[0]
    assert "train at least 3 epochs" in lines[0] and "smaller batch size" in lines[0]
    # A few batches: close, still short; said with the value reached.
    ramp, seen, out = _fit(2, 4, capsys)
    assert seen[-1] == pytest.approx(ramp.reached) and 0 < ramp.reached < 0.1
    assert f"trains at epsilon {ramp.reached:.4g}" in out
    # Long enough: silent, and the target is reached.
    ramp, seen, out = _fit(3, 4, capsys)
    assert seen[-1] == pytest.approx(0.1) and ramp.reached == pytest.approx(0.1)
    assert "Warning" not in out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 6, 6), dtype=np.uint8)
    y = (x.reshape(24, -1).mean(axis=1) > 127).astype("int64")
    path = tmp_path_factory.mktemp("reach") / "tiny.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return str(path)


def test_train_records_the_epsilon_reached(data, tmp_path, capsys):
    dataset = cactus_keras.data.load(data, download=False)
    config = TrainConfig(dataset=data, epsilon=0.05, arch="mlp", epochs=2, batch_size=24,
                         compression="none", validation_samples=0)
    capsys.readouterr()
    train(config, dataset, str(tmp_path / "run"), verbose=0)
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epsilon_reached"] == 0.0 == epsilon_reached(config, 1)
    assert out.count("Warning: epsilon cannot reach its target 0.05") == 1
    with open(tmp_path / "run" / "training_log.csv") as f:
        assert float(list(csv.DictReader(f))[-1]["epsilon"]) == saved["epsilon_reached"]
    assert _epsilon_reached(str(tmp_path / "run")) == 0.0
    # A schedule that reaches it records the target.
    reaching = TrainConfig(dataset=data, epsilon=0.05, arch="mlp", epochs=3, batch_size=8,
                           compression="none", validation_samples=0)
    train(reaching, dataset, str(tmp_path / "ok"), verbose=0)
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert saved["epsilon_reached"] == pytest.approx(0.05)
    assert "Warning" not in capsys.readouterr().out


def test_cli_train_warns_once_at_the_start(data, tmp_path, capsys):
    code = cli.main(["train", "--dataset", data, "--epsilon", "0.05", "--arch", "mlp",
                     "--epochs", "2", "--batch-size", "64", "--compression", "none",
                     "--output", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert code == 0
    text = out.out + out.err
    assert text.count("Warning: epsilon cannot reach its target 0.05") == 1
    first = next(line for line in text.splitlines() if line.strip())
    assert first.startswith("Warning: epsilon cannot reach"), first
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epsilon_reached"] == 0.0


def test_the_report_names_runs_that_never_reached_epsilon():
    config = types.SimpleNamespace(epsilon=0.1)
    records = [{"run": "cactus", "seed": 0, "epsilon_reached": 0.0846},
               {"run": "cactus", "seed": 1, "epsilon_reached": 0.1},
               {"run": "tfmot", "seed": 0}]
    (line, blank) = unreached_lines(config, records)
    assert line.startswith("**Epsilon not reached in training:** cactus seed 0 at 0.0846 "
                           "(of 0.1)") and "seed 1" not in line and blank == ""
    assert unreached_lines(config, records[1:]) == []
