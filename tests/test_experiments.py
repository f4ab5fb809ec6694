"""`cactus-keras experiment`: the whole pipeline on tiny data, resuming, bad configs."""

import glob
import json
import os

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import cli
from cactus_keras.compression import prunable_kernels
from cactus_keras.experiments import ConfigError, load_config, parse_config, run_experiment
from cactus_keras.experiments import training as training_module
from cactus_keras.experiments.report import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_data(path, seed=0):
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.random((n, 16, 16, 1)).astype("float32") * 0.2
        for i, c in enumerate(y):
            x[i, 5 * c : 5 * c + 5, :, 0] += 0.7
        return np.clip(x, 0, 1), y

    x_train, y_train = make(256)
    x_test, y_test = make(48)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def _config_text(data, methods, seeds=1, epochs=3):
    return f"""
[experiment]
dataset = "{data}"
epsilon = 0.01
seeds = {seeds}

[training]
arch = "cnn3"
epochs = {epochs}
warmup_epochs = 1
ramp_epochs = 1
batch_size = 64
validation_samples = 0
standard_weight = 0.5

[evaluation]
prune_ratios = [0.0, 0.5, 0.7]
bits = [8, 4]
calibration_samples = 32
headline_ratio = 0.7
{methods}
"""


ALL_METHODS = """
[methods.ibp]
method = "ibp-then-compress"
[methods.cactus]
method = "cactus"
compression = "prune+quant"
[methods.ibp-finetune]
method = "ibp-then-finetune"
epochs = 1
prune_ratios = [0.7]
bits = [8]
[methods.tfmot]
method = "tfmot"
source = "cactus"
epochs = 1
prune_ratios = [0.7]
"""


def _write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("experiment")
    data = _tiny_data(directory / "tiny.npz")
    config_path = _write(directory, _config_text(data, ALL_METHODS))
    output = str(directory / "out")
    code = cli.main(["experiment", config_path, "--output", output, "--no-progress"])
    assert code == 0
    with open(os.path.join(output, "results.json")) as f:
        results = json.load(f)
    return {"config": config_path, "output": output, "results": results, "data": data}


def _rows(results, run):
    return [r for record in results["runs"] if record["run"] == run for r in record["rows"]]


@pytest.mark.slow
def test_pipeline_writes_every_output(experiment):
    output = experiment["output"]
    for name in ("results.json", "results.csv", "runs.csv", "report.md"):
        assert os.path.getsize(os.path.join(output, name)) > 0
    for name in ("certified_vs_pruning.png", "clean_vs_certified.png"):
        with open(os.path.join(output, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC
    report = open(os.path.join(output, "report.md")).read()
    assert "## Headline" in report and "| pruned 0.7 | cactus | tfmot (tfmot)" in report
    assert "| int8 .tflite | cactus | ibp (ibp-then-compress)" in report
    csv_lines = open(os.path.join(output, "results.csv")).read().strip().splitlines()
    assert len(csv_lines) == 1 + len(experiment["results"]["summary"])


def test_each_method_reports_its_levels(experiment):
    results = experiment["results"]
    levels = lambda run: sorted(  # noqa: E731
        (r["form"], r["ratio"] if r["ratio"] is not None else -1, r["bits"] or 0)
        for r in _rows(results, run)
    )
    grid = [("prune", 0.0, 0), ("prune", 0.5, 0), ("prune", 0.7, 0),
            ("quantize", -1, 4), ("quantize", -1, 8), ("tflite", -1, 8)]
    assert levels("ibp") == grid
    assert levels("cactus") == grid
    assert levels("ibp-finetune") == [("prune", 0.7, 0), ("quantize", -1, 8), ("tflite", -1, 8)]
    assert levels("tfmot") == [("prune", 0.7, 0), ("tflite", -1, 8)]
    for record in results["runs"]:
        for r in record["rows"]:
            # Certified samples are correctly classified samples.
            assert 0.0 <= r["certified_accuracy"] <= r["clean_accuracy"] <= 1.0
            if r["form"] == "prune" and r["ratio"]:
                assert r["sparsity"] == pytest.approx(r["ratio"], abs=0.01)
            if r["form"] == "tflite":
                assert r["simulation_agreement"] >= 0.95


def test_rows_match_an_independent_certification(experiment):
    """The reported numbers are those of the saved networks, certified again here."""
    output, results = experiment["output"], experiment["results"]
    data = cactus_keras.data.load(experiment["data"])
    run_dir = os.path.join(output, "runs", "ibp-finetune", "seed0")
    pruned = keras.saving.load_model(os.path.join(run_dir, "pruned_0.7.keras"))
    kernels = [keras.ops.convert_to_numpy(k) for k in prunable_kernels(pruned)]
    assert sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.7, abs=0.01)
    result = cactus_keras.certify(pruned, data.x_test, data.y_test, 0.01)
    (row,) = [r for r in _rows(results, "ibp-finetune") if r["form"] == "prune"]
    assert row["certified_accuracy"] == pytest.approx(result.certified_accuracy)
    assert row["clean_accuracy"] == pytest.approx(result.clean_accuracy)
    network = keras.saving.load_model(os.path.join(output, "runs", "ibp", "seed0", "network.keras"))
    result = cactus_keras.certify(network, data.x_test, data.y_test, 0.01)
    (row,) = [r for r in _rows(results, "ibp") if r["form"] == "prune" and r["ratio"] == 0.0]
    assert row["certified_accuracy"] == pytest.approx(result.certified_accuracy)


def test_finetuning_changes_the_source_weights(experiment):
    output = experiment["output"]
    source = keras.saving.load_model(os.path.join(output, "runs", "ibp", "seed0", "network.keras"))
    tuned = keras.saving.load_model(os.path.join(output, "runs", "ibp-finetune", "seed0", "quantized_8bit.keras"))
    a, b = prunable_kernels(source)[0], prunable_kernels(tuned)[0]
    assert not np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # The saved network is the quantized one: quantizing it again changes nothing.
    value = keras.ops.convert_to_numpy(b)
    requantized = keras.ops.convert_to_numpy(cactus_keras.compression.fake_quantize(value, 8))
    np.testing.assert_allclose(requantized, value, atol=1e-6)


def test_resume_does_not_retrain(experiment, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(training_module, "train", fail)
    monkeypatch.setattr(cactus_keras.interop.tfmot, "tfmot_prune", fail)
    output = experiment["output"]
    before = os.path.getmtime(os.path.join(output, "runs", "cactus", "seed0", "network.keras"))
    # An interrupted run: its result is gone, its finished steps are not.
    os.remove(os.path.join(output, "runs", "tfmot", "seed0", "result.json"))
    assert cli.main(["experiment", experiment["config"], "--output", output, "--no-progress"]) == 0
    assert os.path.getmtime(os.path.join(output, "runs", "cactus", "seed0", "network.keras")) == before
    with open(os.path.join(output, "results.json")) as f:
        again = json.load(f)
    assert again["summary"] == experiment["results"]["summary"]


def test_changed_settings_in_an_old_output_are_an_error(experiment, tmp_path):
    text = open(experiment["config"]).read().replace("epochs = 3", "epochs = 4")
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="other settings"):
        run_experiment(load_config(path), experiment["output"], progress=False)


@pytest.mark.slow
def test_seeds_report_mean_and_standard_deviation(tmp_path):
    data = _tiny_data(tmp_path / "tiny.npz")
    text = _config_text(data, '[methods.ibp]\nmethod = "ibp-then-compress"\n', epochs=2)
    text = text.replace("bits = [8, 4]", "bits = []").replace("[evaluation]", "[evaluation]\ntflite = false")
    path = _write(tmp_path, text)
    output = str(tmp_path / "out")
    assert cli.main(["experiment", path, "--output", output, "--seeds", "2", "--no-progress"]) == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert sorted(r["seed"] for r in results["runs"]) == [0, 1]
    zero = [e for e in results["summary"] if e["ratio"] == 0.0][0]
    values = [r["clean_accuracy"] for rec in results["runs"] for r in rec["rows"] if r["ratio"] == 0.0]
    assert zero["seeds"] == 2
    assert zero["clean_accuracy_mean"] == pytest.approx(np.mean(values))
    assert zero["clean_accuracy_std"] == pytest.approx(np.std(values, ddof=1))
    # Different seeds give different networks.
    weights = [keras.saving.load_model(p).get_weights()[0]
               for p in sorted(glob.glob(os.path.join(output, "runs", "ibp", "seed*", "network.keras")))]
    assert not np.allclose(weights[0], weights[1])


def test_summary_statistics():
    rows = [{"run": "a", "method": "cactus", "form": "prune", "pruning_method": "global_l1",
             "ratio": 0.5, "bits": None, "samples": 10, "clean_accuracy": c,
             "certified_accuracy": c / 2, "sparsity": 0.5} for c in (0.6, 0.8, 0.7)]
    (entry,) = summarize(rows)
    assert entry["seeds"] == 3
    assert entry["clean_accuracy_mean"] == pytest.approx(0.7)
    assert entry["certified_accuracy_std"] == pytest.approx(0.05)


# ----- bad configs fail before any training -----

@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started for a bad config")

    monkeypatch.setattr(training_module, "train", fail)


@pytest.mark.parametrize(
    "methods, message",
    [
        ('[methods.x]\nmethod = "cactuss"\n', "unknown method 'cactuss'"),
        ('[methods.x]\ncompression = "prune"\n', "`method` is required"),
        ('[methods.x]\nmethod = "cactus"\nepochz = 3\n', "unknown option\\(s\\) epochz"),
        ('[methods.x]\nmethod = "ibp-then-finetune"\nsource = "nope"\n', "source 'nope' is not a run"),
        ('[methods.x]\nmethod = "cactus"\ncompression = "none"\n', "needs compression"),
        ('[methods.x]\nmethod = "cactus"\n[methods.y]\nmethod = "tfmot"\nsource = "x"\nprune_ratios = [1.5]\n',
         "`prune_ratios` must be in"),
        ('[methods.x]\nmethod = "ibp-then-compress"\n[methods.y]\nmethod = "tfmot"\nsource = "z"\n'
         '[methods.z]\nmethod = "ibp-then-finetune"\nsource = "x"\n', "trains no network"),
        ("", "no methods"),
    ],
)
def test_bad_method_tables(tmp_path, no_training, methods, message):
    path = _write(tmp_path, _config_text("unused.npz", methods))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_keys_and_values(tmp_path, no_training):
    base = _config_text("unused.npz", '[methods.x]\nmethod = "cactus"\n')
    cases = [
        (base.replace("arch = ", "archh = "), "unknown key\\(s\\) archh"),
        (base.replace('arch = "cnn3"', 'arch = "resnet"'), "Unknown arch"),
        (base.replace("epsilon = 0.01", "epsilon = -1"), "epsilon"),
        (base.replace("bits = [8, 4]", "bits = [9]"), "bits"),
        (base.replace("[evaluation]", "[evaluation]\nbound = 'crwn'"), "Unknown `bound` 'crwn'"),
        (base.replace("[evaluation]", "[evaluation]\nbound_samples = 0"), "bound_samples"),
        (base.replace('method = "cactus"', 'method = "cactus"\ncertified_loss = "mtl"'),
         "Unknown `certified_loss` 'mtl'"),
        (base.replace('method = "cactus"', 'method = "cactus"\ncertified_loss = "mtl-ibp"\nmtl_alpha = 2'),
         "`mtl_alpha`"),
        (base.replace('method = "cactus"', 'method = "cactus"\nsabr_lambda = 0.5'),
         "option of certified_loss 'sabr'"),
        (base + "\n[extra]\n", "unknown key\\(s\\) extra"),
        ("[experiment\n", "not valid TOML"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path, text))


def test_certified_losses_and_expensive_bounds_in_a_config(tmp_path, no_training):
    methods = ('[methods.x]\nmethod = "cactus"\ncertified_loss = "mtl-ibp"\nmtl_alpha = 0.3\n'
               'attack_steps = 2\n[methods.y]\nmethod = "ibp-then-compress"\ncertified_loss = "sabr"\n')
    text = _config_text("unused.npz", methods).replace(
        "[evaluation]", '[evaluation]\nbound = "alpha-crown"\nbound_samples = 20')
    config = load_config(_write(tmp_path, text))
    x = config.train_config(config.methods["x"].overrides(), seed=0)
    assert (x.certified_loss, x.mtl_alpha, x.attack_steps) == ("mtl-ibp", 0.3, 2)
    assert config.train_config(config.methods["y"].overrides(), seed=0).certified_loss == "sabr"
    assert config.evaluation["bound_samples"] == 20
    # A change of the loss changes what a run's results mean: its fingerprint changes.
    assert config.methods["x"].spec() != config.methods["y"].spec()


def test_missing_dataset_fails_before_training(tmp_path, no_training, capsys):
    path = _write(tmp_path, _config_text(str(tmp_path / "missing.npz"), ALL_METHODS))
    assert cli.main(["experiment", path, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cactus-keras experiment: error:" in err and "missing.npz" in err
    assert not os.path.exists(tmp_path / "out" / "runs")


def test_architecture_that_does_not_fit_the_data(tmp_path, no_training):
    rng = np.random.default_rng(0)
    data = str(tmp_path / "small.npz")
    np.savez(data, x_train=rng.random((8, 6, 6, 1)), y_train=rng.integers(0, 2, 8),
             x_test=rng.random((4, 6, 6, 1)), y_test=rng.integers(0, 2, 4))
    path = _write(tmp_path, _config_text(data, '[methods.x]\nmethod = "cactus"\n'))
    with pytest.raises(ConfigError, match="cannot take"):
        run_experiment(load_config(path), str(tmp_path / "out"), progress=False)


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["experiment", str(tmp_path / "none.toml"), "--output", str(tmp_path)]) == 2
    assert "No experiment config" in capsys.readouterr().err


def test_check_prints_the_plan_and_trains_nothing(tmp_path, no_training, capsys):
    data = _tiny_data(tmp_path / "tiny.npz")
    path = _write(tmp_path, _config_text(data, ALL_METHODS))
    assert cli.main(["experiment", path, "--output", str(tmp_path / "out"), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.index("  ibp:") < out.index("  ibp-finetune:")
    assert out.index("  cactus:") < out.index("  tfmot:")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(
    os.path.dirname(__file__), "..", "examples", "configs", "*.toml"))))
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.methods and config.ordered_runs()


def test_parse_config_is_usable_from_python():
    config = parse_config({
        "experiment": {"dataset": "fashion_mnist", "epsilon": 0.1},
        "methods": {"c": {"method": "cactus"}, "i": {"method": "ibp-then-compress"}},
    })
    assert config.train_config(config.methods["c"].overrides(), seed=3).compression == "prune+quant"
    assert config.train_config(config.methods["i"].overrides(), seed=3).compression == "none"


def test_run_fingerprints_follow_what_changes_results(tmp_path):
    """A run's spec (checked on resume) changes with any setting its results depend
    on, its source's included, and not with the report-only headline ratio."""
    base = _config_text("unused.npz", ALL_METHODS)
    specs = lambda text: {n: m.spec() for n, m in load_config(_write(tmp_path, text)).methods.items()}  # noqa: E731
    original = specs(base)
    assert specs(base.replace("headline_ratio = 0.7", "headline_ratio = 0.5")) == original
    bound = specs(base.replace("[evaluation]", "[evaluation]\nbound = 'crown-ibp'"))
    assert all(bound[name] != original[name] for name in original)
    # [training] reaches the fine-tuning run through its source and its fallbacks.
    weight = specs(base.replace("standard_weight = 0.5", "standard_weight = 0.3"))
    assert weight["ibp-finetune"] != original["ibp-finetune"]
    assert weight["tfmot"] != original["tfmot"]
