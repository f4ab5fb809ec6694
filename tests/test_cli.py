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
         "--bound", "best", "--pgd-steps", "5", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["samples"] == 30 and report["bound"] == "best"
    assert report["clean_accuracy"] == 1.0
    assert report["pgd_accuracy"] >= report["certified_accuracy"] > 0
    assert f"certified accuracy  {report['certified_accuracy']:.4f}" in printed
    assert "PGD accuracy" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epsilon", "-1"], "epsilon"),
        (["--bound", "nope"], "Unknown --bound 'nope'"),
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
    assert "--model: no model file at 'nope.keras'" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs(saved):
    _, model, data = saved
    proc = subprocess.run(
        [sys.executable, "-m", "cactus_keras.cli", "certify", "--model", str(model),
         "--dataset", str(data), "--epsilon", "0.001", "--pgd-steps", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "certified accuracy" in proc.stdout
    # TensorFlow's start-up lines (cudart_stub, oneDNN, absl) are held back.
    for noise in ("cudart_stub", "absl::InitializeLog", "oneDNN"):
        assert noise not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_train_then_evaluate(saved, capsys):
    directory, _, data = saved
    out = directory / "run"
    code = cli.main(
        ["train", "--dataset", str(data), "--epsilon", "0.01", "--arch", "cnn3", "--epochs", "2",
         "--batch-size", "10", "--compression", "pruning", "--ratio", "0.3", "0.6",
         "--pruning-method", "local_l1", "--standard-weight", "0.5", "--validation-samples", "0",
         "--output", str(out)]
    )
    assert code == 0
    for name in ("model.keras", "network.keras", "training_log.csv", "config.json"):
        assert (out / name).exists(), name
    log = (out / "training_log.csv").read_text().splitlines()
    assert "certified_accuracy_pruned" in log[0] and len(log) == 3
    report_path = directory / "eval.json"
    code = cli.main(
        ["evaluate", "--model", str(out / "model.keras"), "--dataset", str(data), "--epsilon", "0.01",
         "--ratios", "0,0.5,0.7", "--pruning-methods", "global_l1,global_l2_structured", "--json", str(report_path)]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert [(r["pruning_method"], r["ratio"]) for r in report["rows"]] == [
        ("global_l1", 0.0), ("global_l1", 0.5), ("global_l1", 0.7),
        ("global_l2_structured", 0.0), ("global_l2_structured", 0.5), ("global_l2_structured", 0.7),
    ]
    assert report["rows"][1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert "global_l2_structured" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compression", "quantize"], "compression"),
        (["--arch", "resnet"], "arch"),
        (["--ratio", "0.5", "1.5"], "[0, 1)"),
        (["--epochs", "1", "--warmup-epochs", "1"], "--warmup-epochs"),
        (["--epochs", "3", "--ramp-epochs", "10"], "epsilon would never reach its target"),
        (["--ratio", "0.6", "0.4"], "--ratio"),
        (["--epsilon", "5"], "covers the whole data range"),
        (["--compression", "awp_quantization", "--bits", "9"], "2 to 8"),
        (["--compression", "pruning+awp_quantization", "--awp-radius", "-1"], "eta"),
        (["--certified-loss", "pgd"], "Unknown --certified-loss 'pgd'"),
        (["--certified-loss", "mtl-ibp", "--mtl-alpha", "1.5"], "--mtl-alpha"),
        (["--certified-loss", "sabr", "--attack-steps", "0"], "--attack-steps"),
        (["--sabr-lambda", "0.3"], "option of certified_loss 'sabr'"),
    ],
)
def test_train_rejects_bad_arguments_before_training(saved, capsys, argv, message):
    directory, _, data = saved
    args = ["train", "--dataset", str(data), "--epsilon", "0.01", "--output", str(directory / "bad")] + argv
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_train_quantization_aware_then_evaluate_bits(saved):
    directory, _, data = saved
    out = directory / "quant"
    assert cli.main(
        ["train", "--dataset", str(data), "--epsilon", "0.01", "--epochs", "2", "--batch-size", "10",
         "--compression", "pruning+awp_quantization", "--bits", "4", "--awp-radius", "0.6", "--validation-samples", "0",
         "--output", str(out)]
    ) == 0
    assert "certified_accuracy_quantized" in (out / "training_log.csv").read_text().splitlines()[0]
    report_path = directory / "quant.json"
    assert cli.main(
        ["evaluate", "--model", str(out / "model.keras"), "--dataset", str(data), "--epsilon", "0.01",
         "--ratios", "", "--bits-list", "8,4", "--json", str(report_path)]
    ) == 0
    rows = json.loads(report_path.read_text())["rows"]
    assert [(r["form"], r["bits"]) for r in rows] == [("quantize", 8), ("quantize", 4)]


def test_export_then_verify_tflite(saved, capsys):
    pytest.importorskip("tensorflow")
    directory, model, data = saved
    tflite = directory / "m_int8.tflite"
    assert cli.main(["export", "--model", str(model), "--dataset", str(data), "--output", str(tflite)]) == 0
    assert tflite.stat().st_size > 0
    report_path = directory / "verify.json"
    assert cli.main(["verify-tflite", "--model", str(tflite), "--dataset", str(data), "--epsilon", "0.001",
                     "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["samples"] == 30 and report["interpreter"] in ("ai_edge_litert", "tf.lite")
    assert report["simulation_agreement"] == 1.0
    assert report["clean_accuracy"] >= report["certified_accuracy"]
    assert report["rounding"] == "nearest"  # the certificate says which model it assumed
    assert "(rounding model nearest)" in capsys.readouterr().out


def test_export_with_epsilon_chooses_the_output_range_by_the_certificate(saved, capsys):
    pytest.importorskip("tensorflow")
    from tests.test_int8_file_member import _file_quantization

    directory, model, data = saved
    calibrated, chosen = directory / "calibrated.tflite", directory / "chosen.tflite"
    base = ["export", "--model", str(model), "--dataset", str(data)]
    assert cli.main(base + ["--output", str(calibrated)]) == 0
    assert cli.main(base + ["--output", str(chosen), "--epsilon", "0.002",
                            "--output-range-samples", "30"]) == 0
    printed = capsys.readouterr().out
    assert "output range:" in printed and "of 30 training images at epsilon 0.002" in printed
    # Only the output tensor's range may differ, and never wider than the calibrated one's.
    before, after = _file_quantization(calibrated), _file_quantization(chosen)
    assert after[-1][0] <= before[-1][0] * (1 + 1e-6)
    reports = []
    for path in (calibrated, chosen):
        report = directory / f"{path.stem}.json"
        assert cli.main(["verify-tflite", "--model", str(path), "--dataset", str(data),
                         "--epsilon", "0.002", "--json", str(report)]) == 0
        reports.append(json.loads(report.read_text()))
    assert reports[1]["simulation_agreement"] == 1.0
    # Chosen on these images (the fixture's test split is its training split): the file
    # certifies at least what the whole range does.
    assert reports[1]["certified_accuracy"] >= reports[0]["certified_accuracy"] - 1 / 30 + 1e-9


def test_verify_tflite_rejects_a_corrupt_file(saved, capsys):
    directory, _, data = saved
    bad = directory / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    assert cli.main(["verify-tflite", "--model", str(bad), "--dataset", str(data), "--epsilon", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "bad.tflite" in err and "Traceback" not in err
