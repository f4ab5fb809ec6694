"""`cactus-keras experiment`: the whole pipeline on tiny data, resuming, bad configs."""

import contextlib
import glob
import io
import json
import os

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import atomic_write, cli
from cactus_keras.compression import compressible_kernels
from cactus_keras.experiments import ConfigError, load_config, parse_config, run_experiment
from cactus_keras.experiments import runner
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
bits = [8, 4]
tflite_prune = {{ global_l1 = [0.7] }}
calibration_samples = 32
headline_ratio = 0.7
[evaluation.prune]
global_l1 = [0.5, 0.7]
local_l1 = [0.7]
global_l2_structured = [0.5]
{methods}
"""

# The fixture's grid: each pruning method at its own ratios, two bit widths, the file
# under both rounding models, then the file of the network pruned at global_l1 0.7.
GRID_BASE = [("prune", "global_l1", 0.5, None), ("prune", "global_l1", 0.7, None),
             ("prune", "local_l1", 0.7, None), ("prune", "global_l2_structured", 0.5, None),
             ("quantize", None, None, 8), ("quantize", None, None, 4)]
FILES = [("tflite", None, None, 8), ("tflite", None, None, 8),
         ("tflite", "global_l1", 0.7, 8), ("tflite", "global_l1", 0.7, 8)]
ROUNDING_ORDER = ["nearest", "floor_ceil", "nearest", "floor_ceil"]
GRID = GRID_BASE + FILES


ALL_METHODS = """
[methods.ibp]
method = "ibp-then-compress"
[methods.cactus]
method = "cactus"
compression = "pruning+awp_quantization"
[methods.ibp-finetune]
method = "ibp-then-finetune"
epochs = 1
[methods.tfmot]
method = "tfmot"
source = "cactus"
epochs = 1
ratios = [0.7]
"""


def _write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("experiment")
    data = _tiny_data(directory / "tiny.npz")
    # The config names another dataset: --dataset replaces it (never loaded).
    config_path = _write(directory, _config_text("mnist", ALL_METHODS))
    output = str(directory / "out")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["experiment", config_path, "--output", output, "--no-progress",
                         "--dataset", data])
    assert code == 0
    with open(os.path.join(output, "results.json")) as f:
        results = json.load(f)
    return {"config": config_path, "output": output, "results": results, "data": data,
            "printed": printed.getvalue(), "dataset_args": ["--dataset", data]}


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
    assert "## Headline" in report and "| cactus | int8 .tflite (nearest) |" in report
    assert "| cactus | int8 .tflite of global_l1 0.7 (floor_ceil) |" in report
    for method in ("global_l1", "local_l1", "global_l2_structured", "TF-MOT, per layer"):
        assert f"## Pruning: {method}" in report
    csv_lines = open(os.path.join(output, "results.csv")).read().strip().splitlines()
    assert len(csv_lines) == 1 + len(experiment["results"]["summary"])


def test_each_method_reports_its_levels(experiment):
    results = experiment["results"]
    levels = lambda run: [  # noqa: E731
        (r["form"], r["pruning_method"], r["ratio"], r["bits"]) for r in _rows(results, run)]
    uncompressed = ("prune", None, 0.0, None)
    # Every trained run: the uncompressed network, then the grid in its order.
    assert levels("ibp") == [uncompressed] + GRID
    assert levels("cactus") == [uncompressed] + GRID
    # Fine-tuning: one fine-tuned network per compressed level, the int8 file from the
    # 8-bit one.
    assert levels("ibp-finetune") == GRID_BASE[:5] + FILES[:2] + [GRID_BASE[5]]
    assert levels("tfmot") == [("prune", "tfmot_constant_sparsity", 0.7, None)] + FILES[:2]
    files = [r.get("rounding") for r in _rows(results, "cactus") if r["form"] == "tflite"]
    assert files == ROUNDING_ORDER
    for record in results["runs"]:
        for r in record["rows"]:
            # Certified samples are correctly classified samples.
            assert 0.0 <= r["certified_accuracy"] <= r["clean_accuracy"] <= 1.0
            if r["form"] == "prune" and r["ratio"] and r["pruning_method"] != "global_l2_structured":
                assert r["sparsity"] == pytest.approx(r["ratio"], abs=0.01)
            if r["form"] == "tflite":
                assert r["simulation_agreement"] >= 0.95


def test_rows_match_an_independent_certification(experiment):
    """The reported numbers are those of the saved networks, certified again here."""
    output, results = experiment["output"], experiment["results"]
    data = cactus_keras.data.load(experiment["data"])
    run_dir = os.path.join(output, "runs", "ibp-finetune", "seed0")
    pruned = keras.saving.load_model(os.path.join(run_dir, "pruned_global_l1_0.7.keras"))
    kernels = [keras.ops.convert_to_numpy(k) for k in compressible_kernels(pruned)]
    assert sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.7, abs=0.01)
    result = cactus_keras.certify(pruned, data.x_test, data.y_test, 0.01)
    (row,) = [r for r in _rows(results, "ibp-finetune") if r["form"] == "prune"
              and r["pruning_method"] == "global_l1" and r["ratio"] == 0.7]
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
    a, b = compressible_kernels(source)[0], compressible_kernels(tuned)[0]
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
    assert cli.main(["experiment", experiment["config"], "--output", output, "--no-progress",
                     *experiment["dataset_args"]]) == 0
    assert os.path.getmtime(os.path.join(output, "runs", "cactus", "seed0", "network.keras")) == before
    with open(os.path.join(output, "results.json")) as f:
        again = json.load(f)
    assert again["summary"] == experiment["results"]["summary"]


def test_changed_settings_in_an_old_output_are_an_error(experiment, tmp_path):
    text = open(experiment["config"]).read().replace("epochs = 3", "epochs = 4")
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="other settings"):
        run_experiment(load_config(path, dataset=experiment["data"]), experiment["output"],
                       progress=False)


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
        ('[methods.x]\nmethod = "cactus"\n[methods.y]\nmethod = "tfmot"\nsource = "x"\nratios = [1.5]\n',
         "`ratios` must be in"),
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
    assert config.train_config(config.methods["c"].overrides(), seed=3).compression == "pruning+awp_quantization"
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


# ----- the evaluation grid, fine-tuning at every level, the headline, --dataset -----

def test_default_grid_has_exactly_the_listed_levels():
    from cactus_keras.experiments.evaluation import check_evaluation, grid_levels

    unstructured = [0.5, 0.7, 0.8, 0.9, 0.95]
    expected = ([("prune", "global_l1", r, None, None) for r in unstructured]
                + [("prune", "local_l1", r, None, None) for r in unstructured]
                + [("prune", "global_l2_structured", r, None, None) for r in (0.3, 0.5, 0.7)]
                + [("quantize", None, None, 8, None), ("quantize", None, None, 4, None)]
                + [("tflite", None, None, 8, r) for r in ("nearest", "floor_ceil")]
                + [("tflite", "global_l1", 0.9, 8, r) for r in ("nearest", "floor_ceil")]
                + [("tflite", "global_l2_structured", 0.5, 8, r) for r in ("nearest", "floor_ceil")])
    assert [tuple(level) for level in grid_levels(check_evaluation({}))] == expected
    config = parse_config({"experiment": {"dataset": "fashion_mnist", "epsilon": 0.1},
                           "methods": {"i": {"method": "ibp-then-compress"},
                                       "f": {"method": "ibp-then-finetune", "source": "i"}}})
    assert [tuple(level) for level in grid_levels(config.evaluation)] == expected
    # Fine-tuning defaults to every compressed level but the files (the int8 file comes
    # from 8 bits).
    assert [tuple(level) for level in config.methods["f"].levels()] == expected[:-6]


def test_pruning_grid_forms_and_errors(tmp_path, no_training):
    from cactus_keras.experiments.evaluation import check_evaluation

    # The one-method shorthand; ratio 0 is always there and is not a pruned level.
    assert check_evaluation({"ratios": [0.0, 0.9, 0.5], "pruning_method": "local_l1"})[
        "prune"] == {"local_l1": [0.5, 0.9]}
    assert check_evaluation({"ratios": [0.7]})["prune"] == {"global_l1": [0.7]}
    assert check_evaluation({"prune": {"global_l2_structured": [0.3]}})["prune"] == {
        "global_l2_structured": [0.3]}
    assert check_evaluation({"prune": {}})["prune"] == {}
    cases = [
        ({"prune": {"global_l1": [0.5]}, "ratios": [0.5]}, "not both"),
        ({"prune": {"global_l2": [0.5]}}, "unknown pruning method\\(s\\) 'global_l2'"),
        ({"prune": {"local_l1": [1.2]}}, "`prune.local_l1` must be in"),
        ({"prune": [0.5]}, "`prune` must be a table"),
        ({"pruning_method": "l1"}, "Unknown `pruning_method` 'l1'"),
    ]
    for table, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_evaluation(table, "[evaluation]")
    base = _config_text("unused.npz", '[methods.i]\nmethod = "ibp-then-compress"\n'
                        '[methods.f]\nmethod = "ibp-then-finetune"\nsource = "i"\n{own}')
    levels = lambda own: [tuple(level) for level in load_config(  # noqa: E731
        _write(tmp_path, base.replace("{own}", own))).methods["f"].levels()]
    assert levels('prune = { local_l1 = [0.9] }\nbits = [4]\n') == [
        ("prune", "local_l1", 0.9, None, None), ("quantize", None, None, 4, None)]
    # Bare ratios: at every pruning method of the grid.
    assert levels("ratios = [0.6]\nbits = []\n") == [
        ("prune", m, 0.6, None, None) for m in ("global_l1", "local_l1", "global_l2_structured")]
    with pytest.raises(ConfigError, match="\\[methods.f\\]: give either `prune`"):
        levels("ratios = [0.6]\nprune = { local_l1 = [0.9] }\n")


def test_several_pruning_methods_match_evaluate_compressed(experiment):
    """Each pruning method's rows are those of an independent `evaluate_compressed`."""
    output, results = experiment["output"], experiment["results"]
    data = cactus_keras.data.load(experiment["data"])
    for run in ("ibp", "cactus"):
        network = keras.saving.load_model(os.path.join(output, "runs", run, "seed0", "network.keras"))
        rows = _rows(results, run)
        for method, ratios in (("global_l1", [0.5, 0.7]), ("local_l1", [0.7]),
                               ("global_l2_structured", [0.5])):
            table = cactus_keras.evaluate_compressed(network, data.x_test, data.y_test, 0.01,
                                                     ratios=ratios, pruning_method=method)
            for expected in table.rows:
                (found,) = [r for r in rows if r["form"] == "prune" and r["pruning_method"] == method
                            and r["ratio"] == expected["ratio"]]
                for key in ("clean_accuracy", "certified_accuracy", "sparsity"):
                    assert found[key] == pytest.approx(expected[key])


def test_finetuning_makes_one_network_per_level(experiment):
    run_dir = os.path.join(experiment["output"], "runs", "ibp-finetune", "seed0")
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "*.keras")))
    assert names == ["pruned_global_l1_0.5.keras", "pruned_global_l1_0.7.keras",
                     "pruned_global_l2_structured_0.5.keras", "pruned_local_l1_0.7.keras",
                     "quantized_4bit.keras", "quantized_8bit.keras"]
    rows = _rows(experiment["results"], "ibp-finetune")
    assert len(rows) == len(set((r["form"], r["pruning_method"], r["ratio"], r["bits"], r.get("rounding"))
                                for r in rows))
    # The structured fine-tuned network keeps its mask: whole units are zero.
    pruned = keras.saving.load_model(os.path.join(run_dir, "pruned_global_l2_structured_0.5.keras"))
    kernels = [keras.ops.convert_to_numpy(k) for k in compressible_kernels(pruned)]
    units = np.concatenate([np.abs(k.reshape(-1, k.shape[-1])).sum(axis=0) for k in kernels[:-1]])
    assert (units == 0).mean() == pytest.approx(0.5, abs=0.05)


def _headline_lines(text):
    return [line for line in text.splitlines() if line.startswith("| cactus |")]


def test_headline_lists_every_level_with_the_tables_numbers(experiment):
    from cactus_keras.experiments.report import round_down, round_up

    results, output = experiment["results"], experiment["output"]
    report = open(os.path.join(output, "report.md")).read()
    section = report.split("## Headline")[1].split("\n## ")[0]
    lines = _headline_lines(section)
    labels = ["uncompressed (cost)", "global_l1 0.5", "global_l1 0.7", "local_l1 0.7",
              "global_l2_structured 0.5", "8-bit kernels", "4-bit kernels",
              "int8 .tflite (nearest)", "int8 .tflite (floor_ceil)",
              "int8 .tflite of global_l1 0.7 (nearest)", "int8 .tflite of global_l1 0.7 (floor_ceil)"]
    assert [line.split(" | ")[1] for line in lines] == labels
    # The main job prints the same headline.
    assert _headline_lines(experiment["printed"]) == lines
    summary = results["summary"]
    keys = ([("prune", None, 0.0, None, None)] + [k + (None,) for k in GRID_BASE]
            + [k + (r,) for k, r in zip(FILES, ROUNDING_ORDER)])

    def entry(run, form, method, ratio, bits, rounding):
        for e in summary:
            if e["run"] != run or e["form"] != form:
                continue
            if form == "prune" and e["ratio"] == ratio and (ratio == 0.0 or e["pruning_method"] == method):
                return e
            if form == "tflite" and (e["pruning_method"], e["ratio"], e["rounding"]) != (
                    method, ratio, rounding):
                continue
            if form != "prune" and e["bits"] == bits:
                return e
        return None

    for line, key in zip(lines, keys):
        cells = [c.strip() for c in line.strip("|").split("|")]
        mine = entry("cactus", *key)["certified_accuracy_mean"]
        # tfmot starts from the CACTUS network: not a baseline.
        candidates = [e for e in (entry(run, *key) for run in ("ibp", "ibp-finetune")) if e]
        best = max(candidates, key=lambda e: e["certified_accuracy_mean"])
        assert cells[3] == f"{best['run']} ({best['method']})"
        assert cells[2] == f"{round_down(mine):.4f}"
        assert cells[4] == f"{round_up(best['certified_accuracy_mean']):.4f}"
        assert cells[5] == f"{round_down(mine - best['certified_accuracy_mean']):+.4f}"
        assert cells[6] == "one seed"
    assert "one seed, so no spread" in section


def _synthetic_rows(values):
    """Rows of runs c (cactus), i (ibp), f (finetune of i), t (tfmot of i) from
    {(run, level key): [certified per seed]}."""
    rows = []
    for (run, form, method, ratio, bits), per_seed in values.items():
        name = {"c": "cactus", "i": "ibp-then-compress", "f": "ibp-then-finetune", "t": "tfmot"}[run[0]]
        for seed, value in enumerate(per_seed):
            rows.append({"run": run, "method": name, "seed": seed, "form": form,
                         "pruning_method": method, "ratio": ratio, "bits": bits, "samples": 100,
                         "clean_accuracy": 1.0, "certified_accuracy": value, "sparsity": 0.0})
    return rows


def test_headline_best_baseline_spread_and_rounding():
    from cactus_keras.experiments.report import headline, headline_markdown, round_down

    config = parse_config({
        "experiment": {"dataset": "fashion_mnist", "epsilon": 0.1},
        "evaluation": {"prune": {"local_l1": [0.7]}, "bits": [8], "tflite": False},
        "methods": {"c": {"method": "cactus"}, "i": {"method": "ibp-then-compress"},
                    "f": {"method": "ibp-then-finetune", "source": "i"},
                    "t": {"method": "tfmot", "source": "i"}}})
    rows = _synthetic_rows({
        ("c", "prune", None, 0.0, None): [0.50, 0.52, 0.54],
        ("i", "prune", None, 0.0, None): [0.51, 0.53, 0.55],
        ("c", "prune", "local_l1", 0.7, None): [0.40, 0.41, 0.45],
        ("i", "prune", "local_l1", 0.7, None): [0.10, 0.10, 0.10],
        ("f", "prune", "local_l1", 0.7, None): [0.30, 0.30, 0.33],
        # TF-MOT's per-layer pruning is the best baseline at local_l1 0.7.
        ("t", "prune", "tfmot_constant_sparsity", 0.7, None): [0.35, 0.36, 0.37],
        ("c", "quantize", None, None, 8): [0.50001, 0.50001, 0.50001],
        ("i", "quantize", None, None, 8): [0.50000, 0.50000, 0.50000],
    })
    entries = headline(config, rows, summarize(rows))
    assert [e["level"] for e in entries] == ["uncompressed (cost)", "local_l1 0.7", "8-bit kernels"]
    assert [e["baseline_run"] for e in entries] == ["i", "t", "i"]
    assert entries[0]["difference"] == pytest.approx(-0.01)
    assert entries[1]["differences"] == pytest.approx([0.05, 0.05, 0.08])
    lines = [line for line in headline_markdown(entries, ["i", "f", "t"], 3) if line.startswith("| c |")]
    assert lines[0].endswith(f"| {round_down(-0.01):+.4f} | ± {np.std([0.01] * 3, ddof=1):.4f} |")
    assert f"± {np.std([0.05, 0.05, 0.08], ddof=1):.4f}" in lines[1]
    # +0.00001 is not rounded up into a win: printed as +0.0000, never +0.0001.
    assert "| +0.0000 |" in lines[2] and "| 0.5000 | i (ibp-then-compress) | 0.5000 |" in lines[2]
    two = headline(config, [r for r in rows if r["seed"] < 2], summarize([r for r in rows if r["seed"] < 2]))
    (line,) = [x for x in headline_markdown(two, ["i"], 2) if "local_l1 0.7" in x]
    assert line.endswith("| +0.0500..+0.0500 |")


def test_dataset_flag_is_recorded_and_in_the_fingerprint(experiment, tmp_path, capsys):
    output, data = experiment["output"], experiment["data"]
    report = open(os.path.join(output, "report.md")).read()
    assert f"dataset `{data}` given in place of the config's `mnist`" in report
    assert f"--dataset {data}" in report
    results = experiment["results"]
    assert results["config"]["dataset"] == data and results["config"]["config_dataset"] == "mnist"
    spec = json.load(open(os.path.join(output, "runs", "ibp", "seed0", "spec.json")))
    assert spec["dataset"] == data
    assert spec["data_digest"] == runner.data_digest(cactus_keras.data.load(data))
    # Another dataset in the same output: refused before any training, not mixed in.
    other = _tiny_data(tmp_path / "other.npz", seed=1)
    argv = ["experiment", experiment["config"], "--output", output, "--no-progress"]
    assert cli.main(argv + ["--dataset", other]) == 2
    assert "holds a run made with other data" in capsys.readouterr().err


def test_same_path_with_other_content_is_refused(tmp_path):
    path = _tiny_data(tmp_path / "data.npz")
    config = load_config(_write(tmp_path, _config_text(path, '[methods.ibp]\nmethod = "ibp-then-compress"\n')))
    before = cactus_keras.data.load(path)
    spec = runner._spec(config, config.methods["ibp"], 0, runner.data_digest(before))
    atomic_write.write_json(str(tmp_path / "out" / "runs" / "ibp" / "seed0" / "spec.json"), spec)
    runner._preflight(config, before, str(tmp_path / "out"))  # the same data: accepted
    _tiny_data(tmp_path / "data.npz", seed=1)
    with pytest.raises(ConfigError, match="other data"):
        runner._preflight(config, cactus_keras.data.load(path), str(tmp_path / "out"))


def test_bad_dataset_flag_is_one_line_naming_it(tmp_path, no_training, capsys):
    config = _write(tmp_path, _config_text("fashion_mnist", '[methods.ibp]\nmethod = "ibp-then-compress"\n'))
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x_train=np.zeros((4, 6, 6, 1)), y_train=np.zeros(4))
    for value, expected in [(str(tmp_path / "missing.npz"), "No such file"),
                            ("fashion_mnistt", "Unknown dataset 'fashion_mnistt'"),
                            (bad, "missing arrays x_test, y_test")]:
        argv = ["experiment", config, "--output", str(tmp_path / "out"), "--dataset", value]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith(f"cactus-keras experiment: error: --dataset '{value}'") and expected in err
        assert not os.path.exists(tmp_path / "out" / "runs")
