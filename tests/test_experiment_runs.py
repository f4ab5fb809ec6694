"""`cactus-keras experiment`: one seed at a time (--seed), a changed evaluation grid
(re-evaluated, not retrained), --epsilon and --runs, and the ibp-then-int8-finetune
baseline (the QA-IBP-style fine-tune with the int8_file member alone)."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest

from cactus_keras import cli
from cactus_keras.experiments import ConfigError, load_config
from cactus_keras.experiments import training as training_module
from tests.test_experiments import _config_text, _tiny_data, _write
from tests.test_int8_file_member import _file_quantization

METHODS = """
[methods.ibp]
method = "ibp-then-compress"
[methods.ibp-int8]
method = "ibp-then-int8-finetune"
epochs = 1
learning_rate = 1e-4
"""


def _records(output):
    with open(os.path.join(output, "results.json")) as f:
        return json.load(f)["runs"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Seed 1 alone (--seed 1), then the whole config (seed 0 and the report)."""
    directory = tmp_path_factory.mktemp("seeds")
    data = _tiny_data(directory / "tiny.npz")
    config = _write(directory, _config_text(data, METHODS, seeds=2, epochs=2))
    output = str(directory / "out")
    base = ["experiment", config, "--output", output, "--no-progress"]
    assert cli.main(base + ["--seed", "1"]) == 0
    alone = {(r["run"], r["seed"]) for r in _records(output)}
    seed_folders = sorted(os.listdir(os.path.join(output, "runs", "ibp")))
    assert cli.main(base) == 0
    return {"config": config, "output": output, "data": data, "alone": alone,
            "seed_folders": seed_folders, "base": base}


@pytest.mark.slow
def test_seed_flag_runs_that_seed_only(seeds):
    assert seeds["alone"] == {("ibp", 1), ("ibp-int8", 1)}
    assert seeds["seed_folders"] == ["seed1"]
    # The run without --seed adds seed 0 and reports both; seed 1 was not rerun.
    assert {(r["run"], r["seed"]) for r in _records(seeds["output"])} == {
        ("ibp", 0), ("ibp", 1), ("ibp-int8", 0), ("ibp-int8", 1)}


@pytest.mark.slow
def test_int8_finetune_reports_its_file_with_the_members_ranges(seeds):
    output = seeds["output"]
    rows = [r for record in _records(output) if record["run"] == "ibp-int8" for r in record["rows"]]
    assert sorted(r["seed"] for r in rows) == [0, 0, 1, 1]
    assert {r["form"] for r in rows} == {"tflite"}
    assert sorted(r["rounding"] for r in rows if r["seed"] == 0) == ["floor_ceil", "nearest"]
    assert all(r["simulation_agreement"] == 1.0 for r in rows)
    directory = os.path.join(output, "runs", "ibp-int8", "seed0")
    model = keras.saving.load_model(os.path.join(directory, "model.keras"), compile=False)
    member = model.compression[0]
    assert member.kind == "int8_file"
    expected = [(float(np.float32(s)), z) for s, z in member.tensor_quantization(model)]
    assert _file_quantization(os.path.join(directory, "network.int8.tflite")) == expected
    # The fine-tune moved the source's kernels.
    source = keras.saving.load_model(os.path.join(output, "runs", "ibp", "seed0", "network.keras"))
    assert not np.allclose(keras.ops.convert_to_numpy(source.weights[0]),
                           keras.ops.convert_to_numpy(model.network.weights[0]))


@pytest.mark.slow
def test_a_changed_grid_is_evaluated_again_not_retrained(seeds, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a trained run was trained again for a grid change")

    monkeypatch.setattr(training_module, "train", fail)
    output = seeds["output"]
    network = os.path.join(output, "runs", "ibp", "seed0", "network.keras")
    before = os.path.getmtime(network)
    text = open(seeds["config"]).read().replace("local_l1 = [0.7]", "local_l1 = [0.7, 0.9]")
    config = _write(pathlib.Path(os.path.dirname(seeds["config"])), text, name="wider.toml")
    assert cli.main(["experiment", config, "--output", output, "--no-progress"]) == 0
    assert os.path.getmtime(network) == before
    ibp = [r for record in _records(output) if record["run"] == "ibp" for r in record["rows"]]
    assert {(r["seed"], r["ratio"]) for r in ibp if r["pruning_method"] == "local_l1"
            and r["form"] == "prune"} == {(0, 0.7), (0, 0.9), (1, 0.7), (1, 0.9)}
    spec = json.load(open(os.path.join(output, "runs", "ibp", "seed0", "spec.json")))
    assert spec["evaluation"]["prune"]["local_l1"] == [0.7, 0.9]


def test_epsilon_and_runs_override_the_config(tmp_path):
    data = _tiny_data(tmp_path / "tiny.npz")
    path = _write(tmp_path, _config_text(data, METHODS + """
[methods.cactus]
method = "cactus"
compression = "pruning"
"""))
    config = load_config(path, epsilon=0.05, runs=["ibp-int8"])
    assert config.epsilon == 0.05 and config.config_epsilon == 0.01
    assert list(config.methods) == ["ibp", "ibp-int8"]  # and the run it starts from
    assert config.to_dict()["config_epsilon"] == 0.01
    with pytest.raises(ConfigError, match="`runs` must name runs of the config.*'nope'"):
        load_config(path, runs=["nope"])
    with pytest.raises(ConfigError, match="`epsilon` \\(replacing the config's\\)"):
        load_config(path, epsilon=-0.1)


def test_int8_finetune_needs_the_file(tmp_path):
    data = _tiny_data(tmp_path / "tiny.npz")
    text = _config_text(data, METHODS).replace("[evaluation]", "[evaluation]\ntflite = false")
    with pytest.raises(ConfigError, match="tflite = true"):
        load_config(_write(tmp_path, text))
    text = _config_text(data, METHODS + 'rounding = "up"\n')
    with pytest.raises(ConfigError, match="`rounding` must be one of nearest, floor_ceil"):
        load_config(_write(tmp_path, text, name="rounding.toml"))


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be one of the seeds"),
    (["--seeds", "2", "--seed", "2"], "--seed must be one of the seeds"),
    (["--seed", "3"], "--seed 3 is not one of the config's seeds 0..0"),
    (["--epsilon", "0"], "--epsilon must be in (0, 1]"),
    (["--runs", ","], "--runs must name runs of the config"),
    (["--runs", "ibp,nope"], "--runs must name runs of the config (ibp, ibp-int8), got 'nope'"),
])
def test_bad_flags_are_one_line_naming_them(tmp_path, flags, message, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started for bad flags")

    monkeypatch.setattr(training_module, "train", fail)
    data = _tiny_data(tmp_path / "tiny.npz")
    config = _write(tmp_path, _config_text(data, METHODS))
    argv = ["experiment", config, "--output", str(tmp_path / "out"), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not os.path.exists(tmp_path / "out" / "runs")
