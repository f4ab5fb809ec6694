"""KerasTuner search over lambda and eta (`cactus_keras.tuning`, `cactus-keras tune`)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cactus_keras import cli

keras_tuner = pytest.importorskip("keras_tuner")

from cactus_keras.tuning import (  # noqa: E402
    CERTIFIED,
    CLEAN,
    COMPRESSED,
    MEAN,
    CactusHyperModel,
    make_tuner,
    pareto_front,
    parse_targets,
    resolve_objective,
    summarize,
)


def _tiny_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")
    return x, y


def _tiny_network():
    return keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(),
         keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)]
    )


def _hypermodel():
    return CactusHyperModel(_tiny_network, epsilon=0.01, targets="prune:0.5,quantize:8", epochs=1,
                            standard_weight=(0.1, 0.6), awp_radius=(0.5, 2.0))


def _search(tuner, data):
    x, y = data
    tuner.search(x[:64], y[:64], validation_data=(x[64:], y[64:]), epochs=1, batch_size=32,
                 verbose=0)


def _completed(tuner):
    return sorted(t.trial_id for t in tuner.oracle.trials.values() if t.status == "COMPLETED")


@pytest.mark.slow
def test_two_trial_search_then_resume(tmp_path):
    data = _tiny_data()
    hypermodel = _hypermodel()
    tuner = make_tuner(hypermodel, "random", objective="mean", max_trials=2,
                       directory=str(tmp_path / "search"))
    _search(tuner, data)
    assert len(tuner.oracle.trials) == 2 and len(_completed(tuner)) == 2
    assert hypermodel.build_count >= 2  # + builds that declare the space

    best = tuner.get_best_hyperparameters(1)[0].values
    assert 0.1 <= best["standard_weight"] <= 0.6
    assert 0.5 <= best["awp_radius"] <= 2.0
    assert best["learning_rate"] == 1e-3
    assert (best["ratio_low"], best["ratio_high"]) == (0.25, 0.75)
    for trial in tuner.oracle.trials.values():
        metrics = {n: trial.metrics.get_last_value(n) for n in trial.metrics.metrics}
        for name in (CERTIFIED, COMPRESSED, MEAN, CLEAN,
                     f"{CERTIFIED}_prune50", f"{CERTIFIED}_quantize8"):
            assert 0.0 <= metrics[name] <= 1.0, name
        assert metrics[COMPRESSED] == min(metrics[f"{CERTIFIED}_prune50"], metrics[f"{CERTIFIED}_quantize8"])
        assert metrics[MEAN] == pytest.approx(0.5 * (metrics[CERTIFIED] + metrics[COMPRESSED]))
        assert trial.score == pytest.approx(metrics[MEAN])

    summary = summarize(tuner, str(tmp_path / "report"))
    for name in ("tuning_summary.json", "pareto.json", "pareto.png", "best_hyperparameters.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert summary["trials_by_status"] == {"COMPLETED": 2}
    assert summary["best"]["hyperparameters"] == best
    assert set(summary["pareto"]) == {CERTIFIED, COMPRESSED, MEAN}

    # Resume with one more trial allowed: exactly one new trial, the old ones untouched.
    project = tmp_path / "search" / "cactus"
    before = {p: p.stat().st_mtime_ns for p in project.glob("trial_*/trial.json")}
    resumed_model = _hypermodel()
    resumed = make_tuner(resumed_model, "random", objective="mean", max_trials=3,
                         directory=str(tmp_path / "search"))
    assert _completed(resumed) == _completed(tuner)
    _search(resumed, data)
    assert resumed_model.build_count == 1
    assert len(resumed.oracle.trials) == 3 and len(_completed(resumed)) == 3
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(list(project.glob("trial_*"))) == 3


def _write_npz(path):
    x, y = _tiny_data()
    images = np.round(x[..., 0] * 255).astype("uint8")
    np.savez(path, x_train=images[:64], y_train=y[:64], x_test=images[64:], y_test=y[64:])


def _tune_argv(data, directory, *extra):
    return ["tune", "--dataset", str(data), "--epsilon", "0.01", "--targets", "prune:0.5",
            "--arch", "mlp", "--epochs", "1", "--batch-size", "32", "--directory", str(directory),
            "--verbose", "0", *extra]


@pytest.mark.slow
def test_cli_search_resume_and_best(tmp_path, capsys):
    data, directory = tmp_path / "tiny.npz", tmp_path / "tune"
    _write_npz(data)
    assert cli.main(_tune_argv(data, directory, "--max-trials", "2", "--objective", "compressed")) == 0
    first = capsys.readouterr().out
    project = directory / "cactus"
    trials = sorted(project.glob("trial_*/trial.json"))
    assert len(trials) == 2
    states = [json.loads(p.read_text())["status"] for p in trials]
    assert states == ["COMPLETED", "COMPLETED"]
    mtimes = [p.stat().st_mtime_ns for p in trials]
    summary = json.loads((directory / "tuning_summary.json").read_text())
    assert summary["objective"] == [COMPRESSED]
    assert summary["command"].startswith("cactus-keras tune --dataset")
    assert "awp_radius" not in summary["search"]["search_space"]  # no quantization target
    assert (directory / "pareto.png").exists() and "best trial" in first

    # The same call again continues the same search: nothing left to run.
    assert cli.main(_tune_argv(data, directory, "--max-trials", "2", "--objective", "compressed")) == 0
    assert "resuming the search" in capsys.readouterr().out
    assert sorted(project.glob("trial_*/trial.json")) == trials
    assert [p.stat().st_mtime_ns for p in trials] == mtimes

    # Other settings in the same directory are refused, not mixed in.
    assert cli.main(_tune_argv(data, directory, "--max-trials", "2", "--objective", "mean")) == 2
    assert "other settings" in capsys.readouterr().err

    assert cli.main(_tune_argv(data, directory, "--objective", "compressed", "--best")) == 0
    out = capsys.readouterr().out
    best = json.loads((directory / "best_hyperparameters.json").read_text())
    assert 0.0 <= best["hyperparameters"]["standard_weight"] <= 0.9
    assert f"{best['hyperparameters']['standard_weight']}" in out
    import cactus_keras  # noqa: F401  (registers CactusModel)

    model = keras.saving.load_model(directory / "best_model.keras", compile=False)
    assert model.standard_weight_target == pytest.approx(best["hyperparameters"]["standard_weight"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--objective", "certified_acc"], "Unknown objective 'certified_acc'; expected one of 'certified'"),
        (["--objective", "val_certified_accuracy_man"], "val_certified_accuracy_mean"),
        (["--targets", "none", "--objective", "mean"], "needs a compression target"),
        (["--tuner", "grid"], "Unknown tuner 'grid'"),
        (["--targets", "prune:1.5"], "pruning ratio"),
        (["--targets", "int"], "quantize:BITS"),
        (["--standard-weight", "0.5", "0.2"], "low < high"),
        (["--standard-weight", "0.1", "1.5"], "--standard-weight must lie in [0, 1]"),
        (["--standard-weight", "0.1", "0.2", "0.3"], "--standard-weight takes one number"),
        (["--epsilon", "8"], "covers the whole data range"),
        (["--awp-radius", "0", "2"], "log scale"),
        (["--tuner", "hyperband", "--max-trials", "3"], "--max-trials does not apply"),
        (["--epsilon", "-1"], "epsilon"),
    ],
)
def test_cli_rejects_bad_input_before_training(tmp_path, capsys, extra, message):
    argv = _tune_argv(tmp_path / "missing.npz", tmp_path / "tune", *extra)
    if "--epsilon" in extra:
        at = argv.index("--epsilon")
        del argv[at:at + 2]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cactus-keras tune: error:") and message in err
    assert not (tmp_path / "tune").exists()


def test_objective_names_are_validated():
    assert resolve_objective("mean").name == MEAN
    assert resolve_objective(MEAN).direction == "max"
    assert resolve_objective(keras_tuner.Objective("compressed", "max")).name == COMPRESSED
    assert [o.name for o in resolve_objective("certified,compressed")] == [CERTIFIED, COMPRESSED]
    with pytest.raises(ValueError, match="expected one of 'certified' .*'mean' "
                       r"\(val_certified_accuracy_mean\)"):
        resolve_objective("val_certfied_accuracy")
    with pytest.raises(ValueError, match="direction must be 'max'"):
        resolve_objective(keras_tuner.Objective(CERTIFIED, "min"))
    with pytest.raises(ValueError, match="needs a compression target"):
        resolve_objective("compressed", targets=[])
    with pytest.raises(ValueError, match="Unknown objective"):
        make_tuner(_hypermodel(), "random", objective="accuracy", directory="/nonexistent/never")


def test_targets_name_evaluated_forms_not_member_kinds():
    # A target is what is evaluated (prune, quantize); the member kinds name what trains.
    for text, form in [("pruning:0.7", "prune"), ("awp_quantization:8", "quantize"),
                       ("quantization:8", "quantize")]:
        with pytest.raises(ValueError, match=f"names what trains .* write {form}:"):
            parse_targets(text)
    assert [t.form for t in parse_targets("prune:0.7,quantize:8")] == ["prune", "quantize"]


def test_hypermodel_checks_and_spaces():
    assert [t.key for t in parse_targets("prune:0.7, quantize:8,prune:0.5:local_l1")] == [
        "prune70", "quantize8", "prune50_local_l1"]
    hm = CactusHyperModel(_tiny_network, 0.1, "prune:0.7", search_learning_rate=True,
                          search_ratio_range=True)
    assert hm.compression == "pruning"
    assert hm.search_space() == {"standard_weight": (0.0, 0.9), "learning_rate": (1e-4, 1e-2),
                                 "ratio_low": (0.0, 0.5), "ratio_high": (0.5, 0.95)}
    hp = keras_tuner.HyperParameters()
    model = hm.build(hp)
    assert set(hp.values) == set(hm.search_space())
    assert model.compression[0].ratio == (hp["ratio_low"], hp["ratio_high"])
    assert CactusHyperModel(_tiny_network, 0.1, "quantize:4").search_space()["awp_radius"] == (0.25, 4.0)
    with pytest.raises(ValueError, match="ratio_low must be <="):
        CactusHyperModel(_tiny_network, 0.1, ratio_low=(0.2, 0.6), ratio_high=(0.5, 0.9))
    with pytest.raises(ValueError, match="hyperband tuner needs"):
        make_tuner(CactusHyperModel(_tiny_network, 0.1), "hyperband", directory="/nonexistent/never")
    with pytest.raises(ValueError, match="validation_data"):
        hm.fit(hp, model, np.zeros((4, 8, 8, 1)), np.zeros(4), epochs=1)


def test_pareto_front():
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.5, 0.2), (0.9, 0.1)]
    # (0.4, 0.4) and (0.5, 0.2) are dominated; equal points do not dominate each other.
    assert pareto_front(points) == [3, 1, 0, 5]


@pytest.mark.slow
def test_command_line_does_not_import_keras_tuner():
    code = ("import sys, cactus_keras, cactus_keras.tuning, cactus_keras.cli as c; "
            "c.build_parser(); print('keras_tuner' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
    assert out.stdout.strip() == "False"


def test_mtl_ibp_searches_its_alpha_and_the_other_losses_do_not():
    import keras_tuner

    import cactus_keras
    from cactus_keras.tuning import CactusHyperModel

    def build():
        return cactus_keras.models.cnn3((12, 12, 1), 3)

    hypermodel = CactusHyperModel(build, 0.01, "prune:0.5", certified_loss="mtl-ibp", attack_steps=2)
    assert "mtl_alpha" in hypermodel.searched()
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.certified_loss == "mtl-ibp"
    assert 0.05 <= model.loss_options["mtl_alpha"] <= 0.95 and model.loss_options["attack_steps"] == 2
    for loss in ("worst-case", "sabr"):
        assert "mtl_alpha" not in CactusHyperModel(build, 0.01, "prune:0.5", certified_loss=loss).searched()
    with pytest.raises(ValueError, match="option of certified_loss 'sabr'"):
        CactusHyperModel(build, 0.01, "prune:0.5", sabr_lambda=0.3)


def test_cli_fixes_lambda_with_one_number():
    from cactus_keras.tuning.cli import _hypermodel

    args = cli.build_parser().parse_args(
        _tune_argv("d.npz", "t", "--targets", "prune:0.5,quantize:8", "--standard-weight", "0.25",
                   "--awp-radius", "1.5"))
    space = _hypermodel(args, {}).search_space()
    assert space["standard_weight"] == 0.25 and space["awp_radius"] == 1.5
    hp = keras_tuner.HyperParameters()
    _hypermodel(args, {}).declare(hp)
    assert hp.values["standard_weight"] == 0.25 and hp.values["awp_radius"] == 1.5


def test_a_tuner_that_cannot_start_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    import cactus_keras.tuning.search as search

    data, directory = tmp_path / "tiny.npz", tmp_path / "tune"
    _write_npz(data)

    def missing(*args, **kwargs):
        raise ImportError("Please install scikit-learn (sklearn) before using the `BayesianOptimization`.")

    monkeypatch.setattr(search, "make_tuner", missing)
    assert cli.main(_tune_argv(data, directory, "--tuner", "bayesian")) == 2
    err = capsys.readouterr().err
    assert err.startswith("cactus-keras tune: error: Please install scikit-learn") and "Traceback" not in err
    assert not (directory / "cactus" / search.SEARCH_FILE).exists()


def test_bayesian_tuner_can_be_made(tmp_path):
    pytest.importorskip("sklearn")
    tuner = make_tuner(_hypermodel(), "bayesian", objective="mean", max_trials=2,
                       directory=str(tmp_path / "search"))
    assert type(tuner).__name__ == "CactusBayesianOptimization"


def test_the_objective_is_read_only_at_full_epsilon():
    from cactus_keras.tuning.objectives import DURING_RAMP, full_epsilon_history

    ramp = {f"{MEAN}{DURING_RAMP}": 0.9, f"{CERTIFIED}{DURING_RAMP}": 0.9, "loss": 1.0}
    records = [(0, ramp, False), (1, ramp, False),
               (2, {MEAN: 0.2, CERTIFIED: 0.3, "loss": 0.5}, True),
               (3, {MEAN: 0.4, CERTIFIED: 0.5, "loss": 0.4}, True)]
    history = full_epsilon_history(records)
    assert history.epoch == [2, 3] and history.history[MEAN] == [0.2, 0.4]
    assert not any(k.endswith(DURING_RAMP) for k in history.history)
    # A fit that ends before full epsilon reports its last epoch, as measured.
    history = full_epsilon_history(records[:2])
    assert history.epoch == [1] and history.history[MEAN] == [0.9]


@pytest.mark.slow
def test_a_trial_reports_its_full_epsilon_epochs_only(tmp_path):
    x, y = _tiny_data()
    hypermodel = CactusHyperModel(_tiny_network, epsilon=0.01, targets="prune:0.5", epochs=4,
                                  standard_weight=0.5)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    seen = []

    class Logs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs))

    history = hypermodel.fit(hp, model, x[:64], y[:64], validation_data=(x[64:], y[64:]),
                             epochs=4, batch_size=32, verbose=0, callbacks=[Logs()])
    # Schedule of 4 epochs: 1 warm-up, 1 ramp, then 2 at full epsilon.
    assert hypermodel.schedule(4) == (1, 1)
    assert history.epoch == [2, 3]
    assert [MEAN in logs for logs in seen] == [False, False, True, True]
    assert [CERTIFIED in logs for logs in seen] == [False, False, True, True]
    assert seen[0]["epsilon"] == 0.0 and seen[3]["epsilon"] == pytest.approx(0.01)
