"""int8 TFLite export, and certificates of the int8 model as the interpreter runs it.

The strongest checks run the file in LiteRT's interpreter on many int8 inputs inside the
certified boxes (quantized random points, random corners, random integer points): the
interpreter's prediction never changes for a certified sample, and every intermediate
int8 tensor (read with experimental_preserve_all_tensors) lies in its integer interval.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import cactus_keras
from cactus_keras import export
from cactus_keras.export import integer_intervals, integer_simulation
from cactus_keras.int8.fixed_point import (
    fixed_point_error,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)
from cactus_keras.export.integer_margins import (
    certified_from_bounds,
    certify_propagation,
    final_fully_connected,
    folded_pairs,
    softmax_pairs,
)
from cactus_keras.export.integer_propagation import Propagation, propagate
from cactus_keras.export.integer_simulation import softmax_reference
from cactus_keras.export.verify import (
    SIMULATED_KERNELS,
    InterpreterRunner,
    input_interval,
    make_interpreter,
    quantize_input,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Epsilon per model where some but not all test samples certify (checked below).
EPSILON = {"cnn3": 0.002, "softmax": 0.002, "zoo": 0.002}


@pytest.fixture(scope="module")
def fashion():
    """3000 training and 256 test images of Fashion-MNIST (Debian's copy), or a
    synthetic 10-class image set where it is not installed."""
    try:
        data = cactus_keras.data.load("fashion_mnist", download=False)
        return (data.x_train[:3000], data.y_train[:3000], data.x_test[:256],
                data.y_test[:256])
    except cactus_keras.data.DatasetNotFoundError:
        rng = np.random.default_rng(0)
        templates = rng.uniform(0, 1, (10, 28, 28, 1))
        y = rng.integers(0, 10, 3256)
        x = np.clip(templates[y] * 0.7 + rng.uniform(0, 0.3, (3256, 28, 28, 1)), 0, 1)
        x = x.astype("float32")
        return x[:3000], y[:3000], x[3000:], y[3000:]


def _train(net, fashion, probabilities=False):
    x, y, _, _ = fashion
    net.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
                metrics=["accuracy"])
    net.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return net


def _zoo_network():
    """Batch norm, max and average pooling, depthwise convolution, residual Add,
    Concatenate, a standalone ReLU, global average pooling and a final softmax."""
    inputs = keras.Input((28, 28, 1))
    a = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    a = layers.ReLU()(layers.BatchNormalization()(a))
    b = layers.Conv2D(8, 3, padding="same", activation="relu6")(a)
    h = layers.ReLU()(layers.Concatenate()([layers.Add()([a, b]), a]))
    h = layers.MaxPooling2D(2)(h)
    h = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(h)
    h = layers.AveragePooling2D(2, padding="same")(h)
    pooled = layers.Dense(10)(layers.GlobalAveragePooling2D()(h))
    flat = layers.Dense(10)(layers.Flatten()(h))
    outputs = layers.Softmax()(layers.Add()([flat, pooled]))
    return keras.Model(inputs, outputs, name="zoo")


@pytest.fixture(scope="module")
def models(fashion, tmp_path_factory):
    """name -> (trained Keras network, int8 .tflite path)."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("tflite")
    x_train = fashion[0]
    built = {
        "cnn3": _train(cactus_keras.models.cnn3((28, 28, 1), 10), fashion),
        "softmax": _train(keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(8, 3, strides=2, activation="relu"),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ], name="softmax_net"), fashion, probabilities=True),
        "zoo": _train(_zoo_network(), fashion, probabilities=True),
    }
    out = {}
    for name, net in built.items():
        path = export.to_tflite(net, folder / f"{name}.tflite", x_train[:200])
        out[name] = (net, path)
    return out


def _run(path, kernels, inputs, preserve=False):
    graph = export.load_integer_graph(path)
    interpreter, _ = make_interpreter(path, kernels, preserve_all_tensors=preserve)
    outputs = InterpreterRunner(interpreter)(inputs)
    return interpreter, outputs.astype(np.int64)


def _box_points(graph, x, epsilon, rounding, rng):
    """int8 inputs in the quantized boxes: quantized random float points of the epsilon
    ball (as a deployment quantizes them), random corners and random integer points."""
    lower, upper = input_interval(graph, x, epsilon, (0.0, 1.0), rounding)
    low = np.minimum(x, np.maximum(x - epsilon, 0.0))
    high = np.maximum(x, np.minimum(x + epsilon, 1.0))
    points = [quantize_input(graph, x)]
    for _ in range(4):
        points.append(quantize_input(graph, rng.uniform(low, high).astype("float32")))
    points.append(quantize_input(graph, low))
    points.append(quantize_input(graph, high))
    for _ in range(4):
        points.append(np.where(rng.random(lower.shape) < 0.5, lower, upper))
    for _ in range(2):
        points.append(rng.integers(lower, upper + 1))
    for p in points:
        assert np.all(p >= lower) and np.all(p <= upper)
    return lower, upper, [p.astype(np.int8) for p in points]


# ------------------------------------------------------------------------------ export


def test_export_writes_a_full_integer_int8_file(models):
    from ai_edge_litert.interpreter import Interpreter

    names = {
        "cnn3": ["CONV_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED"],
        "softmax": ["CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"],
    }
    for name, (_, path) in models.items():
        interpreter = Interpreter(model_path=path)
        interpreter.allocate_tensors()
        assert interpreter.get_input_details()[0]["dtype"] == np.int8
        assert interpreter.get_output_details()[0]["dtype"] == np.int8
        assert interpreter.get_input_details()[0]["quantization"][0] > 0
        graph = export.load_integer_graph(path)
        if name in names:
            assert graph.op_names() == names[name]
        for op in graph.ops:
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                weights = graph.tensors[op.inputs[1]]
                assert weights.data.dtype == np.int8 and weights.scale.size > 1  # per channel
    zoo_ops = set(export.load_integer_graph(models["zoo"][1]).op_names())
    # Batch norm is folded; the other layers keep their int8 ops.
    assert {"ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D", "MEAN",
            "CONCATENATION", "RELU", "SOFTMAX"} <= zoo_ops
    assert "MUL" not in zoo_ops


def test_fake_quantize_is_the_dequantized_kernels_of_the_int8_file(models):
    # The training members' weight-only fake quantization (8 bits, per channel) is the
    # same map the TFLite converter applies: same scales, same integers.
    net, path = models["cnn3"]
    graph = export.load_integer_graph(path)
    weights = [graph.tensors[op.inputs[1]] for op in graph.ops
               if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    kernels = cactus_keras.compression.compressible_kernels(net)
    assert len(weights) == len(kernels) == 3
    for kernel, tensor in zip(kernels, weights):
        kernel = np.asarray(kernel.value)
        fake = np.asarray(cactus_keras.compression.fake_quantize(kernel, 8, per_channel=True))
        scale = np.asarray(cactus_keras.compression.quantization_scale(kernel, 8)).reshape(-1)
        # TFLite keeps the output channel first: (out, h, w, in) and (out, in).
        fake = np.moveaxis(fake, -1, 0)
        assert tensor.data.shape == fake.shape and tensor.quantized_dimension == 0
        np.testing.assert_allclose(tensor.scale, scale, rtol=1e-6)
        shape = (-1,) + (1,) * (fake.ndim - 1)
        np.testing.assert_array_equal(tensor.data, np.round(fake / scale.reshape(shape)))
        dequantized = tensor.data.astype("float32") * tensor.scale.reshape(shape)
        np.testing.assert_allclose(dequantized, fake, rtol=1e-6, atol=1e-9)


def test_export_accepts_cactus_model_and_datasets(models, fashion, tmp_path):
    net, path = models["cnn3"]
    model = cactus_keras.CactusModel(net, epsilon=0.1)
    x_train, y_train, x_test, y_test = fashion
    dataset = tf.data.Dataset.from_tensor_slices((x_train[:150], y_train[:150])).batch(32)
    out = export.to_tflite(model, tmp_path / "sub" / "model.tflite", dataset,
                           num_calibration_samples=100)
    assert out == str(tmp_path / "sub" / "model.tflite")
    assert export.load_integer_graph(out).op_names() == export.load_integer_graph(path).op_names()
    unbatched = tf.data.Dataset.from_tensor_slices(x_train[:20])
    export.to_tflite(net, tmp_path / "unbatched.tflite", unbatched)
    result = export.verify_tflite(out, x_test[:64], y_test[:64], 0.0)
    assert result.simulation_agreement == 1.0


def test_float_export_and_float_model_is_refused(models, fashion, tmp_path):
    net, _ = models["cnn3"]
    path = export.to_tflite(net, tmp_path / "float.tflite", None, int8=False)
    interpreter, _ = make_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    x_test, y_test = fashion[2], fashion[3]
    keras_logits = net.predict(x_test[:32], verbose=0)
    float_out = InterpreterRunner(interpreter)(x_test[:32])
    np.testing.assert_allclose(float_out, keras_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not a full-integer int8 model") as info:
        export.verify_tflite(path, x_test[:8], y_test[:8], 0.01)
    assert "float.tflite" in str(info.value) and "int8=True" in str(info.value)


@pytest.mark.parametrize("data, error, message", [
    (np.zeros((0, 28, 28, 1), "float32"), ValueError, "empty"),
    (np.zeros((10, 28, 28), "float32"), ValueError, r"sample shape \(28, 28\)"),
    (np.zeros((10, 32, 32, 1), "float32"), ValueError, "model input is"),
    (np.zeros((28, 28, 1), "float32"), ValueError, "single sample"),
    (np.full((4, 28, 28, 1), np.nan, "float32"), ValueError, "NaN"),
    ("images.npy", TypeError, "NumPy array"),
    (None, ValueError, "required for int8"),
])
def test_bad_representative_data(models, tmp_path, data, error, message):
    net, _ = models["cnn3"]
    with pytest.raises(error, match=message):
        export.to_tflite(net, tmp_path / "m.tflite", data)
    assert not (tmp_path / "m.tflite").exists()


def test_bad_representative_datasets_and_models(models, tmp_path):
    net, _ = models["cnn3"]
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 28, 28, 1), "float32")).batch(4)
    with pytest.raises(ValueError, match="empty dataset"):
        export.to_tflite(net, tmp_path / "m.tflite", empty)
    wrong = tf.data.Dataset.from_tensor_slices(np.zeros((8, 30, 30, 1), "float32")).batch(4)
    with pytest.raises(ValueError, match="dataset element"):
        export.to_tflite(net, tmp_path / "m.tflite", wrong)
    with pytest.raises(TypeError, match="Keras 3 model"):
        export.to_tflite(object(), tmp_path / "m.tflite", np.zeros((4, 28, 28, 1)))
    with pytest.raises(ValueError, match="num_calibration_samples"):
        export.to_tflite(net, tmp_path / "m.tflite", np.zeros((4, 28, 28, 1)),
                         num_calibration_samples=0)


# ------------------------------------------------------------------------------ verify


def test_verify_matches_keras_and_the_interpreter(models, fashion):
    _, _, x_test, y_test = fashion
    for name, (net, path) in models.items():
        keras_accuracy = np.mean(np.argmax(net.predict(x_test, verbose=0), 1) == y_test)
        result = export.verify_tflite(path, x_test, y_test, 0.0)
        assert result.interpreter == "ai_edge_litert"
        assert abs(result.clean_accuracy - keras_accuracy) <= 0.03, name
        assert result.simulation_agreement == 1.0, name
        q = quantize_input(export.load_integer_graph(path), x_test)
        _, outputs = _run(path, "default", q)
        np.testing.assert_array_equal(result.predicted, np.argmax(outputs, 1))
        summary = result.to_dict()
        assert summary["samples"] == len(y_test) and summary["interpreter"] == "ai_edge_litert"
        assert set(summary) >= {"clean_accuracy", "certified_accuracy", "simulation_agreement"}


@pytest.mark.parametrize("kernels", ["default", "builtin", "reference"])
def test_integer_simulation_is_bit_exact(models, fashion, kernels):
    """The point simulation reproduces the interpreter's int8 outputs element for element
    (XNNPACK, TFLite's optimized and reference kernels round ties differently)."""
    x_test = fashion[2]
    for name, (_, path) in models.items():
        graph = export.load_integer_graph(path)
        q = quantize_input(graph, x_test)
        _, outputs = _run(path, kernels, q)
        simulated = propagate(graph, q, point=True, kernels=SIMULATED_KERNELS[kernels])
        if graph.softmax is not None and kernels == "reference":
            # The reference softmax rounds exact .5 ties of its float division its own way.
            assert np.mean(simulated.lower != outputs) < 1e-3
            assert np.abs(simulated.lower - outputs).max() <= 1
        else:
            np.testing.assert_array_equal(simulated.lower, outputs, err_msg=f"{name} {kernels}")
        np.testing.assert_array_equal(np.argmax(simulated.lower, 1), np.argmax(outputs, 1))


@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
@pytest.mark.parametrize("name", ["cnn3", "softmax", "zoo"])
def test_certificates_are_sound_for_the_interpreter(models, fashion, name, rounding):
    """SOUNDNESS: no int8 input in a certified box changes the interpreter's prediction
    (XNNPACK and reference kernels), and the int8 outputs stay in their bounds."""
    _, path = models[name]
    x, y = fashion[2], fashion[3]
    epsilon = EPSILON[name]
    result = export.verify_tflite(path, x, y, epsilon, rounding=rounding)
    certified = result.certified
    if not (name == "zoo" and rounding == "floor_ceil"):  # loose there: certifies none
        assert 0 < certified.sum() < len(y), (name, rounding, certified.mean())
    assert np.all(result.predicted[certified] == y[certified])
    assert result.certified_accuracy <= result.clean_accuracy
    graph = export.load_integer_graph(path)
    lower, upper, points = _box_points(graph, x, epsilon, rounding,
                                       np.random.default_rng(len(name)))
    for kernels in ("default", "reference"):
        for q in points:
            _, outputs = _run(path, kernels, q)
            assert np.all(outputs >= result.output_lower), kernels
            assert np.all(outputs <= result.output_upper), kernels
            predicted = np.argmax(outputs, 1)
            assert np.all(predicted[certified] == y[certified]), kernels


@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
@pytest.mark.parametrize("name", ["cnn3", "zoo"])
def test_every_intermediate_tensor_stays_in_its_interval(models, fashion, name, rounding):
    """The strongest check: the integer interval of every int8 tensor contains the
    interpreter's value of that tensor on points of the box (optimized and reference
    kernels; preserving tensors turns the XNNPACK delegate off)."""
    _, path = models[name]
    x = fashion[2][:48]
    graph = export.load_integer_graph(path)
    for epsilon in (0.0, EPSILON[name], 0.01):
        lower, upper, points = _box_points(graph, x, epsilon, rounding,
                                           np.random.default_rng(7))
        bounds = propagate(graph, lower, upper, keep=True, rounding=rounding)
        assert len(bounds.tensors) == len(graph.ops) + 1
        for kernels in ("builtin", "reference"):
            for q in points:
                interpreter, _ = _run(path, kernels, q, preserve=True)
                for t, (lo, hi) in bounds.tensors.items():
                    value = np.array(interpreter.get_tensor(t)).astype(np.int64)
                    value = value.reshape(lo.shape)
                    inside = (lo <= value) & (value <= hi)
                    assert inside.all(), (name, rounding, kernels, epsilon,
                                          graph.tensors[t].name, int((~inside).sum()))


def test_certificates_shrink_with_epsilon_and_nearest_is_tighter(models, fashion):
    _, path = models["cnn3"]
    x, y = fashion[2], fashion[3]
    previous = None
    for epsilon in (0.0, 0.001, 0.002, 0.004, 0.01):
        loose = export.verify_tflite(path, x, y, epsilon, rounding="floor_ceil")
        tight = export.verify_tflite(path, x, y, epsilon, rounding="nearest")
        assert np.all(tight.certified >= loose.certified)
        assert np.all(tight.output_lower >= loose.output_lower)
        assert np.all(tight.output_upper <= loose.output_upper)
        if previous is not None:
            assert np.all(loose.certified <= previous)  # boxes grow with epsilon
        previous = loose.certified
        if epsilon == 0.0:
            # At epsilon 0 the "nearest" box is the quantized point (bar ties).
            assert tight.certified_accuracy >= tight.clean_accuracy - 0.02
    assert previous.mean() < loose.clean_accuracy


def test_folding_the_last_dense_layer_certifies_more(models, fashion):
    """The folded margin of the final FULLY_CONNECTED certifies samples the output
    intervals alone do not (the soundness tests cover those samples too)."""
    _, path = models["cnn3"]
    graph = export.load_integer_graph(path)
    assert final_fully_connected(graph) is graph.ops[-1]
    x, y = fashion[2][:96], fashion[3][:96]
    lower, upper = input_interval(graph, x, EPSILON["cnn3"], (0.0, 1.0))
    bounds = propagate(graph, lower, upper)
    intervals_only, _ = certified_from_bounds(bounds.lower, bounds.upper, y)
    folded = certify_propagation(graph, bounds, y)
    assert np.all(folded >= intervals_only)
    assert folded.sum() > intervals_only.sum()


def _tail_model(path, op, folder):
    """The file cut to the ops from `op` on, with `op`'s first input as the graph input:
    lets the interpreter run the last op on inputs chosen inside its input bounds."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(open(path, "rb").read()), 0)
    subgraph = model.subgraphs[0]
    subgraph.operators = subgraph.operators[op.index:]
    subgraph.inputs = np.array([op.inputs[0]], np.int32)
    model.signatureDefs = []
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = folder / f"tail_{op.index}.tflite"
    out.write_bytes(bytes(builder.Output()))
    return str(out)


def _pair_rows(pairs, labels):
    """(sample, label, other class) for every certified pair with j != y."""
    rows = [(b, labels[b], j) for b, j in zip(*np.nonzero(pairs)) if j != labels[b]]
    return np.array(rows, np.int64).reshape(-1, 3)


def _assert_pairs_hold(outputs, rows):
    y_out = outputs[np.arange(len(rows)), rows[:, 1]]
    j_out = outputs[np.arange(len(rows)), rows[:, 2]]
    before = rows[:, 2] < rows[:, 1]
    assert np.all(np.where(before, y_out > j_out, y_out >= j_out))


@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
def test_folded_margins_hold_at_their_worst_inputs(models, fashion, tmp_path, rounding):
    """For every pair (y, j) the folded last layer certifies, the interpreter's last
    FULLY_CONNECTED, fed the corner of its input bounds that minimizes M_y acc_y -
    M_j acc_j, still ranks y first (y > j for j < y, y >= j for j > y)."""
    _, path = models["cnn3"]
    graph = export.load_integer_graph(path)
    fc = final_fully_connected(graph)
    x, y = fashion[2], fashion[3]
    lower, upper = input_interval(graph, x, EPSILON["cnn3"], (0.0, 1.0), rounding)
    bounds = propagate(graph, lower, upper, rounding=rounding)
    before = np.arange(10)[None, :] < y[:, None]
    pairs = folded_pairs(graph, bounds, y, before, np.arange(len(y)))
    rows = _pair_rows(pairs, y)
    assert len(rows) > 100
    w = graph.tensors[fc.inputs[1]]
    s_in = float(graph.tensors[fc.inputs[0]].scale[0])
    multiplier = s_in * w.scale.astype(np.float64) / float(graph.tensors[fc.outputs[0]].scale[0])
    scaled = multiplier[:, None] * w.data.astype(np.float64)
    direction = scaled[rows[:, 1]] - scaled[rows[:, 2]]
    lo, hi = bounds.fold_input
    corners = np.where(direction > 0, lo[rows[:, 0]], hi[rows[:, 0]]).astype(np.int8)
    tail = _tail_model(path, fc, tmp_path)
    for kernels in ("default", "builtin", "reference"):
        interpreter, _ = make_interpreter(tail, kernels)
        outputs = InterpreterRunner(interpreter)(corners).astype(np.int64)
        _assert_pairs_hold(outputs, rows)


@pytest.mark.parametrize("rounding", ["floor_ceil", "nearest"])
def test_softmax_margins_hold_at_their_worst_inputs(models, fashion, tmp_path, rounding):
    """For every pair the softmax rule certifies, the interpreter's SOFTMAX at the worst
    corner of its input bounds (z_y low, every other class high) ranks y first."""
    _, path = models["softmax"]
    graph = export.load_integer_graph(path)
    x, y = fashion[2], fashion[3]
    lower, upper = input_interval(graph, x, EPSILON["softmax"], (0.0, 1.0), rounding)
    bounds = propagate(graph, lower, upper, rounding=rounding)
    before = np.arange(10)[None, :] < y[:, None]
    pairs = softmax_pairs(graph, bounds, y, before, np.arange(len(y)))
    rows = _pair_rows(pairs, y)
    assert len(rows) > 100
    lo, hi = bounds.softmax_input
    corners = hi[rows[:, 0]].copy()
    corners[np.arange(len(rows)), rows[:, 1]] = lo[rows[:, 0], rows[:, 1]]
    tail = _tail_model(path, graph.softmax, tmp_path)
    for kernels in ("default", "builtin", "reference"):
        interpreter, _ = make_interpreter(tail, kernels)
        outputs = InterpreterRunner(interpreter)(corners.astype(np.int8))
        _assert_pairs_hold(outputs.astype(np.int64), rows)


# ------------------------------------------------------------------------------ units


def test_requantization_by_hand():
    # [-1000, 2500] * 0.01 = [-10, 25], + zp 5 -> [-5, 30]; ReLU clamps at zp.
    lower, upper = integer_intervals.requantize_interval(
        np.array([-1000]), np.array([2500]), 0.01, 5, -128, 127)
    assert (lower[0], upper[0]) == (-5, 30)
    lower, upper = integer_intervals.requantize_interval(
        np.array([-1000]), np.array([2500]), 0.01, 5, 5, 127)
    assert (lower[0], upper[0]) == (5, 30)
    # 7 * 0.3 = 2.1: floor/ceil -> [2, 3]; round-to-nearest kernels can only give 2.
    for rounding, expected in (("floor_ceil", (2, 3)), ("nearest", (2, 2))):
        lower, upper = integer_intervals.requantize_interval(
            np.array([7]), np.array([7]), 0.3, 0, -128, 127, rounding=rounding)
        assert (lower[0], upper[0]) == expected
    # Saturation at 127, and accumulators beyond int32 give the whole range.
    lower, upper = integer_intervals.requantize_interval(
        np.array([10**6]), np.array([10**6]), 0.01, 0, -128, 127)
    assert (lower[0], upper[0]) == (127, 127)
    lower, upper = integer_intervals.requantize_interval(
        np.array([0]), np.array([2**31]), 1e-9, 0, -128, 127)
    assert (lower[0], upper[0]) == (-128, 127)
    # TFLite's QuantizeMultiplier: 0.5 = 2**30 * 2**(0 - 31); 0.3 ~ q * 2**(-1 - 31).
    q, shift = quantize_multiplier(np.array([0.5, 0.3]))
    assert q.tolist() == [2**30, round(0.6 * 2**31)] and shift.tolist() == [0, -1]
    # Ties. M = 0.5 needs no shift: one rounding (SaturatingRoundingDoublingHighMul,
    # halves up), the int64 version too; XNNPACK rounds halves to even.
    x = np.array([3, -3, 5, -5])  # 1.5, -1.5, 2.5, -2.5
    q, shift = quantize_multiplier(0.5)
    assert multiply_by_quantized_multiplier(x, q, shift, "double").tolist() == [2, -1, 3, -2]
    assert multiply_by_quantized_multiplier(x, q, shift, "single").tolist() == [2, -1, 3, -2]
    point = integer_simulation.requantize_exact(x, 0.5, 0, -128, 127, method="xnnpack",
                                                multiplier32=np.float32(0.5))
    assert point.tolist() == [2, -2, 2, -2]
    # M = 0.25: a right shift, whose rounding is halves away from zero in TFLite's
    # RoundingDivideByPOT and halves up in ruy's.
    q, shift = quantize_multiplier(0.25)
    x = np.array([6, -6, 10, -10])  # 1.5, -1.5, 2.5, -2.5
    assert multiply_by_quantized_multiplier(x, q, shift, "double").tolist() == [2, -2, 3, -3]
    assert multiply_by_quantized_multiplier(x, q, shift, "double_up").tolist() == [2, -1, 3, -2]
    assert multiply_by_quantized_multiplier(x, q, shift, "single").tolist() == [2, -1, 3, -2]
    # Two-step rounding: 0.5 + 2**(shift - 1) at most.
    for value in range(-3000, 3000, 7):
        v = value * 0.0123
        q, shift = quantize_multiplier(0.0123)
        r = multiply_by_quantized_multiplier(np.array([value]), q, shift, "double")[0]
        assert abs(r - v) <= fixed_point_error(shift) + 1e-6 * abs(v)
    assert fixed_point_error(-3) == 0.5 + 2.0**-4 and fixed_point_error(0) == 0.5


def test_margins_treat_ties_like_the_first_maximum_argmax():
    # Class 1 vs class 0 tied: np.argmax picks class 0, so label 1 is not certified;
    # label 0 vs class 1 tied: arg-max still picks 0, certified.
    lower = np.array([[5, 5, 3], [5, 5, 3], [4, 5, 5], [4, 6, 5]])
    upper = lower.copy()
    labels = np.array([1, 0, 1, 1])
    certified, _ = certified_from_bounds(lower, upper, labels)
    assert certified.tolist() == [False, True, True, True]
    assert [np.argmax(row) == label for row, label in zip(lower, labels)] == certified.tolist()
    wide = upper + np.array([[0, 0, 2]] * 4)  # class 2 may now exceed class y
    assert certified_from_bounds(lower, wide, labels)[0].tolist() == [False, True, False,
                                                                       False]


def test_softmax_ties_do_not_certify(models):
    """Equal softmax inputs give equal int8 probabilities: the lower class index wins."""
    graph = export.load_integer_graph(models["softmax"][1])
    op = graph.softmax
    s_in = float(graph.tensors[op.inputs[0]].scale[0])
    z = np.full((2, 10), -128, np.int64)
    z[:, :2] = 100
    probabilities = softmax_reference(z, s_in, 1.0, 1 / 256, -128)
    assert probabilities[0, 0] == probabilities[0, 1] > -128
    result = Propagation(probabilities, probabilities, {}, softmax_input=(z, z))
    assert certify_propagation(graph, result, np.array([0, 1])).tolist() == [True, False]
    z[1, 1] = 101  # class 1 now strictly larger at every point of the (degenerate) box
    probabilities = softmax_reference(z, s_in, 1.0, 1 / 256, -128)
    result = Propagation(probabilities, probabilities, {}, softmax_input=(z, z))
    strict = probabilities[1, 1] > probabilities[1, 0]
    assert certify_propagation(graph, result, np.array([0, 1]))[1] == strict


# ------------------------------------------------------------------------------ errors


def test_corrupt_missing_and_truncated_files(models, fashion, tmp_path):
    x, y = fashion[2][:4], fashion[3][:4]
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        export.verify_tflite(tmp_path / "missing.tflite", x, y, 0.01)
    random_bytes = tmp_path / "random.tflite"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="random.tflite.*not a valid TFLite model.*TFL3"):
        export.verify_tflite(random_bytes, x, y, 0.01)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.tflite"):
        export.verify_tflite(empty, x, y, 0.01)
    content = open(models["cnn3"][1], "rb").read()
    for size in (12, len(content) // 3, len(content) // 2, len(content) - 8, len(content) - 1):
        truncated = tmp_path / "truncated.tflite"
        truncated.write_bytes(content[:size])
        with pytest.raises(ValueError, match="truncated.tflite.*(corrupt or truncated|TFL3)"):
            export.verify_tflite(truncated, x, y, 0.01)


@pytest.mark.parametrize("layer, op", [
    (lambda: layers.Dense(8, activation="tanh"), "TANH"),
    (layers.LayerNormalization, "MUL"),
])
def test_unsupported_ops_are_named(fashion, tmp_path, layer, op):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(8),
                            layer(), layers.Dense(10)])
    path = export.to_tflite(net, tmp_path / "unsupported.tflite", fashion[0][:50])
    with pytest.raises(export.UnsupportedOperatorError, match=op) as info:
        export.verify_tflite(path, fashion[2][:4], fashion[3][:4], 0.01)
    assert "Supported: CONV_2D" in str(info.value) and "unsupported.tflite" in str(info.value)


def test_verify_checks_its_arguments(models, fashion):
    _, path = models["cnn3"]
    x, y = fashion[2][:4], fashion[3][:4]
    with pytest.raises(ValueError, match="expects"):
        export.verify_tflite(path, x[:, :20], y, 0.01)
    with pytest.raises(ValueError, match="Labels must lie"):
        export.verify_tflite(path, x, y + 10, 0.01)
    with pytest.raises(ValueError, match="epsilon"):
        export.verify_tflite(path, x, y, -1.0)
    with pytest.raises(ValueError, match="kernels"):
        export.verify_tflite(path, x, y, 0.01, kernels="gpu")
    with pytest.raises(ValueError, match="rounding"):
        export.verify_tflite(path, x, y, 0.01, rounding="up")


def test_float_interface_model(models, fashion, tmp_path):
    """A full-integer model with float input/output (QUANTIZE first, DEQUANTIZE last)."""
    import tempfile

    net, _ = models["cnn3"]
    with tempfile.TemporaryDirectory() as saved:
        net.export(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        samples = fashion[0][:50]
        converter.representative_dataset = lambda: ([s[None]] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            content = converter.convert()
    path = tmp_path / "float_io.tflite"
    path.write_bytes(content)
    graph = export.load_integer_graph(path)
    assert graph.float_input and graph.logits != graph.output
    x, y = fashion[2][:96], fashion[3][:96]
    result = export.verify_tflite(path, x, y, EPSILON["cnn3"])
    assert result.simulation_agreement == 1.0
    assert np.all(result.predicted[result.certified] == y[result.certified])
    assert result.certified.any()
