"""Physical structured pruning: `shrink` computes what the masked network computes.

The shrunk network's logits and its IBP and CROWN margin bounds equal the masked
network's (to float rounding), its int8 file is smaller and its certificate is sound
against the LiteRT interpreter, and a network it cannot carry is an error naming the layer.
"""

import keras
import numpy as np
import pytest
from keras import layers, ops

import cactus_keras
from cactus_keras import bounds
from cactus_keras.compression import ShrinkError, prune_structured, shrink

from random_models import BUILDERS, _randomize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _same_padding_cnn(seed):
    """Same-padded convolutions after positive biases: the removed channels' constants
    reach the next convolution's zero padding (the constant stand-in channel's case)."""
    net = keras.Sequential([
        keras.Input((8, 8, 2)),
        layers.Conv2D(6, 3, padding="same"),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2D(6, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(7, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(3),
    ], name="same_padding")
    return _randomize(net, seed)


NETWORKS = {
    "cnn": lambda seed: BUILDERS["cnn"](seed),      # Rescaling, BN, Conv -> Flatten -> Dense
    "mlp": lambda seed: BUILDERS["mlp"](seed),      # Normalization, Dense -> Dense, BN, Dropout
    "same_padding": _same_padding_cnn,
    "cnn3_bn": lambda seed: _randomize(cactus_keras.models.cnn3((12, 12, 1), 4, batch_norm=True), seed),
}


def _scaled(net, factor=0.5):
    # Random weights of std 0.6 blow the logits up layer after layer; smaller kernels keep
    # the bounds at a size where float tolerances mean something.
    for layer in net.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(layer.kernel * factor)
    return net


def _margins(net, x, y, bound, epsilon):
    graph = bounds.parse_network(net)
    box = bounds.input_box(x, epsilon)
    return ops.convert_to_numpy(bounds.margin_lower_bounds(graph, box, y, bound))


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_shrunk_network_computes_the_masked_one(name, ratio):
    net = _scaled(NETWORKS[name](3))
    masked = prune_structured(net, ratio)
    small = shrink(masked)
    assert small.count_params() < masked.count_params()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, *net.input_shape[1:])).astype("float32")
    y = rng.integers(0, net.output_shape[-1], 16)
    expected = ops.convert_to_numpy(masked(x))
    got = ops.convert_to_numpy(small(x))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale)
    for bound in ("ibp", "crown"):
        want = _margins(masked, x, y, bound, 0.02)
        have = _margins(small, x, y, bound, 0.02)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(have, want, atol=1e-4 * scale, err_msg=bound)


def test_removed_channels_are_gone_and_the_stand_in_only_where_needed():
    net = _scaled(_same_padding_cnn(5))
    for layer in net.layers:
        if isinstance(layer, layers.Conv2D):
            layer.bias.assign(np.abs(layer.bias.numpy()) + 0.5)  # nonzero constants after ReLU
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([np.ones(6), np.zeros(6), np.zeros(6), np.ones(6)])
    conv, norm = net.layers[0], net.layers[1]
    masked = prune_structured(net, {conv.name: 0.5}, per_layer=True)
    small = shrink(masked)
    # Half of conv 1's 6 channels removed; the next convolution pads with zeros, so one
    # removed channel stays as the constant stand-in of the other two.
    assert small.get_layer(conv.name).kernel.shape[-1] == 4
    assert small.get_layer(norm.name).gamma.shape == (4,)
    x = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(small(x), masked(x), rtol=1e-5, atol=1e-5)

    # A valid-padded next layer (cnn3) takes the constants in its bias: no stand-in.
    net = _scaled(_randomize(cactus_keras.models.cnn3((12, 12, 1), 4), 2))
    masked = prune_structured(net, {"block1_conv": 0.5, "block2_conv": 0.75}, per_layer=True)
    small = shrink(masked)
    assert small.get_layer("block1_conv").kernel.shape == (4, 4, 1, 8)
    assert small.get_layer("block2_conv").kernel.shape == (4, 4, 8, 8)
    assert small.get_layer("logits").kernel.shape == (8 * 1 * 1, 4)
    x = np.random.default_rng(1).uniform(0, 1, (8, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(small(x), masked(x), rtol=1e-5, atol=1e-5)


def test_unpruned_network_is_copied_unchanged():
    net = _scaled(BUILDERS["cnn"](0))
    small = shrink(net)
    assert small.count_params() == net.count_params()
    x = np.random.default_rng(0).uniform(0, 1, (4, 9, 9, 1)).astype("float32")
    np.testing.assert_allclose(small(x), net(x), rtol=1e-6, atol=1e-6)
    assert all(a is not b for a, b in zip(small.weights, net.weights))


def test_add_of_branches_keeping_different_channels_is_an_error_naming_it():
    inputs = keras.Input((6, 6, 1))
    a = layers.Conv2D(4, 3, padding="same", name="branch_a")(inputs)
    b = layers.Conv2D(4, 3, padding="same", name="branch_b")(inputs)
    h = layers.Add(name="join")([a, b])
    outputs = layers.Dense(2)(layers.Flatten()(h))
    net = keras.Model(inputs, outputs)
    net.get_layer("branch_a").kernel.assign(
        net.get_layer("branch_a").kernel * np.array([0, 1, 1, 1], "float32"))
    with pytest.raises(ShrinkError, match="'join' \\(Add\\).*keep different channels"):
        shrink(net)


def test_reshape_after_a_pruned_layer_is_an_error_naming_it():
    net = keras.Sequential([
        keras.Input((4,)), layers.Dense(6, name="hidden"), layers.Reshape((2, 3), name="fold"),
        layers.Flatten(), layers.Dense(2),
    ])
    net.get_layer("hidden").kernel.assign(net.get_layer("hidden").kernel * np.array([0, 1, 1, 1, 1, 1], "float32"))
    with pytest.raises(ShrinkError, match="'fold' \\(Reshape\\)"):
        shrink(net)


def test_prune_structured_per_layer_names_unknown_layers():
    net = cactus_keras.models.cnn3((12, 12, 1), 4)
    with pytest.raises(ValueError, match="\\['logits'\\] that are not prunable hidden"):
        prune_structured(net, {"logits": 0.5}, per_layer=True)


@pytest.fixture(scope="module")
def trained_cnn3():
    try:
        data = cactus_keras.data.load("fashion_mnist", download=False)
        x, y, x_test, y_test = data.x_train[:2000], data.y_train[:2000], data.x_test[:128], data.y_test[:128]
    except cactus_keras.data.DatasetNotFoundError:
        rng = np.random.default_rng(0)
        templates = rng.uniform(0, 1, (10, 28, 28, 1))
        labels = rng.integers(0, 10, 2128)
        images = np.clip(templates[labels] * 0.7 + rng.uniform(0, 0.3, (2128, 28, 28, 1)), 0, 1)
        images = images.astype("float32")
        x, y, x_test, y_test = images[:2000], labels[:2000], images[2000:], labels[2000:]
    keras.utils.set_random_seed(0)
    net = cactus_keras.models.cnn3((28, 28, 1), 10)
    net.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return net, x, x_test, y_test


@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
def test_shrunk_int8_file_is_smaller_and_its_certificate_sound(trained_cnn3, tmp_path, rounding):
    """SOUNDNESS: no int8 input in a certified box changes the interpreter's prediction
    of the shrunk file (XNNPACK and reference kernels), and its outputs stay in bounds."""
    from cactus_keras import export
    from test_export import _box_points, _run

    net, x_train, x, y = trained_cnn3
    masked = prune_structured(net, 0.5)
    small = shrink(masked)
    masked_path = export.to_tflite(masked, tmp_path / "masked.tflite", x_train[:200])
    small_path = export.to_tflite(small, tmp_path / "small.tflite", x_train[:200])
    import os
    assert os.path.getsize(small_path) < 0.75 * os.path.getsize(masked_path)
    epsilon = 0.002
    result = export.verify_tflite(small_path, x, y, epsilon, rounding=rounding)
    certified = result.certified
    assert 0 < certified.sum() < len(y)
    assert np.all(result.predicted[certified] == y[certified])
    graph = export.load_integer_graph(small_path)
    _, _, points = _box_points(graph, x, epsilon, rounding, np.random.default_rng(7))
    for kernels in ("default", "reference"):
        for q in points:
            _, outputs = _run(small_path, kernels, q)
            assert np.all(outputs >= result.output_lower), kernels
            assert np.all(outputs <= result.output_upper), kernels
            assert np.all(np.argmax(outputs, 1)[certified] == y[certified]), kernels


@pytest.mark.parametrize("arch", ["mlp", "cnn5", "cnn7"])
def test_model_zoo_shrinks_to_the_same_logits(arch):
    """cnn5 and cnn7 pad their convolutions with zeros ("same"): the stand-in case."""
    net = _scaled(_randomize(cactus_keras.models.get(arch, (12, 12, 1), 5, batch_norm=True), 4), 0.3)
    masked = prune_structured(net, 0.5)
    small = shrink(masked)
    assert small.count_params() < 0.6 * masked.count_params()
    x = np.random.default_rng(2).uniform(0, 1, (8, 12, 12, 1)).astype("float32")
    expected = ops.convert_to_numpy(masked(x))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(ops.convert_to_numpy(small(x)), expected, atol=1e-5 * scale)


# `cactus-keras shrink`: the command line of `shrink`.

def test_shrink_command_writes_the_narrower_network_and_refuses_to_overwrite(tmp_path):
    """A subprocess, as a user runs it: the saved network computes the masked one."""
    import subprocess
    import sys

    from cli_helpers import env

    net = _scaled(NETWORKS["cnn3_bn"](3))
    masked = prune_structured(net, {"block1_conv": 0.5, "block2_conv": 0.75}, per_layer=True)
    model, output = tmp_path / "pruned.keras", tmp_path / "small.keras"
    masked.save(model)
    command = [sys.executable, "-m", "cactus_keras.cli", "shrink", "--model", str(model),
               "--output", str(output)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    assert rows["block1_conv"] == ["16", "8"] and rows["block2_conv"] == ["32", "8"]
    assert rows["logits"] == ["4", "4"]
    small = keras.saving.load_model(output, compile=False)
    assert f"parameters {masked.count_params()} -> {small.count_params()}" in proc.stdout
    x = np.random.default_rng(1).uniform(0, 1, (8, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(small(x)), ops.convert_to_numpy(masked(x)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(small(x)), ops.convert_to_numpy(shrink(masked)(x)),
                               rtol=1e-6, atol=1e-6)

    again = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith(
        f"cactus-keras shrink: error: --output '{output}' already exists; pass --overwrite")
    assert "Traceback" not in again.stderr


def test_shrink_command_prunes_a_cactus_model_with_ratio_and_overwrites(tmp_path, capsys):
    from cactus_keras import cli

    net = _scaled(NETWORKS["cnn3_bn"](2))
    model = cactus_keras.CactusModel(net, epsilon=0.01)
    path, output = tmp_path / "model.keras", tmp_path / "small.keras"
    model.save(path)
    output.write_text("old")
    assert cli.main(["shrink", "--model", str(path), "--output", str(output), "--ratio", "0.5",
                     "--overwrite"]) == 0
    small = keras.saving.load_model(output, compile=False)
    masked = prune_structured(net, 0.5)
    assert small.count_params() == shrink(masked).count_params() < net.count_params()
    x = np.random.default_rng(3).uniform(0, 1, (4, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(small(x)), ops.convert_to_numpy(masked(x)),
                               rtol=1e-5, atol=1e-5)
    assert "parameters" in capsys.readouterr().out


def test_shrink_command_names_the_layer_it_cannot_shrink(tmp_path, capsys):
    from cli_helpers import one_error_line

    from cactus_keras import cli

    net = keras.Sequential([
        keras.Input((4,)), layers.Dense(6, name="hidden"), layers.Reshape((2, 3), name="fold"),
        layers.Flatten(), layers.Dense(2),
    ])
    net.get_layer("hidden").kernel.assign(net.get_layer("hidden").kernel * np.array([0, 1, 1, 1, 1, 1], "float32"))
    path = tmp_path / "net.keras"
    net.save(path)
    assert cli.main(["shrink", "--model", str(path), "--output", str(tmp_path / "s.keras")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"cactus-keras shrink: error: --model '{path}': Cannot shrink "
                           "through layer 'fold' (Reshape)"), line
    assert not (tmp_path / "s.keras").exists()


def test_shrink_command_checks_its_flags_before_tensorflow(tmp_path):
    from cli_helpers import refused_before_backends

    model = tmp_path / "m.keras"
    model.write_text("not read")
    (tmp_path / "taken.keras").write_text("x")
    cases = [
        (["--model", "nope.keras", "--output", "o.keras"], "--model: no .keras file"),
        (["--model", str(model), "--output", "o.h5"], "--output 'o.h5' must end in .keras"),
        (["--model", str(model), "--output", str(tmp_path / "taken.keras")], "already exists"),
        (["--model", str(model), "--output", "o.keras", "--ratio", "1.5"], "--ratio is the fraction"),
        (["--model", str(model), "--output", str(model), "--overwrite"], "--output is --model"),
    ]
    stderr = refused_before_backends([["shrink", *a] for a, _ in cases], tmp_path)
    errors = [line for line in stderr.splitlines() if line.startswith("cactus-keras shrink")]
    assert len(errors) == len(cases)
    for line, (_, expected) in zip(errors, cases):
        assert expected in line, line
    assert not (tmp_path / "o.keras").exists()
