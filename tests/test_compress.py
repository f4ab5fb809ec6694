"""The certificate-constrained compression search and `cactus-keras compress`."""

import importlib
import json
import os

import keras
import numpy as np
import pytest

from cactus_keras import cli
from cactus_keras.compress import NoCandidateMeetsFloor, SearchConfig, candidates, pareto_front, run_search

# The module (the package's `search` attribute is the function of that name).
search_module = importlib.import_module("cactus_keras.compress.search")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
EPSILON = 0.004


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A small conv net and 800 images labelled by it (so the unpruned net is right on
    all of them and certifies many at a small epsilon), as arrays and as files."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(4, name="logits"),
    ], name="small")
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (800, 12, 12), dtype=np.uint8)
    x = (raw[..., None] / 255.0).astype("float32")
    y = net.predict(x, verbose=0).argmax(-1)
    folder = tmp_path_factory.mktemp("compress")
    data = folder / "tiny.npz"
    np.savez(data, x_train=raw[:600], y_train=y[:600], x_test=raw[600:], y_test=y[600:])
    model = folder / "small.keras"
    net.save(model)
    return net, x[:600], y[:600], x[600:], y[600:], folder, model, data


def _config(**overrides):
    values = dict(epsilon=EPSILON, min_certified=0.3, ratios=(0.0, 0.25, 0.5, 0.75),
                  max_candidates=16, finalists=3, validation_samples=200,
                  calibration_samples=100, latency_runs=20)
    values.update(overrides)
    return SearchConfig(**values)


def test_candidates_keep_uniform_ratios_and_the_bound():
    config = _config(max_candidates=7)
    grid = candidates(["a", "b", "c"], config)
    assert len(grid) == 7
    for r in config.ratios:
        assert {"a": r, "b": r, "c": r} in grid
    assert len(candidates(["a"], config)) == 4  # the whole grid when it fits


def test_pareto_front_keeps_the_undominated():
    rows = [{"key": "a", "bytes": 10, "certified_accuracy": 0.5},
            {"key": "b", "bytes": 20, "certified_accuracy": 0.4},
            {"key": "c", "bytes": 30, "certified_accuracy": 0.7}]
    assert [r["key"] for r in pareto_front(rows, "bytes")] == ["a", "c"]


def test_search_meets_the_floor_reads_the_test_set_last_and_resumes(problem, tmp_path, monkeypatch):
    net, x, y, x_test, y_test, *_ = problem
    output = tmp_path / "run"
    calls = []

    def load_test():
        # The final report, once: every decision is already written.
        assert (output / "chosen.int8.tflite").exists()
        assert (output / "pareto.json").exists()
        calls.append(1)
        return x_test, y_test

    config = _config()
    report = run_search(net, x, y, config, str(output), load_test=load_test, verbose=0)
    assert len(calls) == 1
    front = json.loads((output / "pareto.json").read_text())
    certified = front["certified"]
    meeting = [r for r in certified if r["certified_accuracy"] >= config.min_certified]
    chosen = report["chosen"]
    assert chosen["validation_certified_accuracy"] >= config.min_certified
    assert chosen["bytes"] == min(r["bytes"] for r in meeting)
    assert any(all(v == 0 for v in r["ratios"].values()) for r in certified)  # unpruned reference
    assert chosen["bytes"] < report["unpruned"]["bytes"]  # the floor leaves room to shrink
    assert report["chosen"]["test_samples"] == len(y_test)
    assert report["chosen"]["rounding"] == "nearest"   # the certificate says what it assumed
    assert (output / "pareto.png").exists()

    # Resumed: nothing is screened, exported or certified again.
    def fail(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(search_module, "certify", fail)
    monkeypatch.setattr(search_module, "to_tflite", fail)
    monkeypatch.setattr(search_module, "verify_tflite",
                        lambda path, x_, y_, *a, **k: _assert_test_only(x_, x_test, path))
    again = run_search(net, x, y, config, str(output), load_test=load_test, verbose=0)
    assert again["chosen"]["key"] == chosen["key"]

    with pytest.raises(ValueError, match="another configuration"):
        run_search(net, x, y, _config(finalists=2), str(output), load_test=load_test, verbose=0)


def _assert_test_only(x, x_test, path):
    assert x is x_test and path.endswith("chosen.int8.tflite")
    from types import SimpleNamespace

    return SimpleNamespace(certified_accuracy=0.5, clean_accuracy=0.9)


def test_no_candidate_meets_the_floor_says_so_and_never_reads_the_test_set(problem, tmp_path):
    net, x, y, *_ = problem

    def load_test():
        raise AssertionError("the test set was read")

    config = _config(min_certified=1.0, max_candidates=2, finalists=1, screen_slack=1.0)
    with pytest.raises(NoCandidateMeetsFloor, match="No int8 file meets --min-certified 1.0000.*fine-tune the pruned finalists \\(--finetune-epochs\\)"):
        run_search(net, x, y, config, str(tmp_path), load_test=load_test, verbose=0)
    assert (tmp_path / "pareto.json").exists()


def test_compress_command(problem, tmp_path, capsys):
    *_, model, data = problem
    args = ["compress", "--model", str(model), "--dataset", str(data), "--epsilon", str(EPSILON),
            "--min-certified", "0.1", "--output", str(tmp_path / "c"), "--ratios", "0,0.5",
            "--finalists", "2", "--validation-samples", "200", "--latency-runs", "10", "--verbose", "0"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["command"].startswith("cactus-keras compress --model")
    assert os.path.exists(tmp_path / "c" / "chosen.int8.tflite")
    floor = ["--min-certified", "1.0", "--output", str(tmp_path / "d")]
    assert cli.main(args[:7] + floor + args[11:]) == 3
    assert "No int8 file meets --min-certified" in capsys.readouterr().err
    assert cli.main(args[:7] + ["--min-certified", "0.1", "--output", str(tmp_path / "e"),
                                "--ratios", "0,x"]) == 2


def test_command_defaults_match_the_library_and_the_parser_stays_light():
    import subprocess
    import sys

    from cactus_keras.compress import cli as compress_cli

    assert compress_cli.DEFAULT_RATIOS == search_module.DEFAULT_RATIOS
    assert compress_cli.OBJECTIVES == search_module.OBJECTIVES
    code = ("import sys, cactus_keras.cli as c; c.build_parser(); "
            "print('cactus_keras.compress.search' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
    assert out.stdout.strip() == "False"


def test_the_rounding_flag_offers_the_rounding_models_and_the_config_checks_them():
    from cactus_keras import cli
    from cactus_keras.compress.search import SearchConfig
    from cactus_keras.int8.rounding import DEFAULT_ROUNDING, ROUNDINGS

    parser = cli.build_parser()
    compress = next(a for a in parser._actions if a.dest == "command").choices["compress"]
    flag = next(a for a in compress._actions if a.dest == "rounding")
    assert set(flag.choices) == set(ROUNDINGS) and flag.default == DEFAULT_ROUNDING
    assert SearchConfig(epsilon=0.1, min_certified=0.5).rounding == DEFAULT_ROUNDING
    with pytest.raises(ValueError, match="rounding"):
        SearchConfig(epsilon=0.1, min_certified=0.5, rounding="up")


def test_finetune_trains_on_training_minus_validation_never_reads_the_test_set_and_resumes(
        problem, tmp_path, monkeypatch):
    net, x, y, x_test, y_test, *_ = problem
    output = tmp_path / "tuned"
    config = _config(finetune_epochs=1, finetune_learning_rate=1e-3, ratios=(0.0, 0.5),
                     max_candidates=4, finalists=3, min_certified=0.0)
    seen, calls = [], []
    real_finetune = search_module.finetune

    def spy(network, x_fit, y_fit, config_):
        # The validation split (the last 200 training images) is never trained on.
        assert len(x_fit) == len(x) - config.validation_samples
        np.testing.assert_array_equal(x_fit, x[: -config.validation_samples])
        seen.append(network.count_params())
        return real_finetune(network, x_fit, y_fit, config_)

    def load_test():
        assert (output / "chosen.int8.tflite").exists() and (output / "pareto.json").exists()
        calls.append(1)
        return x_test, y_test

    monkeypatch.setattr(search_module, "finetune", spy)
    report = run_search(net, x, y, config, str(output), load_test=load_test, verbose=0)
    assert len(calls) == 1
    front = json.loads((output / "pareto.json").read_text())
    assert "fine-tunes of 1 epoch of 400 training images" in front["cost"]
    pruned = [r for r in front["certified"] if any(r["ratios"].values())]
    unpruned = [r for r in front["certified"] if not any(r["ratios"].values())]
    # Every pruned finalist is fine-tuned, the unpruned reference is not.
    assert len(seen) == len(pruned) == front["finetuned"] >= 1
    assert all("finetune_loss" in r and (output / r["finetuned_network"]).exists() for r in pruned)
    assert len(unpruned) == 1 and "finetune_loss" not in unpruned[0]
    assert report["chosen"]["validation_certified_accuracy"] >= config.min_certified

    # Resumed with a finalist's file gone: it is exported again from the saved
    # fine-tuned network, never fine-tuned again, and the test set is read once more only.
    def fail(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(search_module, "finetune", fail)
    monkeypatch.setattr(search_module, "certify", fail)
    os.remove(output / pruned[0]["file"])
    again = run_search(net, x, y, config, str(output), load_test=load_test, verbose=0)
    assert (output / pruned[0]["file"]).exists()
    assert again["chosen"]["key"] == report["chosen"]["key"]
    assert len(calls) == 2
    with pytest.raises(ValueError, match="another configuration"):
        run_search(net, x, y, _config(finetune_epochs=2, ratios=(0.0, 0.5), max_candidates=4,
                                      finalists=3, min_certified=0.0, finetune_learning_rate=1e-3),
                   str(output), load_test=load_test, verbose=0)


def test_finetune_is_deterministic_and_changes_the_weights(problem):
    from cactus_keras.compression import prune_structured, shrink

    net, x, y, *_ = problem
    config = _config(finetune_epochs=1, finetune_learning_rate=1e-3)
    tuned = []
    for _ in range(2):
        small = shrink(prune_structured(net, {"conv": 0.5}, per_layer=True))
        before = [w.copy() for w in small.get_weights()]
        loss = search_module.finetune(small, x[:256], y[:256], config)
        assert np.isfinite(loss)
        tuned.append(small.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(before, tuned[0]))
    for a, b in zip(*tuned):
        np.testing.assert_array_equal(a, b)


def test_a_search_written_before_the_finetune_resumes_as_one_without_it(tmp_path, problem):
    net = problem[0]
    config = _config()
    stored = {k: v for k, v in config.to_dict().items() if not k.startswith("finetune_")}
    (tmp_path / "search_config.json").write_text(json.dumps({**stored, "network": net.name}))
    search_module._check_config(str(tmp_path), config, net)  # no error: nothing was fine-tuned
    with pytest.raises(ValueError, match="another configuration"):
        search_module._check_config(str(tmp_path), _config(finetune_epochs=1), net)
    del stored["rounding"]  # an older search's unstated rounding is never taken for today's
    (tmp_path / "search_config.json").write_text(json.dumps({**stored, "network": net.name}))
    with pytest.raises(ValueError, match="another configuration"):
        search_module._check_config(str(tmp_path), config, net)


@pytest.mark.parametrize("flags, expected", [
    (["--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
    (["--finetune-learning-rate", "0"], "--finetune-learning-rate must be > 0"),
    (["--finetune-standard-weight", "2"], "--finetune-standard-weight is lambda"),
])
def test_finetune_flags_are_checked_and_reach_the_config(problem, tmp_path, capsys, flags, expected):
    from cli_helpers import one_error_line

    from cactus_keras.compress import cli as compress_cli

    *_, model, data = problem
    args = ["compress", "--model", str(model), "--dataset", str(data), "--epsilon", "0.1",
            "--min-certified", "0.5", "--output", str(tmp_path / "c")]
    assert cli.main(args + flags) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "c").exists()
    parsed = cli.build_parser().parse_args(args + ["--finetune-epochs", "3", "--finetune-learning-rate", "1e-4"])
    config = compress_cli._config(parsed)
    assert (config.finetune_epochs, config.finetune_learning_rate, config.finetune_standard_weight) == (3, 1e-4, 0.5)
    assert SearchConfig(epsilon=0.1, min_certified=0.5).finetune_epochs == 0
    with pytest.raises(ValueError, match="finetune_epochs"):
        SearchConfig(epsilon=0.1, min_certified=0.5, finetune_epochs=1.5)


def test_finalists_meet_the_floor_in_float_first_then_the_slack():
    # Cheaper candidates just inside the screen's slack come after every candidate
    # whose float certificate meets the floor (each group cheapest first).
    from cactus_keras.compress.search import _finalist_order

    rows = [{"key": k, "float_certified_accuracy": f, "parameters": p}
            for k, f, p in [("a", 0.69, 100), ("b", 0.71, 300), ("c", 0.685, 50),
                            ("d", 0.70, 400), ("e", 0.75, 200)]]
    ordered = sorted(rows, key=lambda r: _finalist_order(r, 0.70, "parameters"))
    assert [r["key"] for r in ordered] == ["e", "b", "d", "c", "a"]
