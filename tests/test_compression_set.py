"""The compression set: several members from TOML, the CLI and the API; the members'
weight and its ramp; members on batch slices."""

import json
import types

import keras
import numpy as np
import pytest
from keras import ops

import cactus_keras
from cactus_keras import cli
from cactus_keras.compression import (
    StraightThroughQuantization,
    member_table,
    members_from_tables,
)
from cactus_keras.experiments import ConfigError, TrainConfig, parse_config
from cactus_keras.experiments.training import RunExistsError, check_existing, schedule_callbacks
from cactus_keras.training import MemberWeightRamp, member_slice, smooth_ramp
from cactus_keras.training.model import replica_share_of_mean

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(3, 3, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3),
    ])


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 6, 6, 1)).astype("float32")
    return x, rng.integers(0, 3, n), rng.uniform(0.2, 2.0, n).astype("float32")


def _api_set():
    return [
        cactus_keras.Pruning(ratio=(0.5, 0.95), pruning_method="global_l1", name="pruned_l1"),
        cactus_keras.Pruning(ratio=(0.1, 0.6), pruning_method="global_l2_structured",
                             name="pruned_l2"),
        cactus_keras.AWPQuantization(bits=8),
        cactus_keras.AWPQuantization(bits=4, name="quantized4"),
    ]


TOML = """
[experiment]
dataset = "fashion_mnist"
epsilon = 0.1
[training]
compression = "none"
[methods.ibp]
method = "ibp-then-compress"
[methods.cactus]
method = "cactus"
compression = [
  {kind = "pruning", ratio = [0.5, 0.95], pruning_method = "global_l1", name = "pruned_l1"},
  {kind = "pruning", ratio = [0.1, 0.6], pruning_method = "global_l2_structured", name = "pruned_l2"},
  {kind = "awp_quantization", bits = 8},
  {kind = "awp_quantization", bits = 4, name = "quantized4"},
]
member_weight = 0.5
member_weight_ramp = "epsilon"
member_batch_fraction = 0.25
"""

CLI_MEMBERS = ["pruning:ratio=0.5-0.95,pruning_method=global_l1,name=pruned_l1",
               "pruning:ratio=0.1-0.6,pruning_method=global_l2_structured,name=pruned_l2",
               "awp_quantization:bits=8", "awp_quantization:bits=4,name=quantized4"]


def _configs(members):
    return [(type(m).__name__, m.get_config()) for m in members]


# ----- one set from TOML, the CLI and the API -----

def test_toml_tables_and_cli_members_build_the_api_set():
    config = parse_config(tomllib.loads(TOML))
    train = config.train_config(config.methods["cactus"].overrides(), seed=0)
    from_toml = train.compression_members()
    from_cli = members_from_tables(cli.member_tables(CLI_MEMBERS))
    # AWPQuantization(bits=8) is named "quantized" by the API; in the tables it is alone
    # with that default name, so it keeps it.
    assert _configs(from_toml) == _configs(_api_set()) == _configs(from_cli)
    assert (train.member_weight, train.member_weight_ramp, train.member_batch_fraction) == (
        0.5, "epsilon", 0.25)
    # The short forms still give their members; the IBP run has none.
    ibp = config.train_config(config.methods["ibp"].overrides(), seed=0)
    assert ibp.compression == "none" and ibp.compression_members() == []
    short = TrainConfig(dataset="d", epsilon=0.1, compression="pruning+awp_quantization", bits=4,
                        ratio=(0.5, 0.9))
    assert _configs(short.compression_members()) == _configs(
        [cactus_keras.Pruning(ratio=(0.5, 0.9)), cactus_keras.AWPQuantization(bits=4)])


def test_unnamed_members_get_distinct_names_by_the_documented_rule():
    def names(tables):
        return [m.name for m in members_from_tables(tables)]

    assert names([{"kind": "pruning"}, {"kind": "awp_quantization"}]) == ["pruned", "quantized"]
    assert names([{"kind": "pruning", "ratio": [0.5, 0.95]},
                  {"kind": "pruning", "pruning_method": "global_l2_structured"},
                  {"kind": "awp_quantization", "bits": 8}, {"kind": "awp_quantization", "bits": 4}]) == [
        "pruned_global_l1", "pruned_global_l2_structured", "quantized8", "quantized4"]
    # A given name that is a default name makes the unnamed one take the suffix.
    assert names([{"kind": "awp_quantization", "name": "quantized"},
                  {"kind": "awp_quantization", "bits": 4}]) == ["quantized", "quantized4"]
    # No setting tells them apart: their position does.
    assert names([{"kind": "fixed_mask_pruning", "ratio": 0.5, "pruning_method": "local_l1"},
                  {"kind": "pruning"}]) == ["pruned_local_l1", "pruned_global_l1"]
    with pytest.raises(ValueError, match=r"`compression`: the members' names must be distinct.*"
                                         r"'pruned_global_l1'.*own `name`"):
        members_from_tables([{"kind": "pruning", "ratio": 0.5}, {"kind": "pruning", "ratio": 0.7}])


def test_a_member_list_round_trips_through_config_json_and_the_run_fingerprint(tmp_path):
    tables = [{"kind": "pruning", "ratio": [0.5, 0.95]}, {"kind": "awp_quantization", "bits": 4}]
    config = TrainConfig(dataset="d", epsilon=0.1, compression=tables, member_weight=0.5,
                         member_batch_fraction=0.5)
    # Stored complete: every setting and the names chosen.
    assert config.compression == [member_table(m) for m in config.compression_members()]
    assert [t["name"] for t in config.compression] == ["pruned", "quantized"]
    saved = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig(**saved) == config
    arrays = [np.zeros((2, 3), "float32"), np.zeros(2, "int64")]
    data = types.SimpleNamespace(source="d.npz", x_train=arrays[0], y_train=arrays[1],
                                 x_test=arrays[0], y_test=arrays[1])
    (tmp_path / "config.json").write_text(json.dumps({**saved, "data_source": "d.npz"}))
    (tmp_path / "training_log.csv").write_text("")
    assert check_existing(tmp_path, config, data, resume=True) == "unfinished"
    other = TrainConfig(dataset="d", epsilon=0.1, member_weight=0.5, member_batch_fraction=0.5,
                        compression=[tables[0], {"kind": "awp_quantization", "bits": 8}])
    with pytest.raises(RunExistsError, match="compression: saved"):
        check_existing(tmp_path, other, data, resume=True)


@pytest.mark.slow
def test_two_pruning_and_two_quantization_members_train_one_step_with_their_metrics():
    model = cactus_keras.CactusModel(_net(), 0.05, compression=_api_set(), seed=0,
                                     member_batch_fraction=0.5)
    model.compile(optimizer="adam")
    x, y, w = _data()
    before = [np.array(v.value) for v in model.network.trainable_variables]
    logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
    assert np.isfinite(logs["loss"])
    for name in ("pruned_l1", "pruned_l2", "quantized", "quantized4"):
        for kind in ("clean_accuracy", "certified_accuracy"):
            assert 0.0 <= logs[f"{kind}_{name}"] <= 1.0
    after = [np.array(v.value) for v in model.network.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(after, before))


# ----- the members' weight -----

def _deterministic(**kwargs):
    """Full network, a pruned member at a fixed ratio and a fake-quantized one: no
    sampling, so a second call gives the same losses."""
    members = [cactus_keras.Pruning(ratio=0.5, name="p"), StraightThroughQuantization(4, name="q")]
    return cactus_keras.CactusModel(_net(), 0.05, compression=members, standard_weight=0.3,
                                    **kwargs)


def _mean(values, weights):
    values, weights = np.asarray(values, "float64"), np.asarray(weights, "float64")
    return float(np.sum(values * weights) / np.sum(weights))


def test_member_weight_one_is_the_plain_mean_over_the_set():
    model = _deterministic()
    x, y, w = _data()
    results = model.member_results(x, y, training=False)
    # Today's loss, as it was computed: the sum of the shares over the set, divided.
    plain = 0.0
    for result in results:
        plain = plain + replica_share_of_mean(result.loss, w)
    plain = plain / len(results)
    loss = model.compute_loss(x, y, sample_weight=w, training=False)
    assert float(loss) == float(plain)
    np.testing.assert_allclose(loss, np.mean([_mean(r.loss, w) for r in results]), rtol=1e-6)


@pytest.mark.parametrize("member_weight", [0.0, 0.3, 2.5])
def test_member_weight_gives_the_weighted_mean(member_weight):
    model = _deterministic(member_weight=member_weight)
    x, y, w = _data()
    full, *members = [_mean(r.loss, w) for r in model.member_results(x, y, training=False)]
    expected = (full + member_weight * sum(members)) / (1 + member_weight * len(members))
    loss = model.compute_loss(x, y, sample_weight=w, training=False)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # The weight is a variable: a ramp moves it without a new model.
    model.member_weight.assign(1.0)
    np.testing.assert_allclose(model.compute_loss(x, y, sample_weight=w, training=False),
                               (full + sum(members)) / 3, rtol=1e-6)


def test_without_the_full_network_the_members_weigh_alike():
    model = cactus_keras.CactusModel(_net(), 0.05, member_weight=0.2, include_full_network=False,
                                     compression=[cactus_keras.FixedMaskPruning(0.5, name="a"),
                                                  StraightThroughQuantization(4, name="b")])
    x, y, w = _data()
    members = [_mean(r.loss, w) for r in model.member_results(x, y, training=False)]
    np.testing.assert_allclose(model.compute_loss(x, y, sample_weight=w, training=False),
                               np.mean(members), rtol=1e-6)


def test_member_weight_ramp_follows_the_epsilon_ramp_epoch_by_epoch():
    model = _deterministic(member_weight=0.8)
    model.compile(optimizer="adam")
    x, y, _ = _data(16)
    steps, warmup, ramp = 2, 1, 2
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False, callbacks=[
        cactus_keras.EpsilonRamp(ramp, start_epoch=warmup),
        MemberWeightRamp(ramp, start_epoch=warmup)])
    # The value logged is that of the epoch's last batch, at epoch + (steps - 1) / steps.
    expected = [0.8 * smooth_ramp((e + (steps - 1) / steps - warmup) / ramp) for e in range(4)]
    np.testing.assert_allclose(history.history["member_weight"], expected, rtol=1e-6)
    assert expected[0] == 0.0 and expected[-1] == pytest.approx(0.8)
    np.testing.assert_allclose(history.history["member_weight"],
                               0.8 * np.asarray(history.history["epsilon"]) / 0.05, rtol=1e-5)
    config = TrainConfig(dataset="d", epsilon=0.1, epochs=6, warmup_epochs=1, ramp_epochs=3,
                         member_weight_ramp="epsilon")
    (ramp_callback,) = [c for c in schedule_callbacks(config) if isinstance(c, MemberWeightRamp)]
    assert (ramp_callback.ramp_epochs, ramp_callback.start_epoch, ramp_callback.shape) == (
        3, 1, "smooth")
    assert not any(isinstance(c, MemberWeightRamp)
                   for c in schedule_callbacks(TrainConfig(dataset="d", epsilon=0.1)))


# ----- members on batch slices -----

def test_member_slices_rotate_and_differ_between_members():
    def positions(*args):
        return np.asarray(member_slice(*args)).tolist()

    assert positions(16, 0.25, 0, 0) == [0, 1, 2, 3]
    assert positions(16, 0.25, 1, 0) == [4, 5, 6, 7]
    assert positions(16, 0.25, 1, 3) == [0, 1, 2, 3]       # starts at 16 mod 16
    # round(0.25 * 10) = 3 samples (half up), wrapping around the end.
    assert positions(10, 0.25, 1, 2) == [9, 0, 1]
    assert positions(5, 0.7, 0, 0) == [0, 1, 2, 3]          # round(3.5) = 4
    assert positions(3, 0.01, 2, 0) == [2]                  # at least one sample
    # A dynamic batch size (a tensor) gives the same slices.
    np.testing.assert_array_equal(member_slice(ops.convert_to_tensor(5), 0.7, 0, 0), [0, 1, 2, 3])


def test_members_on_batch_slices_are_the_members_on_their_samples():
    x, y, w = _data(16)
    model = _deterministic(member_batch_fraction=0.25)
    whole = _deterministic()  # the same weights, every member on every sample
    model.train_steps.assign(5)
    slices = {name: np.asarray(i) for name, i in model.member_slices(16).items()}
    assert {k: v.tolist() for k, v in slices.items()} == {
        "p": [4, 5, 6, 7], "q": [8, 9, 10, 11]}  # (position + 5) * 4 mod 16
    results = {r.name: r for r in model.member_results(x, y, training=True)}
    for name, indices in slices.items():
        alone = {r.name: r for r in whole.member_results(x[indices], y[indices], training=True)}
        np.testing.assert_allclose(results[name].loss, alone[name].loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(results[name].indices, indices)
    np.testing.assert_allclose(results[None].loss,
                               whole.member_results(x, y, training=True)[0].loss, rtol=1e-6)
    assert results[None].indices is None
    # The loss: each network's weighted mean over its own samples, then the set's mean.
    expected = np.mean([_mean(results[None].loss, w)] + [
        _mean(results[n].loss, w[i]) for n, i in slices.items()])
    loss = model.compute_loss(x, y, sample_weight=w, training=True)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # Metrics of a member are over its slice.
    logits = np.asarray(results["p"].logits)
    np.testing.assert_allclose(model.get_metrics_result()["clean_accuracy_p"],
                               np.mean(logits.argmax(-1) == y[slices["p"]]), rtol=1e-6)
    # Evaluation sees the whole batch.
    assert all(r.indices is None for r in model.member_results(x, y, training=False))


@pytest.mark.slow
def test_members_on_batch_slices_train_in_fit_and_save(tmp_path):
    model = _deterministic(member_batch_fraction=0.5, member_weight=0.7)
    model.compile(optimizer="adam")
    x, y, w = _data(32)
    history = model.fit(x, y, sample_weight=w, batch_size=12, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert (loaded.member_batch_fraction, loaded.member_weight_target) == (0.5, 0.7)
    assert float(loaded.member_weight.value) == pytest.approx(0.7)


# ----- bad input: one line naming the key, flag or parameter -----

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(member_batch_fraction=0), ValueError, r"`member_batch_fraction` must be in \(0, 1\]"),
    (dict(member_batch_fraction=1.5), ValueError, r"`member_batch_fraction` must be in \(0, 1\]"),
    (dict(member_batch_fraction="half"), TypeError, "`member_batch_fraction` must be a number"),
    (dict(member_weight=-0.1), ValueError, "`member_weight`.* must be a finite number >= 0"),
    (dict(member_weight=True), TypeError, "`member_weight` must be a number"),
])
def test_bad_api_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        _deterministic(**kwargs)


def _toml(cactus):
    text = TOML.split("[methods.cactus]")[0] + "[methods.cactus]\nmethod = \"cactus\"\n" + cactus
    return tomllib.loads(text)


@pytest.mark.parametrize("cactus, message", [
    ('compression = [{kind = "prunning"}]',
     r"\[methods.cactus\]: `compression`\[0\]: unknown compression member kind 'prunning'; "
     "expected one of .*pruning"),
    ('compression = [{ratio = 0.5}]', r"`compression`\[0\]: unknown compression member kind None"),
    ('compression = [{kind = "pruning", ratio = 0.5}, {kind = "pruning", ratio = 0.5}]',
     r"`compression`: the members' names must be distinct"),
    ('compression = [{kind = "awp_quantization", bit = 4}]',
     r"`compression`\[0\]: unknown setting\(s\) bit for kind 'awp_quantization'; its settings are bits"),
    ('compression = [{kind = "awp_quantization", bits = 9}]',
     r"`compression`\[0\] \(kind 'awp_quantization'\): `bits` must be an integer from 2 to 8"),
    ('compression = ["pruning"]', r"`compression`\[0\] must be a table"),
    ("compression = []", "a cactus run needs compression"),
    ("member_batch_fraction = 0.0", r"`member_batch_fraction` must be in \(0, 1\]"),
    ('member_weight_ramp = "linear"', "Unknown `member_weight_ramp` 'linear'; expected one of none, epsilon"),
])
def test_bad_toml_names_the_key(cactus, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(_toml(cactus))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["--member", "pruning:ratio"], "--member 'pruning:ratio': expected KIND:KEY=VALUE,KEY=VALUE "
     r".*e.g. --member pruning:ratio=0.5-0.95,pruning_method=global_l1; 'ratio' is not KEY=VALUE"),
    (["--member", "pruning:ratio=0.5,ratio=0.6"], "ratio is given twice"),
    (["--member", "quant:bits=4"], "--member 'quant:bits=4': unknown compression member kind 'quant'"),
    (["--member", "awp_quantization:bits=9"],
     r"--member 'awp_quantization:bits=9' \(kind 'awp_quantization'\): bits must be an integer from 2 to 8"),
    (["--member", "pruning:ratio=0.5", "--member", "pruning:ratio=0.7"],
     "--member: the members' names must be distinct"),
    (["--member", "pruning", "--compression", "pruning"],
     "--compression and --member both give the compression set"),
    (["--member-batch-fraction", "0"], r"--member-batch-fraction must be in \(0, 1\]"),
    (["--member-weight", "-1"], "--member-weight .*must be a finite number >= 0"),
    (["--member-weight-ramp", "steps"], "Unknown --member-weight-ramp 'steps'"),
])
def test_bad_cli_flags_exit_2_naming_the_flag(tmp_path, capsys, argv, message):
    code = cli.main(["train", "--dataset", str(tmp_path / "none.npz"), "--epsilon", "0.1",
                     "--output", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert "--bits" not in err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_trains_a_member_set_and_resumes_only_with_the_same_set(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 24)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    run = tmp_path / "run"
    common = ["train", "--dataset", str(data), "--epsilon", "0.05", "--arch", "mlp",
              "--epochs", "2", "--batch-size", "12", "--validation-samples", "0",
              "--output", str(run)]
    members = ["--member", "pruning:ratio=0.5-0.95", "--member",
               "pruning:ratio=0.1-0.6,pruning_method=global_l2_structured",
               "--member", "awp_quantization:bits=4", "--member-weight", "0.5",
               "--member-weight-ramp", "epsilon", "--member-batch-fraction", "0.5"]
    assert cli.main(common + members) == 0
    saved = json.loads((run / "config.json").read_text())
    assert [t["name"] for t in saved["compression"]] == [
        "pruned_global_l1", "pruned_global_l2_structured", "quantized"]
    assert (saved["member_weight"], saved["member_weight_ramp"],
            saved["member_batch_fraction"]) == (0.5, "epsilon", 0.5)
    header = (run / "training_log.csv").read_text().splitlines()[0].split(",")
    assert {"member_weight", "certified_accuracy_pruned_global_l2_structured",
            "clean_accuracy_quantized"} <= set(header)
    capsys.readouterr()
    assert cli.main(common + members + ["--resume"]) == 0
    assert "finished run with these settings" in capsys.readouterr().out
    other = [m.replace("bits=4", "bits=8") for m in members]
    assert cli.main(common + other + ["--resume"]) == 2
    assert "compression: saved" in capsys.readouterr().err


def test_schedule_callbacks_keep_every_schedule():
    # A merge once dropped the learning-rate schedule when the member-weight ramp was on.
    from cactus_keras.experiments.training import TrainConfig, schedule_callbacks

    config = TrainConfig(dataset="d", epsilon=0.1, epochs=10, lr_schedule="step",
                         member_weight_ramp="epsilon")
    names = sorted(type(c).__name__ for c in schedule_callbacks(config))
    assert names == ["EpochLearningRate", "EpsilonRamp", "MemberWeightRamp", "StandardWeightRamp"]


def test_a_model_saved_before_member_weight_existed_loads_by_its_config():
    from cactus_keras import keras_internals

    model = cactus_keras.CactusModel(_net(), 0.05, member_weight=0.4,
                                     compression=[cactus_keras.FixedMaskPruning(0.5, name="a")])
    own = keras_internals.own_variables(model)
    for i, variable in enumerate(own):
        variable.assign(np.full(variable.shape, i + 2, variable.dtype))
    # An old weights file: the model's own variables without member_weight, in order.
    store = {str(i): np.asarray(v.value) for i, v in
             enumerate(v for v in own if v is not model.member_weight)}
    config = model.get_config()
    del config["member_weight"]
    old = cactus_keras.CactusModel.from_config(config)
    old.load_own_variables(store)
    for mine, theirs in zip(keras_internals.own_variables(old), own):
        if theirs is model.member_weight:
            assert float(mine.value) == 1.0  # the default, as old models trained with
        else:
            np.testing.assert_array_equal(mine.value, theirs.value)
    # A current config with the same file is Keras's mismatch, not a silent old load.
    current = cactus_keras.CactusModel.from_config(model.get_config())
    with pytest.raises(ValueError):
        current.load_own_variables(store)
    with pytest.raises(ValueError, match="saved before `member_weight` existed"):
        cactus_keras.CactusModel.from_config(config).load_own_variables({"0": store["0"]})
