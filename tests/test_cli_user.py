"""The command line as a careful user meets it: resumable, never overwriting work,
fast to start, one-line errors in the flags' own words, honest logs.

Each test runs a command, checks its exit code and its one-line message, and that no
traceback is printed and no earlier output is lost or changed.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from cactus_keras import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


def _error(capsys):
    """The command's stderr, checked to be one error line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("cactus-keras "), err
    return lines[-1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small 8x8 dataset whose label is the brighter quadrant: learnable in a few steps."""
    directory = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (260, 8, 8), dtype=np.uint8)
    quadrants = x.reshape(260, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(260, 4)
    y = quadrants.argmax(axis=1)
    path = directory / "tiny.npz"
    np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    return directory, path


TRAIN = ["--epsilon", "0.01", "--arch", "mlp", "--batch-size", "12", "--validation-samples", "8",
         "--compression", "prune"]


def _train_args(data_path, output, *extra, epochs=3):
    return ["train", "--dataset", str(data_path), *TRAIN, "--epochs", str(epochs),
            "--output", str(output), *extra]


@pytest.fixture(scope="module")
def trained(data):
    """One finished run (2 epochs), shared by the tests that only read it."""
    directory, path = data
    out = directory / "finished"
    assert cli.main(_train_args(path, out, epochs=2)) == 0
    return out


def _snapshot(directory):
    return {p: (directory / p).read_bytes() for p in sorted(os.listdir(directory))
            if (directory / p).is_file()}


def test_train_refuses_to_overwrite_a_run(data, trained, capsys):
    _, path = data
    before = _snapshot(trained)
    for extra, expected in (([], "holds a finished training run"), (["--standard-weight", "0.3"], "standard_weight: saved 0.5, now 0.3")):
        assert cli.main(_train_args(path, trained, *extra, epochs=2)) == 2
        line = _error(capsys)
        assert expected in line and "--overwrite" in line, line
    # --resume with other settings is refused too, naming what differs.
    assert cli.main(_train_args(path, trained, "--resume", epochs=3)) == 2
    line = _error(capsys)
    assert "epochs: saved 2, now 3" in line and "--overwrite" in line, line
    assert _snapshot(trained) == before


def test_train_resume_of_a_finished_run_does_nothing(data, trained, capsys):
    _, path = data
    before = _snapshot(trained)
    assert cli.main(_train_args(path, trained, "--resume", epochs=2)) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert _snapshot(trained) == before


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_train_resume_and_overwrite_exclude_each_other(data, tmp_path, capsys, flag):
    _, path = data
    with pytest.raises(SystemExit) as exit_:
        cli.main(_train_args(path, tmp_path / "r", "--resume", "--overwrite"))
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_output_naming_a_file_is_refused(data, tmp_path, capsys):
    _, path = data
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert cli.main(_train_args(path, afile)) == 2
    assert "--output" in _error(capsys) and afile.read_text() == "mine"
    assert cli.main(_train_args(path, afile / "sub")) == 2
    assert "is a file, not a directory" in _error(capsys)


def _weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


def _log_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sigint_mid_epoch_then_resume_gives_the_uninterrupted_weights(data, tmp_path):
    _, path = data
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert cli.main(_train_args(path, reference)) == 0
    proc = subprocess.Popen([sys.executable, "-m", "cactus_keras.cli", *_train_args(path, run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch 2/"):
            break
    time.sleep(1.0)  # into epoch 2's batches
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(seen) + out + err
    assert "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("cactus-keras train: interrupted: the backup of epoch 1 is kept")
    assert message.endswith("--resume") and "cactus-keras train --dataset" in message
    assert not (run / "model.keras").exists()
    assert len(_log_rows(run / "training_log.csv")) == 1
    # The command it prints resumes the run, at epoch 2.
    assert cli.main(_train_args(path, run, "--resume")) == 0
    for got, want in zip(_weights(run / "network.keras"), _weights(reference / "network.keras")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got, want = _log_rows(run / "training_log.csv"), _log_rows(reference / "training_log.csv")
    assert [r["epoch"] for r in got] == ["0", "1", "2"]
    for g, w in zip(got, want):
        assert float(g["epsilon"]) == pytest.approx(float(w["epsilon"]))
        assert float(g["loss"]) == pytest.approx(float(w["loss"]), rel=1e-4)
    assert not (run / "backup").exists()
