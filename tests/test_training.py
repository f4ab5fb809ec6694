"""CactusModel: losses, gradients, metrics, schedules, saving and errors."""

import json
import os

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras.training import StopOnNonFiniteLoss


def _small_net(seed=0, batch_norm=False):
    keras.utils.set_random_seed(seed)
    return cactus_keras.models.cnn3((12, 12, 1), 3, batch_norm=batch_norm)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 12, 12, 1)).astype("float32"), rng.integers(0, 3, n)


def _model(compression=True, **kwargs):
    members = [cactus_keras.Pruning(ratio=0.5)] if compression else []
    model = cactus_keras.CactusModel(_small_net(kwargs.pop("seed", 0)), 0.02, compression=members, **kwargs)
    model.compile(optimizer="adam")
    return model


def test_gradient_reaches_every_weight_through_the_full_member_and_only_kept_ones_through_pruned():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses a TensorFlow gradient tape")
    model = _model()
    x, y = _data()
    kernels = cactus_keras.compression.compressible_kernels(model.network)
    with tf.GradientTape(persistent=True) as tape:
        results = model.member_results(x, y, training=True)
        full, pruned = (tf.reduce_mean(r.loss) for r in results)
    for variable in model.network.trainable_variables:
        grad = tape.gradient(full, variable)
        assert grad is not None and np.any(grad.numpy() != 0), variable.path
    masks = cactus_keras.compression.magnitude_masks([k.value for k in kernels], 0.5, "global_l1")
    for kernel, mask in zip(kernels, masks):
        grad = tape.gradient(pruned, kernel).numpy()
        mask = np.asarray(mask)
        assert np.all(grad[mask == 0] == 0), kernel.path
        assert np.mean(grad[mask == 1] != 0) > 0.5, kernel.path


def test_loss_is_the_mean_over_members_of_the_lambda_mix():
    model = _model(standard_weight=0.3)
    x, y = _data()
    results = model.member_results(x, y, training=False)
    assert [r.name for r in results] == [None, "pruned"]
    for r in results:
        np.testing.assert_allclose(r.loss, 0.3 * np.asarray(r.standard_loss) + 0.7 * np.asarray(r.certified_loss), rtol=1e-5)
    loss = model.compute_loss(x, y, training=False)
    np.testing.assert_allclose(loss, np.mean([np.mean(r.loss) for r in results]), rtol=1e-5)


@pytest.mark.slow
def test_metrics_are_logged_per_member():
    model = _model()
    x, y = _data()
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for name in ("certified_accuracy", "certified_accuracy_pruned", "clean_accuracy_pruned", "loss_certified"):
        assert name in history.history
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert 0.0 <= logs["certified_accuracy_pruned"] <= 1.0


def test_members_do_not_update_batchnorm_moving_statistics():
    """One training step moves the moving means by exactly one full-network update."""
    net = _small_net(batch_norm=True)
    x, y = _data(32)
    model = cactus_keras.CactusModel(net, 0.02, compression=[cactus_keras.Pruning(ratio=0.5, num_samples=2)])
    copy = keras.models.clone_model(net)
    copy.set_weights(net.get_weights())
    model.compute_loss(x, y, training=True)
    copy(x, training=True)  # what one update of the full network gives
    got = [v.numpy() for v in net.non_trainable_variables if "moving" in v.path]
    want = [v.numpy() for v in copy.non_trainable_variables if "moving" in v.path]
    assert len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_refresh_every_reuses_masks_between_refreshes():
    net = _small_net()
    model = cactus_keras.CactusModel(net, 0.02, compression=[cactus_keras.Pruning(ratio=(0.2, 0.8), refresh_every=3)], seed=1)
    model.compile(optimizer="adam")
    x, y = _data(32)
    store = model._member_states[0]["pruned"]
    seen = []
    for _ in range(4):
        model.train_on_batch(x, y)
        seen.append([v.numpy().copy() for v in store])
    np.testing.assert_array_equal(seen[0][0], seen[1][0])
    np.testing.assert_array_equal(seen[1][0], seen[2][0])
    assert not np.array_equal(seen[2][0], seen[3][0])


def test_callable_schedule_drives_the_ratio():
    calls = []

    def schedule(step):
        calls.append(step)
        return 0.3

    model = cactus_keras.CactusModel(_small_net(), 0.02, compression=[cactus_keras.Pruning(schedule=schedule)])
    kernels = cactus_keras.compression.compressible_kernels(model.network)
    ((found, values),) = model.compressed_kernels(training=True).values()
    assert [id(k) for k in found] == [id(k) for k in kernels]
    zeros = sum(float(np.sum(np.asarray(v) == 0)) for v in values)
    assert zeros / sum(k.numpy().size for k in kernels) == pytest.approx(0.3, abs=1e-3)
    assert calls


def test_epsilon_and_lambda_ramps_write_variables_without_retracing():
    model = _model()
    x, y = _data(64)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((float(model.epsilon.numpy()), float(model.standard_weight.numpy())))

    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[
        cactus_keras.EpsilonRamp(2, start_epoch=1, shape="linear"),
        cactus_keras.StandardWeightRamp(2, start_epoch=1),
        Record(),
    ])
    epsilons = [e for e, _ in seen]
    assert epsilons[:4] == [0.0] * 4
    assert epsilons == sorted(epsilons) and epsilons[-1] == pytest.approx(0.02 * 7 / 8)
    assert seen[0][1] == 1.0 and seen[-1][1] < 1.0


def test_smooth_ramp_is_continuous_and_monotone():
    values = [cactus_keras.training.smooth_ramp(t / 1000) for t in range(1001)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert max(b - a for a, b in zip(values, values[1:])) < 0.003


@pytest.mark.slow
def test_save_and_load_keep_predictions_and_certificates(tmp_path):
    model = _model()
    x, y = _data(48)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, cactus_keras.CactusModel)
    assert loaded.compression[0].ratio == 0.5
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for method in ("ibp", "crown"):
        a = cactus_keras.certify(model.network, x, y, 0.02, bound=method, verbose=0)
        b = cactus_keras.certify(loaded.network, x, y, 0.02, bound=method, verbose=0)
        np.testing.assert_array_equal(a.margin_lower, b.margin_lower)


def test_nan_loss_stops_training_and_keeps_last_good_weights(capsys):
    model = _model()
    x, y = _data(64)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    good = [w.copy() for w in model.get_weights()]
    x_bad = x.copy()
    x_bad[40:] = np.nan
    guard = StopOnNonFiniteLoss()
    # NaN arrays are refused before training (validation.check_in_range); a dataset is
    # checked on its first batch only, so later NaN batches reach the guard.
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices((x_bad, y)).batch(16)
    history = model.fit(batches, epochs=3, verbose=0, callbacks=[guard])
    assert guard.stopped_at == (0, 2)
    assert len(history.history["loss"]) == 1
    for before, after in zip(good, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert "Training stopped: the loss became nan" in capsys.readouterr().out


@pytest.mark.slow
def test_backup_and_restore_resumes(tmp_path):
    x, y = _data(32)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model = _model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[backup, Interrupt()])
    resumed = _model(seed=7)
    history = resumed.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert int(resumed.train_steps.numpy()) == 8


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: cactus_keras.CactusModel(_small_net(), -0.1), "epsilon"),
        (lambda: cactus_keras.CactusModel(_small_net(), 0.1, standard_weight=1.5), "standard_weight"),
        (lambda: cactus_keras.CactusModel(_small_net(), 0.1, bound="crown"), "crown-ibp"),
        (lambda: cactus_keras.CactusModel(_small_net(), 0.1, compression=[cactus_keras.Pruning(ratio=1.2)]), r"\[0, 1\)"),
        (lambda: cactus_keras.CactusModel(_small_net(), 0.1, compression=["prune"]), "Pruning"),
    ],
)
def test_bad_construction(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_bad_fit_data():
    model = _model()
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        model.fit(x, y + 3, verbose=0)
    with pytest.raises(ValueError, match=r"expects \(batch, 12, 12, 1\)"):
        model.fit(x[:, :10], y, verbose=0)


@pytest.mark.slow
def test_short_run_on_fashion_mnist_raises_certified_accuracy_of_full_and_pruned(tmp_path):
    try:
        data = cactus_keras.data.load("fashion_mnist", download=False)
    except cactus_keras.data.DatasetNotFoundError:
        if os.environ.get("CI"):
            raise  # CI installs Debian's dataset-fashion-mnist: it must be there.
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from cactus_keras.experiments import TrainConfig, build_model, train

    config = TrainConfig(
        dataset="fashion_mnist", epsilon=0.05, arch="cnn3", epochs=4, warmup_epochs=1,
        ramp_epochs=2, standard_weight=0.0, ibp_init=True, limit=3000, validation_samples=0,
        ratio=(0.5, 0.5),
    )
    x, y = data.x_test[:500], data.y_test[:500]
    untrained = build_model(config, data.input_shape, data.num_classes)
    before = cactus_keras.evaluate_compressed(untrained, x, y, 0.05, ratios=[0, 0.5])
    model = train(config, data, str(tmp_path), verbose=0)
    after = cactus_keras.evaluate_compressed(model, x, y, 0.05, ratios=[0, 0.5])
    for ratio in (0, 0.5):
        b = before.lookup(ratio, "global_l1")["certified_accuracy"]
        a = after.lookup(ratio, "global_l1")["certified_accuracy"]
        assert a > b + 0.2, (ratio, b, a)
    assert os.path.exists(tmp_path / "training_log.csv")
    assert json.loads((tmp_path / "config.json").read_text())["epsilon"] == 0.05


@pytest.mark.slow
def test_tfmot_schedule_drives_the_ratio_and_survives_saving(tmp_path):
    pytest.importorskip("tensorflow_model_optimization")
    # In a subprocess: importing TF-MOT switches tf.keras to Keras 2 process-wide.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import numpy as np, keras, cactus_keras
        import tensorflow_model_optimization as tfmot
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.1, final_sparsity=0.7, begin_step=0, end_step=4)
        keras.utils.set_random_seed(0)
        model = cactus_keras.CactusModel(cactus_keras.models.cnn3((12, 12, 1), 3), 0.01,
                                         compression=[cactus_keras.Pruning(schedule=schedule)])
        model.compile(optimizer="adam")
        x = np.random.rand(16, 12, 12, 1).astype("float32"); y = np.random.randint(0, 3, 16)
        ratios, theirs = [], []
        for _ in range(6):
            step = model.train_steps.value
            ratios.append(float(model.compression[0].sample_ratio(step, None, True)))
            theirs.append(float(schedule(step)[1]))
            model.train_on_batch(x, y)
        assert np.allclose(ratios, theirs, atol=1e-6), (ratios, theirs)
        model.save({str(tmp_path / 'm.keras')!r})
        loaded = keras.saving.load_model({str(tmp_path / 'm.keras')!r})
        assert [float(loaded.compression[0].sample_ratio(s, None, True)) for s in range(6)] == [
            float(model.compression[0].sample_ratio(s, None, True)) for s in range(6)]
        print(ratios, type(loaded.compression[0].schedule).__name__)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios, name = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    ratios = json.loads(ratios)
    assert ratios[0] == pytest.approx(0.1) and ratios[-1] == pytest.approx(0.7)
    assert ratios == sorted(ratios)
    # Read into its keras.ops twin: a saved model loads without TF-MOT.
    assert name == "PolynomialRatio"


@pytest.mark.slow
def test_fit_accepts_tf_data_and_crown_ibp_loss():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.data")
    x, y = _data(48)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    ibp = _model(seed=3)
    crown = _model(seed=3, bound="crown-ibp")
    history = crown.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    ibp_loss = float(ibp.compute_loss(x, y, training=False))
    crown_loss = float(_model(seed=3, bound="crown-ibp").compute_loss(x, y, training=False))
    # Same weights and data: only the bound of the certified loss differs.
    assert crown_loss != ibp_loss
    assert "certified_accuracy_pruned" in crown.evaluate(dataset, verbose=0, return_dict=True)
