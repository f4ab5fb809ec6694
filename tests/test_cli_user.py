"""The command line as a careful user meets it: resumable, never overwriting work,
fast to start, one-line errors in the flags' own words, honest logs.

Each test runs a command, checks its exit code and its one-line message, and that no
traceback is printed and no earlier output is lost or changed.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from cli_helpers import env as _env
from cli_helpers import one_error_line as _error

from cactus_keras import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
         "--compression", "pruning"]


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
        if line.startswith("epoch 1/"):  # printed after epoch 1's backup
            break
    time.sleep(0.2)  # into epoch 2's batches (on a fast machine epoch 2 may end first)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(seen) + out + err
    assert "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    kept = re.match(r"cactus-keras train: interrupted: the backup of epoch (\d+) is kept",
                    message)
    assert kept and int(kept.group(1)) in (1, 2), message
    assert message.endswith("--resume") and "cactus-keras train --dataset" in message
    assert not (run / "model.keras").exists()
    # The log holds exactly the epochs the backup holds.
    assert len(_log_rows(run / "training_log.csv")) == int(kept.group(1))
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


# ----- certify: a CactusModel, labelled progress, checks before the work -----

def test_certify_accepts_a_cactus_model_file(data, trained, capsys):
    _, path = data
    results = {}
    for name in ("model.keras", "network.keras"):
        out = trained / f"{name}.json"
        assert cli.main(["certify", "--model", str(trained / name), "--dataset", str(path),
                         "--epsilon", "0.01", "--pgd-steps", "2", "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        results[name] = json.loads(out.read_text())
        assert "bounds (ibp, epsilon 0.01):" in printed and "PGD attack (2 steps" in printed
    assert "CactusModel, certifying its network" not in printed
    assert results["model.keras"]["certified_accuracy"] == results["network.keras"]["certified_accuracy"]
    assert results["model.keras"]["clean_accuracy"] == results["network.keras"]["clean_accuracy"]
    # And from Python: certify(model) certifies model.network.
    import cactus_keras

    model = keras.saving.load_model(trained / "model.keras", compile=False)
    dataset = cactus_keras.data.load(str(path))
    a = cactus_keras.certify(model, dataset.x_test, dataset.y_test, 0.01)
    b = cactus_keras.certify(model.network, dataset.x_test, dataset.y_test, 0.01)
    np.testing.assert_array_equal(a.margin_lower, b.margin_lower)


@pytest.mark.parametrize("extra, message", [
    (["--pgd-steps", "-3"], "--pgd-steps must be >= 0"),
    (["--pgd-restarts", "0"], "--pgd-restarts must be >= 1"),
    (["--epsilon", "5"], "--epsilon 5 covers the whole data range [0, 1]"),
    (["--limit", "0"], "--limit must be >= 1"),
])
def test_certify_refuses_bad_values(data, trained, capsys, extra, message):
    _, path = data
    argv = ["certify", "--model", str(trained / "network.keras"), "--dataset", str(path),
            "--epsilon", "0.01", *extra]
    assert cli.main(argv) == 2
    line = _error(capsys)
    assert message in line and line.startswith("cactus-keras certify: error:"), line


def test_json_naming_a_directory_is_refused_before_the_work(data, trained, tmp_path, capsys):
    _, path = data
    for command in (["certify", "--model", str(trained / "network.keras")],
                    ["evaluate", "--model", str(trained / "network.keras")]):
        assert cli.main([*command, "--dataset", str(path), "--epsilon", "0.01",
                         "--json", str(tmp_path)]) == 2
        captured = capsys.readouterr()
        assert "--json" in captured.err and "is a directory" in captured.err
        assert "accuracy" not in captured.out  # refused before any certificate
        assert "Traceback" not in captured.err


def test_corrupt_or_text_keras_files_are_named_as_such(data, tmp_path, capsys):
    _, path = data
    for content in (b"this is not a model", b"PK\x03\x04 truncated"):
        bad = tmp_path / "bad.keras"
        bad.write_bytes(content)
        assert cli.main(["certify", "--model", str(bad), "--dataset", str(path),
                         "--epsilon", "0.01"]) == 2
        line = _error(capsys)
        assert "not a readable .keras file" in line and "not found" not in line.lower(), line
    assert cli.main(["certify", "--model", str(tmp_path), "--dataset", str(path), "--epsilon", "0.01"]) == 2
    assert "is a directory" in _error(capsys)


def test_export_flag_names_its_own_flag(data, trained, capsys):
    _, path = data
    assert cli.main(["export", "--model", str(trained / "network.keras"), "--dataset", str(path),
                     "--output", str(trained / "m.tflite"), "--calibration-samples", "0"]) == 2
    line = _error(capsys)
    assert "--calibration-samples must be >= 1" in line and "--limit" not in line


# ----- train: messages in the flags' words, honest log -----

@pytest.mark.parametrize("extra, message", [
    (["--epochs", "1", "--warmup-epochs", "1"], "--warmup-epochs (epochs of standard training first) must be in [0, --epochs)"),
    (["--epochs", "3", "--ramp-epochs", "10"], "--warmup-epochs 1 + --ramp-epochs 10 > --epochs 3"),
    (["--ratio", "0.6", "0.4"], "--ratio range must have low <= high"),
    (["--standard-weight", "2"], "--standard-weight (lambda) must be in [0, 1]"),
    (["--epsilon", "8"], "covers the whole data range"),
])
def test_train_messages_name_the_flags(data, tmp_path, capsys, extra, message):
    _, path = data
    assert cli.main(_train_args(path, tmp_path / "run", *extra)) == 2
    line = _error(capsys)
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_one_epoch_trains_without_a_warm_up(data, tmp_path, capsys):
    from cactus_keras.experiments import TrainConfig

    config = TrainConfig(dataset="x", epsilon=0.1, epochs=1)
    assert (config.warmup_epochs, config.ramp_epochs) == (0, 1)
    assert TrainConfig(dataset="x", epsilon=0.1, epochs=4).warmup_epochs == 1


def test_the_training_log_has_epsilon_and_lambda(trained):
    rows = _log_rows(trained / "training_log.csv")
    assert [float(r["epsilon"]) for r in rows][0] == 0.0  # the warm-up epoch
    assert 0 < float(rows[-1]["epsilon"]) <= 0.01
    assert float(rows[0]["standard_weight"]) == 1.0 and float(rows[-1]["standard_weight"]) < 1.0


# ----- data: fast offline failure, NaN pixels -----

def test_a_named_dataset_offline_fails_at_once(data, trained, tmp_path, monkeypatch, capsys):
    from cactus_keras.data import datasets

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(datasets, "_can_reach", lambda host: False)
    monkeypatch.setattr(datasets, "_tfds_prepared", lambda name: False)
    start = time.perf_counter()
    assert cli.main(["certify", "--model", str(trained / "network.keras"), "--dataset", "mnist",
                     "--epsilon", "0.01"]) == 2
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Could not find the 'mnist' dataset" in err
    assert "no network: storage.googleapis.com cannot be reached" in err


def test_a_nan_pixel_is_named(tmp_path, trained, capsys):
    x = np.full((4, 8, 8), 0.5, "float32")
    x[2, 3, 1] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, x_train=x, y_train=np.zeros(4, "int64"), x_test=x, y_test=np.zeros(4, "int64"))
    assert cli.main(["certify", "--model", str(trained / "network.keras"), "--dataset", str(bad),
                     "--epsilon", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "1 NaN or infinite values (first at image 2, pixel (3, 1, 0))" in err
    assert "scaled" not in err and "Traceback" not in err


# ----- experiment: --example, --output a file, quoted numbers, Ctrl-C, seconds -----

def _experiment_config(tmp_path, data_path, epsilon="0.01"):
    path = tmp_path / "exp.toml"
    path.write_text(f"""
[experiment]
dataset = "{data_path}"
epsilon = {epsilon}

[training]
arch = "mlp"
epochs = 2
batch_size = 64
validation_samples = 0

[evaluation]
ratios = [0.0]
bits = []
tflite = false

[methods.ibp]
method = "ibp-then-compress"
""")
    return str(path)


def test_experiment_example_configs_ship_with_the_package(tmp_path, capsys):
    from cactus_keras.experiments import example_config, example_names

    names = example_names()
    assert "quickstart" in names and "fashion_mnist_cpu" in names
    package = os.path.join(ROOT, "cactus_keras", "experiments", "configs")
    assert os.path.dirname(example_config("quickstart")) == package
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert '"cactus_keras.experiments" = ["configs/*.toml"]' in f.read()
    assert cli.main(["experiment", "--example", "quickstrat", "--output", str(tmp_path / "o")]) == 2
    line = _error(capsys)
    assert "No example config named 'quickstrat'" in line and "quickstart" in line
    assert cli.main(["experiment", str(tmp_path / "none.toml"), "--output", str(tmp_path / "o")]) == 2
    assert "--example NAME" in _error(capsys)
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):
        assert cli.main(["experiment", "--example", "quickstart", "--output", str(tmp_path / "q"),
                         "--check"]) == 0
        assert "quickstart: fashion_mnist" in capsys.readouterr().out


def test_experiment_output_naming_a_file_is_refused(data, tmp_path, capsys):
    _, path = data
    config = _experiment_config(tmp_path, path)
    afile = tmp_path / "results.txt"
    afile.write_text("mine")
    for extra in ([], ["--check"]):
        assert cli.main(["experiment", config, "--output", str(afile), *extra]) == 2
        assert "--output" in _error(capsys) and afile.read_text() == "mine"


def test_a_quoted_epsilon_in_toml_is_refused(data, tmp_path, capsys):
    _, path = data
    config = _experiment_config(tmp_path, path, epsilon='"0.1"')
    assert cli.main(["experiment", config, "--output", str(tmp_path / "o"), "--check"]) == 2
    line = _error(capsys)
    assert "`epsilon` must be a number (epsilon = 0.1, no quotes), got '0.1'" in line
    text = open(config).read().replace('epochs = 2', 'epochs = "2"').replace('"0.1"', "0.1")
    with open(config, "w") as f:
        f.write(text)
    assert cli.main(["experiment", config, "--output", str(tmp_path / "o"), "--check"]) == 2
    assert "`epochs` must be an integer, got '2'" in _error(capsys)


def test_experiment_ctrl_c_is_one_line_and_seconds_add_up(data, tmp_path, monkeypatch, capsys):
    from cactus_keras.experiments import methods

    _, path = data
    config = _experiment_config(tmp_path, path)
    output = tmp_path / "out"
    calls = []

    def run(self, ctx):
        calls.append(1)
        time.sleep(0.3)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return [methods.row("prune", ratio=0.0, clean_accuracy=0.5, certified_accuracy=0.25,
                            samples=20, pruning_method="global_l1")]

    monkeypatch.setattr(methods.IBPThenCompress, "run", run)
    argv = ["experiment", config, "--output", str(output), "--no-progress"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"cactus-keras experiment: interrupted: finished runs and steps are kept in "
        f"{output / 'runs'}; resume with: cactus-keras experiment {config} --output {output}")
    assert cli.main(argv) == 0
    with open(output / "runs" / "ibp" / "seed0" / "result.json") as f:
        seconds = json.load(f)["seconds"]
    assert seconds >= 0.6  # both calls, not the last one alone


# ----- start-up: --help without TensorFlow, --version, defaults -----

def test_help_does_not_import_tensorflow_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); import cactus_keras.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TIME', time.perf_counter() - t)\n"
            "print('MODULES', 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MODULES False False" in proc.stdout
    assert "usage: cactus-keras" in proc.stdout and proc.stderr == ""
    seconds = float(proc.stdout.split("TIME")[1].split()[0])
    assert seconds < 1.0, seconds


def test_version_and_defaults_in_help(capsys):
    import cactus_keras

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"cactus-keras {cactus_keras.__version__}")
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: cnn3)", "(default: 10)", "(default: 0.25 0.75)", "(default: 0.5)"):
        assert shown in text, shown


@pytest.mark.parametrize("order", ["cactus_keras first", "keras first"])
def test_import_then_load_model_works_in_a_fresh_process(trained, order):
    imports = "import cactus_keras, keras" if order == "cactus_keras first" else "import keras, cactus_keras"
    code = (f"{imports}\nm = keras.saving.load_model({str(trained / 'model.keras')!r}, compile=False)\n"
            "print(type(m).__name__, type(m.compression[0]).__name__)\n"
            "import cactus_keras.export, cactus_keras.experiments, cactus_keras.tuning, cactus_keras.interop\n"
            "print(cactus_keras.export.verify_tflite.__name__, cactus_keras.experiments.TrainConfig.__name__,"
            " cactus_keras.tuning.make_tuner.__name__, cactus_keras.interop.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CactusModel Pruning" in proc.stdout
    assert "verify_tflite TrainConfig make_tuner cactus_keras.interop" in proc.stdout


def test_clean_vs_certified_points_are_labelled_with_their_level():
    from cactus_keras.experiments.plots import point_label

    assert point_label({"form": "prune", "ratio": 0.7, "bits": None}) == "0.7"
    assert point_label({"form": "quantize", "ratio": None, "bits": 4}) == "4b"
    assert point_label({"form": "tflite", "ratio": None, "bits": 8}) == "int8"


def test_dependencies_are_ranges_and_ci_pins_them_in_constraints():
    import re
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    # Every requirement, the extras' too; an extra that names others of this package
    # ("cactus-keras[full]") is made of those.
    declared = project["dependencies"] + [
        d for extra in project["optional-dependencies"].values() for d in extra
        if not d.startswith("cactus-keras")]
    assert not [d for d in declared if "==" in d], declared
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        pins = dict(line.strip().split("==") for line in f if "==" in line)
    names = {re.split(r"[<>=;! ]", d, 1)[0].lower() for d in declared}
    assert names - {"tomli"} <= {n.lower() for n in pins}, names - set(pins)
    with open(os.path.join(ROOT, "tools", "setup.sh")) as f:
        assert "-c constraints.txt" in f.read()


def test_setup_accepts_exactly_the_extras_of_pyproject():
    # setup.sh refuses unknown extras itself (pip would only warn and install the core):
    # its list must be pyproject.toml's, or a real extra is refused or a typo accepted.
    import re
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    with open(os.path.join(ROOT, "tools", "setup.sh")) as f:
        accepted = re.search(r'case "\$extras" in\s+([\w|-]+)\)', f.read())
    assert accepted, "tools/setup.sh no longer checks its EXTRAS argument"
    assert set(accepted.group(1).split("|")) == extras


def test_tune_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("keras_tuner")
    import cactus_keras.tuning.search as search

    class Interrupted:
        class oracle:
            trials = {}

        def search(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(search, "make_tuner", lambda *a, **k: Interrupted())
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x, y_train=np.arange(40) % 2, x_test=x, y_test=np.arange(40) % 2)
    argv = ["tune", "--dataset", str(data), "--epsilon", "0.01", "--targets", "prune:0.5",
            "--arch", "mlp", "--directory", str(tmp_path / "t"), "--verbose", "0"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("cactus-keras tune: interrupted: finished trials are kept in")
    assert "resume with: cactus-keras tune --dataset" in line
