"""Deployment paths: Keras's LiteRT export against the SavedModel path, ONNX export
(onnxruntime against Keras), VNN-LIB benchmark folders read back, the CLI, and the
refusal to certify Keras-quantized layers."""

import csv
import os
import re

import keras
import numpy as np
import pytest
from keras import layers

import cactus_keras
from cactus_keras import cli, export
from cactus_keras.export.onnx import to_onnx
from cactus_keras.export.verify import InterpreterRunner, make_interpreter, quantize_input
from cactus_keras.export.vnnlib import write_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def images():
    """Fashion-MNIST (Debian's copy) when installed, else synthetic images in [0, 1]
    with exact 0 and 1 pixels (the data-range cut needs both)."""
    try:
        data = cactus_keras.data.load("fashion_mnist", download=False)
        return data.x_train[:600], data.y_train[:600], data.x_test[:64], data.y_test[:64]
    except cactus_keras.data.DatasetNotFoundError:
        rng = np.random.default_rng(0)
        x = rng.choice([0.0, 0.3, 0.7, 1.0], (664, 28, 28, 1)).astype("float32")
        y = rng.integers(0, 10, 664)
        return x[:600], y[:600], x[600:], y[600:]


@pytest.fixture(scope="module")
def networks(images):
    """A trained cnn3, and a network with batch norm, pooling and a final softmax."""
    x, y, _, _ = images
    keras.utils.set_random_seed(0)
    cnn3 = cactus_keras.models.cnn3((28, 28, 1), 10)
    inputs = keras.Input((28, 28, 1))
    h = layers.Conv2D(8, 3, padding="same")(inputs)
    h = layers.MaxPooling2D(2)(layers.ReLU()(layers.BatchNormalization()(h)))
    h = layers.AveragePooling2D(2)(h)
    outputs = layers.Dense(10, activation="softmax")(layers.Flatten()(h))
    pooled = keras.Model(inputs, outputs, name="pooled")
    for net, from_logits in ((cnn3, True), (pooled, False)):
        net.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
        net.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return {"cnn3": cnn3, "pooled": pooled}


# ------------------------------------------------------------------------------ LiteRT


@pytest.mark.slow
def test_keras_litert_and_saved_model_exports_agree(networks, images, tmp_path):
    """Keras's model.export(format="litert") with our converter options writes the same
    full-integer int8 file as the SavedModel + TFLiteConverter path."""
    x_train, _, x_test, y_test = images
    for name, net in networks.items():
        paths = {exporter: export.to_tflite(net, tmp_path / f"{name}_{exporter}.tflite",
                                            x_train[:100], exporter=exporter)
                 for exporter in ("litert", "saved_model")}
        outputs = {}
        for exporter, path in paths.items():
            graph = export.load_integer_graph(path)  # full-integer int8, builtin ops only
            assert not graph.float_input and graph.logits == graph.output
            interpreter, _ = make_interpreter(path)
            assert interpreter.get_input_details()[0]["dtype"] == np.int8
            assert interpreter.get_output_details()[0]["dtype"] == np.int8
            outputs[exporter] = InterpreterRunner(interpreter)(quantize_input(graph, x_test))
        np.testing.assert_array_equal(outputs["litert"], outputs["saved_model"], err_msg=name)
        result = export.verify_tflite(paths["litert"], x_test, y_test, 0.001, verbose=0)
        assert result.simulation_agreement == 1.0


def test_to_tflite_checks_the_exporter(networks, images, tmp_path):
    with pytest.raises(ValueError, match="`exporter` must be one of auto, litert"):
        export.to_tflite(networks["cnn3"], tmp_path / "m.tflite", images[0][:8], exporter="tf")


# ------------------------------------------------------------------------------ ONNX


@pytest.mark.parametrize("name", ["cnn3", "pooled"])
def test_onnxruntime_matches_keras(networks, images, tmp_path, name):
    import onnxruntime

    net = networks[name]
    path = to_onnx(net, tmp_path / "sub" / f"{name}.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    x_test = images[2]
    onnx_out = session.run(None, {feed.name: x_test})[0]
    keras_out = net.predict(x_test, verbose=0)
    assert onnx_out.shape == keras_out.shape
    np.testing.assert_allclose(onnx_out, keras_out, rtol=0, atol=1e-5)


def test_to_onnx_checks_its_arguments(networks, tmp_path):
    with pytest.raises(ValueError, match="opset_version"):
        to_onnx(networks["cnn3"], tmp_path / "m.onnx", opset_version="13")
    with pytest.raises(ValueError, match="is a directory"):
        to_onnx(networks["cnn3"], tmp_path)
    with pytest.raises(TypeError, match="Keras 3 model"):
        to_onnx(object(), tmp_path / "m.onnx")


# ------------------------------------------------------------------------------ VNN-LIB

_BOUND = re.compile(r"^\(assert \((<=|>=) X_(\d+) (\S+)\)\)$")
_OUTPUT = re.compile(r"^\(and \(>= Y_(\d+) Y_(\d+)\)\)$")


def _parse_vnnlib(path):
    """(lower, upper, declared inputs, declared outputs, [(j, y)] of the violation)."""
    lower, upper, pairs = {}, {}, []
    inputs = outputs = 0
    in_disjunction = False
    for line in open(path).read().splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("(declare-const X_"):
            inputs += 1
        elif line.startswith("(declare-const Y_"):
            outputs += 1
        elif match := _BOUND.match(line):
            side, index, value = match.groups()
            (upper if side == "<=" else lower)[int(index)] = float(value)
        elif line == "(assert (or":
            in_disjunction = True
        elif in_disjunction and (match := _OUTPUT.match(line)):
            pairs.append((int(match.group(1)), int(match.group(2))))
        elif line == "))":
            in_disjunction = False
        else:
            raise AssertionError(f"unexpected line in {path}: {line!r}")
    n = len(lower)
    assert sorted(lower) == sorted(upper) == list(range(n))
    return (np.array([lower[i] for i in range(n)]), np.array([upper[i] for i in range(n)]),
            inputs, outputs, pairs)


def test_vnnlib_benchmark_reads_back(networks, images, tmp_path):
    """Every property holds the epsilon box cut to [0, 1] around its sample (row-major
    inputs) and the violation "some other class reaches the label's output"."""
    _, _, x_test, y_test = images
    x, y = x_test[:5], y_test[:5]
    epsilon = 0.05
    assert (x == 0).any() and (x > 1 - epsilon).any()  # both ends of the cut are exercised
    paths = write_benchmark(networks["cnn3"], x, y, epsilon, tmp_path / "bench", timeout=120)
    folder = tmp_path / "bench"
    with open(folder / "instances.csv") as f:
        rows = list(csv.reader(f))
    assert [row[1] for row in rows] == [os.path.relpath(p, folder) for p in paths]
    for (onnx_path, vnnlib_path, timeout), sample, label in zip(rows, x, y):
        assert (folder / onnx_path).is_file() and float(timeout) == 120
        lower, upper, inputs, outputs, pairs = _parse_vnnlib(folder / vnnlib_path)
        flat = sample.astype(np.float64).reshape(-1)
        assert inputs == flat.size and outputs == 10
        np.testing.assert_array_equal(lower, np.maximum(flat - epsilon, 0.0))
        np.testing.assert_array_equal(upper, np.minimum(flat + epsilon, 1.0))
        assert np.all(lower <= flat) and np.all(flat <= upper)
        assert sorted(pairs) == [(j, int(label)) for j in range(10) if j != label]


def test_vnnlib_without_range_cut_and_bad_arguments(networks, images, tmp_path):
    x, y = images[2][:2], images[3][:2]
    (path,) = write_benchmark(networks["cnn3"], x[:1], y[:1], 0.5, tmp_path / "b",
                              input_range=None)
    lower, upper, *_ = _parse_vnnlib(path)
    flat = x[0].astype(np.float64).reshape(-1)
    np.testing.assert_array_equal(lower, flat - 0.5)
    np.testing.assert_array_equal(upper, flat + 0.5)
    with pytest.raises(ValueError, match="epsilon"):
        write_benchmark(networks["cnn3"], x, y, -0.1, tmp_path / "c")
    with pytest.raises(ValueError, match="timeout"):
        write_benchmark(networks["cnn3"], x, y, 0.1, tmp_path / "c", timeout=0)
    with pytest.raises(ValueError, match="Labels must lie"):
        write_benchmark(networks["cnn3"], x, y + 10, 0.1, tmp_path / "c")


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def saved(networks, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy_cli")
    x_train, y_train, x_test, y_test = images
    data = folder / "tiny.npz"
    np.savez(data, x_train=x_train[:50], y_train=y_train[:50], x_test=x_test[:8],
             y_test=y_test[:8])
    model = folder / "cnn3.keras"
    networks["cnn3"].save(model)
    return folder, str(model), str(data)


def test_cli_export_onnx_and_vnnlib(saved, capsys):
    folder, model, data = saved
    onnx_path = folder / "m.onnx"
    assert cli.main(["export", "--format", "onnx", "--model", model,
                     "--output", str(onnx_path)]) == 0
    assert onnx_path.stat().st_size > 0 and "float32 ONNX" in capsys.readouterr().out
    bench = folder / "bench"
    assert cli.main(["export-vnnlib", "--model", model, "--dataset", data, "--epsilon", "0.1",
                     "--samples", "3", "--output", str(bench), "--timeout", "60"]) == 0
    assert "3 VNN-LIB properties" in capsys.readouterr().out
    rows = (bench / "instances.csv").read_text().splitlines()
    assert rows == [f"onnx/model.onnx,vnnlib/sample_{i}.vnnlib,60" for i in range(3)]


@pytest.mark.parametrize("argv, flag", [
    (["export-vnnlib", "--epsilon", "0.1", "--samples", "0"], "--samples"),
    (["export-vnnlib", "--epsilon", "-1", "--samples", "2"], "epsilon"),
    (["export"], "--dataset"),
])
def test_cli_bad_input_is_one_line(saved, capsys, argv, flag):
    folder, model, data = saved
    argv = argv + ["--model", model, "--output", str(folder / "out")]
    if argv[0] == "export-vnnlib":
        argv += ["--dataset", data]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err


# ------------------------------------------------------------------------------ refusal


def test_certify_refuses_keras_quantized_layers():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu"),
                            layers.Dense(3)])
    x, y = np.zeros((2, 6), "float32"), np.array([0, 1])
    assert cactus_keras.certify(net, x, y, 0.1).certified.shape == (2,)  # fine before
    net.quantize("int8")
    with pytest.raises(ValueError, match="quantized by Keras") as info:
        cactus_keras.certify(net, x, y, 0.1)
    message = str(info.value)
    assert f"'{net.layers[0].name}'" in message
    assert "to_tflite" in message and "verify_tflite" in message
