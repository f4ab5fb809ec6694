"""The int8_file member: its network is the exported int8 file's arithmetic.

A CACTUS set with a pruning member and the int8 file member is trained briefly; its file
(exported with the member's ranges) is then checked against the member: the file's
activation scales and zero points are the member's, the member's code bounds contain
the interpreter's outputs at sampled points of each box (default and reference
kernels), and every sample the member certifies the verifier certifies too.
"""

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import export
from cactus_keras.compression import Int8FileQuantization, members_from_tables
from cactus_keras.export.verify import InterpreterRunner, make_interpreter, quantize_input

EPSILON = 0.01


@pytest.fixture(scope="module")
def data():
    try:
        d = cactus_keras.data.load("fashion_mnist", download=False)
        return d.x_train[:2048], d.y_train[:2048], d.x_test[:200], d.y_test[:200]
    except cactus_keras.data.DatasetNotFoundError:
        rng = np.random.default_rng(0)
        templates = rng.uniform(0, 1, (10, 28, 28, 1))
        y = rng.integers(0, 10, 2248)
        x = np.clip(templates[y] * 0.7 + rng.uniform(0, 0.3, (2248, 28, 28, 1)), 0, 1)
        return x[:2048].astype("float32"), y[:2048], x[2048:].astype("float32"), y[2048:]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    keras.utils.set_random_seed(0)
    x, y, _, _ = data
    member = Int8FileQuantization()
    model = cactus_keras.CactusModel(
        cactus_keras.models.cnn3(), epsilon=EPSILON, member_batch_fraction=0.5,
        compression=[cactus_keras.Pruning((0.25, 0.75)), member])
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("int8_file") / "model.tflite"
    export.to_tflite(model, path, x[:200])
    return model, member, str(path)


def _file_quantization(path):
    """(scale, zero point) of the input tensor and of each CONV_2D/FC output."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        tflite = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(f.read()), 0))
    graph = tflite.subgraphs[0]
    found = [graph.tensors[graph.inputs[0]].quantization]
    for op in graph.operators:
        code = tflite.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in (3, 9):
            found.append(graph.tensors[op.outputs[0]].quantization)
    return [(float(q.scale[0]), int(q.zeroPoint[0])) for q in found]


def test_the_file_has_the_members_scales_and_zero_points(trained):
    model, member, path = trained
    expected = member.tensor_quantization(model)
    assert len(expected) == 4  # input, two convolutions, the output layer
    assert _file_quantization(path) == [(float(np.float32(s)), z) for s, z in expected]
    # Fused ReLU outputs: zero point -128 (the clamp at the real value 0).
    assert [z for _, z in expected[1:3]] == [-128, -128]
    # Without the member (calibrated ranges) the file differs.
    calibration = np.full((4, 28, 28, 1), 0.5, "float32")
    other = export.to_tflite(model, path + ".calibrated.tflite", calibration, int8_member=None)
    assert _file_quantization(other) != _file_quantization(path)


def _points(graph, x, rng):
    low = np.clip(x - EPSILON, 0.0, 1.0)
    high = np.clip(x + EPSILON, 0.0, 1.0)
    floats = [x, low, high] + [rng.uniform(low, high).astype("float32") for _ in range(4)]
    floats += [np.where(rng.random(x.shape) < 0.5, low, high) for _ in range(4)]
    return low, high, [quantize_input(graph, p) for p in floats]


@pytest.mark.parametrize("kernels", ["default", "reference"])
def test_member_bounds_contain_the_files_outputs(trained, data, kernels):
    model, member, path = trained
    x = data[2][:100]
    graph = export.load_integer_graph(path)
    low, high, points = _points(graph, x, np.random.default_rng(1))
    lower, upper = member.file_bounds(model, low, high)
    interpreter, _ = make_interpreter(path, kernels)
    run = InterpreterRunner(interpreter)
    for q in points:
        out = run(q).astype(np.int64)
        assert np.all(out >= lower) and np.all(out <= upper), kernels
    # The clean pass of the member is the file's (bar float rounding of a tie).
    clean, _ = member.file_bounds(model, x)
    out = run(quantize_input(graph, x)).astype(np.int64)
    assert np.mean(np.all(np.abs(clean - out) <= 1, axis=1)) == 1.0
    assert np.mean(np.argmax(clean, 1) == np.argmax(out, 1)) >= 0.98


def _certified(lower, upper, y):
    """The file's certificate from output code bounds (first-maximum arg-max)."""
    n, k = lower.shape
    low_y = lower[np.arange(n), y][:, None]
    earlier = np.arange(k)[None, :] < y[:, None]
    ok = np.where(earlier, low_y > upper, low_y >= upper)
    ok[np.arange(n), y] = True
    return ok.all(axis=1)


def test_members_certificates_are_a_subset_of_the_verifiers(trained, data):
    model, member, path = trained
    x, y = data[2], data[3]
    lower, upper = member.file_bounds(model, np.clip(x - EPSILON, 0, 1), np.clip(x + EPSILON, 0, 1))
    unfolded = _certified(lower, upper, y)
    own = member.certified(model, x, y, EPSILON)
    assert np.all(own >= unfolded)  # folding the last layer only adds certificates
    verified = export.verify_tflite(path, x, y, EPSILON, rounding=member.rounding)
    assert verified.rounding == "nearest"
    assert own.any()
    assert not np.any(own & ~verified.certified)  # never claims more than the file earns
    # And the model's own metric agrees with the member's bounds.
    results = {r.name: r for r in model.member_results(x, y, training=False)}
    margins = keras.ops.convert_to_numpy(results["int8_file"].margin_lower)
    from_margins = np.all((margins > 0) | (np.eye(10)[y] > 0), axis=1)
    np.testing.assert_array_equal(from_margins, own)


def test_save_load_keeps_the_ranges_and_tables_build_the_member(trained, tmp_path):
    model, member, _ = trained
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    (again,) = [m for m in loaded.compression if m.kind == "int8_file"]
    assert again.tensor_quantization(loaded) == member.tensor_quantization(model)
    assert again.rounding == "nearest"
    (built,) = members_from_tables([{"kind": "int8_file", "rounding": "floor_ceil"}])
    assert isinstance(built, Int8FileQuantization) and built.name == "int8_file"
    assert built.rounding == "floor_ceil"


def test_errors_name_the_setting_and_the_layer():
    with pytest.raises(ValueError, match="`rounding` must be one of nearest, floor_ceil"):
        Int8FileQuantization(rounding="up")
    with pytest.raises(ValueError, match="range_momentum"):
        Int8FileQuantization(range_momentum=1.0)
    net = cactus_keras.models.cnn3(batch_norm=True)
    with pytest.raises(ValueError, match="BatchNormalization"):
        cactus_keras.CactusModel(net, epsilon=0.1, compression=[Int8FileQuantization()])


def test_floor_ceil_bounds_contain_nearest_bounds(trained, data):
    model, member, _ = trained
    x = data[2][:50]
    low, high = np.clip(x - EPSILON, 0, 1), np.clip(x + EPSILON, 0, 1)
    tight = member.file_bounds(model, low, high)
    member.rounding = "floor_ceil"
    try:
        loose = member.file_bounds(model, low, high)
    finally:
        member.rounding = "nearest"
    assert np.all(loose[0] <= tight[0]) and np.all(loose[1] >= tight[1])
    assert np.any(loose[1] - loose[0] > tight[1] - tight[0])


JAX_SCRIPT = """
import numpy as np, keras, cactus_keras
from cactus_keras.compression import Int8FileQuantization
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (128, 28, 28, 1)).astype("float32"); y = rng.integers(0, 10, 128)
member = Int8FileQuantization()
model = cactus_keras.CactusModel(cactus_keras.models.cnn3(), epsilon=0.01,
                                 compression=[cactus_keras.Pruning((0.25, 0.75)), member])
model.compile(optimizer="adam")
before = [v.numpy().copy() for v in model.network.trainable_variables]
history = model.fit(x, y, batch_size=64, epochs=1, verbose=0)
assert np.isfinite(history.history["loss"][-1])
assert "certified_accuracy_int8_file" in history.history
after = [v.numpy() for v in model.network.trainable_variables]
assert any(np.any(a != b) for a, b in zip(after, before))
quantization = member.tensor_quantization(model)
assert quantization[0][1] == -128 and all(s > 0 for s, _ in quantization), quantization
print("ok")
"""


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("jax") is None,
                    reason="JAX is not installed")
def test_the_member_trains_on_jax(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.stdout + proc.stderr)[-3000:]


def test_cli_trains_the_member_beside_pruning_and_resumes(tmp_path, capsys):
    import json

    from cactus_keras import cli

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 24)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    run = tmp_path / "run"
    common = ["train", "--dataset", str(data), "--epsilon", "0.05", "--arch", "mlp",
              "--epochs", "2", "--batch-size", "12", "--validation-samples", "0",
              "--output", str(run), "--member", "pruning:ratio=0.5-0.95",
              "--member", "int8_file:rounding=floor_ceil", "--member-batch-fraction", "0.5"]
    assert cli.main(common) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["compression"][1] == {"kind": "int8_file", "rounding": "floor_ceil",
                                       "range_momentum": 0.99, "name": "int8_file"}
    header = (run / "training_log.csv").read_text().splitlines()[0].split(",")
    assert "certified_accuracy_int8_file" in header
    capsys.readouterr()
    assert cli.main(common + ["--resume"]) == 0
    model = keras.saving.load_model(run / "model.keras")
    (member,) = [m for m in model.compression if m.kind == "int8_file"]
    assert member.tensor_quantization(model)[0] == (pytest.approx(1 / 255, rel=1e-3), -128)


def test_the_grid_exports_the_members_ranges_and_prunes_copies(trained, tmp_path):
    import json
    import types

    from cactus_keras.compression import compressible_kernels
    from cactus_keras.experiments.methods import int8_file_source, pruned_copy

    model, member, _ = trained
    ctx = types.SimpleNamespace(directory=str(tmp_path))
    network = model.network
    assert int8_file_source(ctx, network) is network  # no run files: the network
    model.save(tmp_path / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps({"compression": [
        {"kind": "pruning"}, {"kind": "int8_file", "rounding": "nearest"}]}))
    source = int8_file_source(ctx, network)
    assert isinstance(source, cactus_keras.CactusModel)
    (again,) = [m for m in source.compression if m.kind == "int8_file"]
    assert again.tensor_quantization(source) == member.tensor_quantization(model)
    pruned = pruned_copy(network, "global_l1", 0.9)
    kernels = [keras.ops.convert_to_numpy(k) for k in compressible_kernels(pruned)]
    zeros = sum(float((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.9, abs=0.01)
    # The original is untouched.
    originals = [keras.ops.convert_to_numpy(k) for k in compressible_kernels(network)]
    assert all(np.count_nonzero(k) > 0.5 * k.size for k in originals)


@pytest.mark.parametrize("kernels", ["default", "reference"])
def test_a_certified_output_range_is_sound_and_never_worse(trained, data, tmp_path, kernels):
    """A plain network wrapped by `certified_output_range`: the chosen output range is
    the best candidate on the labelled data, the file carries it, the interpreter's
    outputs stay inside the member's bounds, and the member never certifies more of
    the test samples than the verifier does."""
    model, _, _ = trained
    x, y, x_test, y_test = data
    wrapped, scores = export.certified_output_range(
        model.network, x[:300], y[:300], EPSILON, calibration_data=x[:200])
    member = wrapped.compression[0]
    assert member.kind == "int8_file" and member.output_range in scores
    assert scores[member.output_range] == max(scores.values())
    assert scores[member.output_range] >= scores[(1.0, 1.0)]
    path = str(tmp_path / "chosen.tflite")
    export.to_tflite(wrapped, path, x[:200])
    assert _file_quantization(path) == [(float(np.float32(s)), z)
                                        for s, z in member.tensor_quantization(wrapped)]
    graph = export.load_integer_graph(path)
    low, high, points = _points(graph, x_test[:60], np.random.default_rng(2))
    lower, upper = member.file_bounds(wrapped, low, high)
    run = InterpreterRunner(make_interpreter(path, kernels)[0])
    for q in points:
        out = run(q).astype(np.int64)
        assert np.all(out >= lower) and np.all(out <= upper)
    own = member.certified(wrapped, x_test, y_test, EPSILON)
    verified = export.verify_tflite(path, x_test, y_test, EPSILON)
    assert not np.any(own & ~verified.certified)
    # Saved with the model: the choice survives a save/load.
    wrapped.save(tmp_path / "wrapped.keras")
    again = keras.saving.load_model(tmp_path / "wrapped.keras", compile=False)
    assert again.compression[0].output_range == member.output_range
    with pytest.raises(ValueError, match="`output_range` must be two factors"):
        Int8FileQuantization(output_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="`calibration_data` is required"):
        export.certified_output_range(model.network, x[:10], y[:10], EPSILON)
