"""Issue 21, items 5-13: the command line refuses what it would ignore or lose, locks
the folders it writes, answers bad values before TensorFlow, and keeps a quiet,
readable terminal."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from cli_helpers import env as _env
from cli_helpers import one_error_line as _error
from cli_helpers import refused_before_backends

from cactus_keras import cli, run_lock



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("refusals")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    y = x.reshape(60, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(60, 4).argmax(axis=1)
    path = directory / "tiny.npz"
    np.savez(path, x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])
    model = directory / "net.keras"
    net.save(model)
    return directory, path, model


TRAIN = ["--epsilon", "0.01", "--arch", "mlp", "--batch-size", "16", "--validation-samples", "8"]


def _train(data_path, output, *extra, epochs=1):
    return ["train", "--dataset", str(data_path), *TRAIN, "--epochs", str(epochs),
            "--output", str(output), *extra]


@pytest.fixture(scope="module")
def trained(data):
    """A finished one-epoch run with a pruning and a quantization member."""
    directory, path, _ = data
    out = directory / "run"
    assert cli.main(_train(path, out, "--compression", "pruning+awp_quantization")) == 0
    return out


def _live_process():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock(folder, pid):
    os.makedirs(folder, exist_ok=True)
    (folder / run_lock.LOCK_FILE).write_text(json.dumps(
        {"pid": pid, "host": __import__("socket").gethostname(), "command": "cactus-keras train"}))


# Item 5: settings accepted and ignored.

@pytest.mark.parametrize("extra, flag", [
    (["--compression", "pruning", "--bits", "4"], "--bits"),
    (["--compression", "pruning", "--awp-radius", "3"], "--awp-radius"),
    (["--compression", "awp_quantization", "--ratio", "0.1", "0.2"], "--ratio"),
    (["--compression", "none", "--pruning-method", "local_l1"], "--pruning-method"),
    (["--member", "pruning:ratio=0.5", "--awp-steps", "2"], "--awp-steps"),
])
def test_train_refuses_a_member_flag_its_set_does_not_use(data, tmp_path, capsys, extra, flag):
    _, path, _ = data
    assert cli.main(_train(path, tmp_path / "r", *extra)) == 2
    line = _error(capsys)
    assert flag in line and "drop" in line
    assert not (tmp_path / "r").exists()


def test_train_accepts_the_flags_of_its_members():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--dataset", "d", "--epsilon", "0.1", "--output", "o",
                              "--compression", "pruning+awp_quantization", "--bits", "4",
                              "--ratio", "0.1", "0.2"])
    args.argv = []
    cli._check_train(args)  # no error


@pytest.mark.parametrize("extra, flag", [
    (["--mtl-alpha", "0.2", "0.8"], "--mtl-alpha"),
    (["--hyperband-factor", "4"], "--hyperband-factor"),
    (["--targets", "prune:0.5", "--awp-radius", "1"], "--awp-radius"),
    (["--targets", "prune:0.5", "--awp-steps", "3"], "--awp-steps"),
    (["--targets", "quantize:8", "--search-ratio-range"], "--search-ratio-range"),
])
def test_tune_refuses_flags_its_search_does_not_use(data, tmp_path, capsys, extra, flag):
    _, path, _ = data
    assert cli.main(["tune", "--dataset", str(path), "--epsilon", "0.01", "--directory",
                     str(tmp_path / "t"), *extra]) == 2
    assert flag in _error(capsys) and not (tmp_path / "t").exists()


@pytest.mark.parametrize("extra, flag", [
    (["--format", "onnx", "--float"], "--float"),
    (["--format", "onnx", "--calibration-samples", "10"], "--calibration-samples"),
    (["--format", "onnx", "--dataset", "mnist"], "--dataset"),
    (["--float", "--calibration-samples", "10"], "--calibration-samples"),
])
def test_export_refuses_flags_its_format_does_not_use(data, tmp_path, capsys, extra, flag):
    _, _, model = data
    assert cli.main(["export", "--model", str(model), "--output", str(tmp_path / "m.x"),
                     *extra]) == 2
    assert f"{flag} does not apply" in _error(capsys)


def test_cactus_model_compile_refuses_a_loss():
    import cactus_keras

    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = cactus_keras.CactusModel(net, epsilon=0.1)
    with pytest.raises(ValueError, match="`loss`"):
        model.compile(optimizer="adam", loss="mse")
    model.compile(optimizer="adam")


# Item 6: one writer per folder.

def test_folder_lock_is_reentrant_and_removed(tmp_path):
    folder = tmp_path / "f"
    with run_lock.folder_lock(folder):
        assert (folder / run_lock.LOCK_FILE).exists()
        with run_lock.folder_lock(folder):
            pass
        assert (folder / run_lock.LOCK_FILE).exists()
    assert not (folder / run_lock.LOCK_FILE).exists()


def test_a_live_process_lock_blocks_and_a_dead_ones_does_not(tmp_path):
    folder = tmp_path / "f"
    holder = _live_process()
    try:
        _lock(folder, holder.pid)
        with pytest.raises(run_lock.FolderLockedError, match=f"process {holder.pid}"):
            with run_lock.folder_lock(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    _lock(folder, _dead_pid())
    with run_lock.folder_lock(folder):
        assert json.loads((folder / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_train_into_a_folder_another_train_writes_is_refused(data, trained, tmp_path, capsys,
                                                              extra):
    _, path, _ = data
    out = tmp_path / "busy"
    shutil.copytree(trained, out)
    before = sorted(os.listdir(out))
    holder = _live_process()
    try:
        _lock(out, holder.pid)
        assert cli.main(_train(path, out, "--compression", "pruning+awp_quantization", *extra)) == 2
        line = _error(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert f"being written by process {holder.pid}" in line and "--output" in line
    # --overwrite deleted nothing (and the other process's lock is left alone)
    assert sorted(os.listdir(out)) == sorted([*before, run_lock.LOCK_FILE])


def test_experiment_and_tune_folders_are_locked(data, tmp_path, capsys):
    directory, path, _ = data
    config = tmp_path / "exp.toml"
    config.write_text(f'[experiment]\ndataset = "{path}"\nepsilon = 0.01\n'
                      '[training]\narch = "mlp"\nepochs = 1\nbatch_size = 16\n'
                      'validation_samples = 0\n[evaluation]\nratios = [0.0]\nbits = []\n'
                      'tflite = false\n[methods.ibp]\nmethod = "ibp-then-compress"\n')
    holder = _live_process()
    try:
        _lock(tmp_path / "exp", holder.pid)
        _lock(tmp_path / "tune", holder.pid)
        assert cli.main(["experiment", str(config), "--output", str(tmp_path / "exp"),
                         "--no-progress"]) == 2
        assert f"being written by process {holder.pid}" in _error(capsys)
        assert not (tmp_path / "exp" / "runs").exists()
        assert cli.main(["tune", "--dataset", str(path), "--epsilon", "0.01", "--arch", "mlp",
                         "--directory", str(tmp_path / "tune"), "--max-trials", "1",
                         "--epochs", "1"]) == 2
        assert f"being written by process {holder.pid}" in _error(capsys)
        assert os.listdir(tmp_path / "tune") == [run_lock.LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


# Items 7 and 8: files and folders that exist.

def test_export_refuses_an_existing_file(data, tmp_path, capsys):
    _, path, model = data
    target = tmp_path / "data.npz"
    shutil.copy(path, target)
    before = target.read_bytes()
    assert cli.main(["export", "--model", str(model), "--dataset", str(path), "--output",
                     str(target)]) == 2
    assert "--overwrite" in _error(capsys) and target.read_bytes() == before


def test_export_vnnlib_refuses_a_full_folder_and_overwrite_clears_its_files(data, tmp_path,
                                                                            capfd):
    _, path, model = data
    out = tmp_path / "bench"
    (out / "vnnlib").mkdir(parents=True)
    (out / "vnnlib" / "sample_7.vnnlib").write_text("stale")
    (out / "notes.txt").write_text("mine")
    argv = ["export-vnnlib", "--model", str(model), "--dataset", str(path), "--epsilon", "0.01",
            "--samples", "2", "--output", str(out)]
    assert cli.main(argv) == 2
    assert "--overwrite" in _error(capfd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*argv, "--overwrite"]) == 0
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    assert sorted(os.listdir(out / "vnnlib")) == ["sample_0.vnnlib", "sample_1.vnnlib"]
    assert (out / "notes.txt").read_text() == "mine"
    assert len((out / "instances.csv").read_text().splitlines()) == 2


# Item 9: resume compares the data, not its path; a damaged backup is named.

def test_resume_compares_the_data_not_its_path(data, trained, tmp_path, capsys):
    _, path, _ = data
    same = tmp_path / "same.npz"
    shutil.copy(path, same)
    assert cli.main(_train(same, trained, "--compression", "pruning+awp_quantization", "--resume")) == 0
    assert "nothing to resume" in capsys.readouterr().out
    with np.load(path) as arrays:
        changed = dict(arrays)
    changed["y_train"] = (changed["y_train"] + 1) % 4
    other = tmp_path / "other.npz"
    np.savez(other, **changed)
    shutil.copy(other, same)
    assert cli.main(_train(same, trained, "--compression", "pruning+awp_quantization", "--resume")) == 2
    assert "data: other arrays" in _error(capsys)


@pytest.mark.parametrize("name", ["training_metadata.json", "non_trainable.npz"])
def test_a_damaged_backup_names_its_file(data, trained, tmp_path, capsys, name):
    _, path, _ = data
    out = tmp_path / "interrupted"
    out.mkdir()
    shutil.copy(trained / "config.json", out / "config.json")
    (out / "backup").mkdir()
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    (out / "backup" / name).write_bytes(b"\x00garbage")
    assert cli.main(_train(path, out, "--compression", "pruning+awp_quantization", "--resume")) == 2
    line = _error(capsys)
    assert name in line and "Delete the folder" in line and "--resume" in line


# Item 10: bad values before TensorFlow, the command's own words, folders not made.

def test_bad_flag_values_answer_without_importing_tensorflow(tmp_path):
    cases = [
        ["certify", "--model", "m.keras", "--dataset", "d", "--epsilon", "-0.1"],
        ["certify", "--model", "m.keras", "--dataset", "d", "--epsilon", "0.1", "--limit", "0"],
        ["evaluate", "--model", "m.keras", "--dataset", "d", "--epsilon", "nan"],
        ["train", "--dataset", "d", "--epsilon", "0.1", "--output", str(tmp_path / "o"),
         "--seed", "-1"],
        ["train", "--dataset", "d", "--epsilon", "0.1", "--output", str(tmp_path / "o"),
         "--compression", "pruning", "--bits", "4"],
        ["train", "--dataset", "d", "--epsilon", "0.1", "--output", str(tmp_path / "o"),
         "--resume"],
        ["export", "--model", "m.keras", "--output", "m.onnx", "--format", "onnx", "--float"],
        ["export-vnnlib", "--model", "m.keras", "--dataset", "d", "--epsilon", "-1",
         "--output", str(tmp_path / "v")],
        ["verify-tflite", "--model", "nope.tflite", "--dataset", "d", "--epsilon", "0.1"],
        ["tune", "--dataset", "d", "--epsilon", "-1", "--directory", str(tmp_path / "t")],
        ["experiment", "--example", "quickstart", "--output", str(tmp_path / "e"), "--seeds", "0"],
    ]
    refused_before_backends(cases, tmp_path)
    assert not any((tmp_path / name).exists() for name in ("o", "v", "t", "e"))


def test_cli_errors_speak_the_commands_words(data, tmp_path, capsys):
    directory, path, _ = data
    keras.utils.set_random_seed(0)
    other = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    model = tmp_path / "six.keras"
    other.save(model)
    assert cli.main(["certify", "--model", str(model), "--dataset", str(path),
                     "--epsilon", "0.01"]) == 2
    line = _error(capsys)
    assert "x[..., None]" not in line and "`x`" not in line and "dataset's images" in line
    lambda_net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 1.0),
                                   keras.layers.Flatten(), keras.layers.Dense(4)])
    lambda_model = tmp_path / "lambda.keras"
    lambda_net.save(lambda_model)
    assert cli.main(["certify", "--model", str(lambda_model), "--dataset", str(path),
                     "--epsilon", "0.01"]) == 2
    line = _error(capsys)
    assert "safe_mode" not in line and "Lambda layer" in line
    text = cli._translate("'m.tflite' is not a full-integer int8 model: float. verify_tflite "
                          "certifies it; export it with cactus_keras.export.to_tflite(..., "
                          "int8=True).", None)
    assert "to_tflite" not in text and "cactus-keras export` (without --float)" in text


def test_a_config_error_keeps_its_toml_key(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text('[experiment]\ndataset = "mnist"\nepsilon = 0.1\nseeds = 0\n'
                      '[methods.ibp]\nmethod = "ibp-then-compress"\n')
    assert cli.main(["experiment", str(config), "--output", str(tmp_path / "o"), "--check"]) == 2
    line = _error(capsys)
    assert "`seeds`" in line and "--seeds" not in line


def test_experiment_says_which_settings_differ(data, tmp_path, capsys):
    _, path, _ = data
    config = tmp_path / "exp.toml"
    text = (f'[experiment]\ndataset = "{path}"\nepsilon = EPS\n[training]\narch = "mlp"\n'
            'epochs = 1\n[methods.ibp]\nmethod = "ibp-then-compress"\n')
    config.write_text(text.replace("EPS", "0.02"))
    from cactus_keras.experiments import load_config
    from cactus_keras.experiments.runner import _spec, data_digest, load_data

    first = load_config(str(config))
    spec_path = tmp_path / "o" / "runs" / "ibp" / "seed0" / "spec.json"
    spec_path.parent.mkdir(parents=True)
    spec_path.write_text(json.dumps(_spec(first, first.methods["ibp"], 0,
                                          data_digest(load_data(first)))))
    config.write_text(text.replace("EPS", "0.01"))
    assert cli.main(["experiment", str(config), "--output", str(tmp_path / "o"), "--check"]) == 2
    line = _error(capsys)
    assert "epsilon: saved 0.02, now 0.01" in line


def test_seed_and_empty_test_split_fail_before_the_folder_is_made(data, tmp_path, capsys):
    _, path, _ = data
    assert cli.main(_train(path, tmp_path / "a", "--seed", "-1")) == 2
    assert "--seed" in _error(capsys) and not (tmp_path / "a").exists()
    with np.load(path) as arrays:
        empty = dict(arrays)
    empty["x_test"], empty["y_test"] = empty["x_test"][:0], empty["y_test"][:0]
    np.savez(tmp_path / "empty.npz", **empty)
    assert cli.main(_train(tmp_path / "empty.npz", tmp_path / "b")) == 2
    line = _error(capsys)
    assert "test split" in line and "--validation-samples" in line
    assert not (tmp_path / "b").exists()


# Item 11: help text.

def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_flag_has_help_text():
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}"
               for p in _parsers(cli.build_parser()) for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


def test_switches_claim_no_default():
    text = cli.build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    assert "(default: True)" not in text and "--overwrite" in text


# Item 12: a quiet, readable terminal.

def test_training_prints_short_epoch_lines_and_a_member_table(data, tmp_path, capfd):
    _, path, _ = data
    out = tmp_path / "r"
    assert cli.main(_train(path, out, "--compression", "pruning+awp_quantization", epochs=2)) == 0
    captured = capfd.readouterr()
    epochs = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(len(line) < 300 for line in epochs)
    assert not any("_pruned" in line or "_quantized" in line for line in epochs)
    assert "per member" in captured.out and "\n  quantized " in captured.out
    header = (out / "training_log.csv").read_text().splitlines()[0]
    assert "certified_accuracy_pruned" in header and "val_clean_accuracy_quantized" in header
    assert "\x1b" not in captured.out + captured.err


def test_export_and_verify_print_no_native_lines(data, tmp_path, capfd):
    _, path, model = data
    target = tmp_path / "m.tflite"
    assert cli.main(["export", "--model", str(model), "--dataset", str(path), "--output",
                     str(target), "--calibration-samples", "16"]) == 0
    assert cli.main(["verify-tflite", "--model", str(target), "--dataset", str(path),
                     "--epsilon", "0.01"]) == 0
    captured = capfd.readouterr()
    assert "fully_quantize" not in captured.err and "XNNPACK" not in captured.err, captured.err
    assert "\x1b" not in captured.out + captured.err
    assert "certified accuracy" in captured.out


def test_progress_bars_write_no_ansi_codes_into_a_pipe(data, capfd):
    _, path, model = data
    assert cli.main(["certify", "--model", str(model), "--dataset", str(path), "--epsilon",
                     "0.01", "--pgd-steps", "2"]) == 0
    captured = capfd.readouterr()
    assert "12/12" in captured.out  # the attack's progress, as one final line
    assert "\x1b" not in captured.out + captured.err


def test_experiment_check_prints_a_readable_plan():
    from cactus_keras.experiments.cli import format_plan
    from cactus_keras.experiments.config import example_config, load_config

    plan = format_plan(load_config(example_config("quickstart")))
    assert "{" not in plan and "every run:" in plan
    assert "    pruning: ratio 0.5-0.95, pruning_method global_l1" in plan
    assert max(len(line) for line in plan.splitlines() if "pruning:" not in line) <= 92


# Item 13: nothing to resume, one spelling of a model path.

def test_resume_with_nothing_to_resume_says_so(data, tmp_path, capsys):
    _, path, _ = data
    assert cli.main(_train(path, tmp_path / "new", "--resume")) == 2
    assert "holds no run to resume" in _error(capsys)


def test_verify_tflite_takes_model():
    parser = cli.build_parser()
    args = parser.parse_args(["verify-tflite", "--model", "m.tflite", "--dataset", "d",
                              "--epsilon", "0.1"])
    assert args.path == "m.tflite"
    with pytest.raises(SystemExit):
        parser.parse_args(["verify-tflite", "m.tflite", "--dataset", "d", "--epsilon", "0.1"])
