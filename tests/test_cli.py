"""`cactus-keras certify` on a model saved with model.save('m.keras')."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from cactus_keras import cli


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 4, strides=4, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    y = net.predict(x[..., None] / 255.0, verbose=0).argmax(-1)
    data = directory / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    model = directory / "m.keras"
    net.save(model)
    return directory, model, data


def test_certify_prints_and_writes_json(saved, capsys):
    directory, model, data = saved
    out = directory / "r.json"
    code = cli.main(
        ["certify", "--model", str(model), "--dataset", str(data), "--epsilon", "0.002",
         "--method", "best", "--pgd-steps", "5", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["samples"] == 30 and report["method"] == "best"
    assert report["clean_accuracy"] == 1.0
    assert report["pgd_accuracy"] >= report["certified_accuracy"] > 0
    assert f"certified accuracy  {report['certified_accuracy']:.4f}" in printed
    assert "PGD accuracy" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epsilon", "-1"], "epsilon"),
        (["--method", "nope"], "Unknown bound method"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_arguments_exit_2_with_message(saved, capsys, argv, message):
    _, model, data = saved
    base = {"--model": str(model), "--dataset": str(data), "--epsilon": "0.1"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["certify"] + [item for pair in base.items() for item in pair]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_model_file(saved, capsys):
    _, _, data = saved
    assert cli.main(["certify", "--model", "nope.keras", "--dataset", str(data), "--epsilon", "0.1"]) == 2
    assert "No model file" in capsys.readouterr().err


def test_console_script_runs(saved):
    _, model, data = saved
    proc = subprocess.run(
        [sys.executable, "-m", "cactus_keras.cli", "certify", "--model", str(model),
         "--dataset", str(data), "--epsilon", "0.001", "--pgd-steps", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "certified accuracy" in proc.stdout
