"""Reads a `.tflite` file into an `IntegerGraph`: its int8 ops, weights and scales.

The flatbuffer is parsed with the TFLite schema that ships with `ai_edge_litert` (or
TensorFlow), so everything the verifier uses (op codes, fused activations, paddings,
strides, int8 weights, int32 biases, per-tensor and per-channel scales) is read from the
file itself, exactly as the interpreter reads it. Tensor indices are those of the
interpreter (`get_tensor_details()`), subgraph 0.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from cactus_keras import extras
from cactus_keras.int8.fixed_point import ACTIVATION_NAMES, UnsupportedOperatorError  # noqa: F401 (re-export)

try:  # The schema module of the LiteRT package; TensorFlow ships the same file.
    from ai_edge_litert import schema_py_generated as schema
except ImportError:
    try:
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:
        # Without the `tensorflow` extra, `cactus_keras.export` says which to install.
        extras.require("ai_edge_litert", "cactus_keras.export (TFLite export and verification)")

OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.FLOAT64: np.float64,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.BOOL: np.bool_,
}

# Ops on the int8 data path the verifier propagates integer bounds through.
DATA_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "MEAN",
    "CONCATENATION",
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "RELU",
    "RELU6",
    "RELU_N1_TO_1",
    "QUANTIZE",
    "DEQUANTIZE",
    "SOFTMAX",
)
# Ops that only compute int32 shapes for a RESHAPE (Flatten with a dynamic batch
# converts to SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE): skipped, the static shapes of
# the file are used instead.
SHAPE_OPS = (
    "SHAPE",
    "STRIDED_SLICE",
    "PACK",
    "CONCATENATION",
    "GATHER",
    "SLICE",
    "CAST",
    "REDUCE_PROD",
    "MUL",
    "ADD",
    "SUB",
    "FLOOR_DIV",
    "SQUEEZE",
    "EXPAND_DIMS",
    "RESHAPE",
    "FILL",
)
# Ops after which a FULLY_CONNECTED result still is the logits, element for element.
COPY_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")
SUPPORTED_SUMMARY = (
    "CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, "
    "CONCATENATION, RESHAPE/SQUEEZE/EXPAND_DIMS, RELU/RELU6/RELU_N1_TO_1, int8 QUANTIZE "
    "(requantization, or float->int8 as the first op), DEQUANTIZE as the last op, SOFTMAX as "
    "the last int8 op, and the int32 shape ops of Flatten (SHAPE, STRIDED_SLICE, PACK, ...)"
)


class TFLiteFormatError(ValueError):
    """The file is not a readable TFLite flatbuffer, or not a full-integer int8 model."""


@dataclasses.dataclass
class Tensor:
    """One tensor of the file. `shape` is the static shape (batch 1); `data` holds the
    values of constant tensors (weights, biases, axes) and is None for activations."""

    index: int
    name: str
    shape: tuple
    type: str
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dimension: int
    data: np.ndarray | None

    @property
    def is_constant(self):
        return self.data is not None

    @property
    def quantized(self):
        return self.scale is not None and self.scale.size > 0


@dataclasses.dataclass
class Op:
    index: int
    name: str
    inputs: tuple
    outputs: tuple
    options: object


@dataclasses.dataclass
class IntegerGraph:
    """The int8 graph of a `.tflite` file, ready for integer bound propagation.

    Attributes:
        path: the file.
        tensors: every tensor of subgraph 0, by interpreter index.
        ops: the data-path ops in execution order (shape-only ops removed; a first
            float->int8 QUANTIZE and a last DEQUANTIZE are folded into `input`/`logits`).
        input: index of the graph's input tensor (what the interpreter is fed).
        entry: index of the int8 tensor the bounds start from (`input`, or the output of
            the first QUANTIZE when the model takes float inputs).
        output: index of the graph's output tensor.
        logits: index of the int8 tensor whose arg-max is the prediction (`output`, or
            the input of a final DEQUANTIZE).
        softmax: the final SOFTMAX op, or None; bounds then end at its input.

    Example:

    ```python
    cactus_keras.export.to_tflite(net, "model_int8.tflite", representative_data=x_train[:100])
    graph = cactus_keras.export.load_integer_graph("model_int8.tflite")   # an IntegerGraph
    print([op.name for op in graph.ops])      # e.g. CONV_2D, CONV_2D, FULLY_CONNECTED
    print(graph.tensors[graph.entry].shape, graph.tensors[graph.entry].scale)
    ```
    """

    path: str
    tensors: list
    ops: list
    input: int
    entry: int
    output: int
    logits: int
    softmax: Op | None

    @property
    def input_tensor(self):
        return self.tensors[self.input]

    @property
    def entry_tensor(self):
        return self.tensors[self.entry]

    @property
    def num_classes(self):
        return int(np.prod(self.tensors[self.logits].shape))

    @property
    def float_input(self):
        return self.input != self.entry

    def op_names(self):
        return [op.name for op in self.ops]


def final_fully_connected(graph):
    """The FULLY_CONNECTED whose output reaches the logits only through copies (so its
    exact accumulators can be folded into the margins), or None."""
    if graph.softmax is not None:
        return None
    producer = {t: op for op in graph.ops for t in op.outputs}
    t = graph.logits
    while t in producer and producer[t].name in COPY_OPS:
        t = producer[t].inputs[0]
    op = producer.get(t)
    if op is None or op.name != "FULLY_CONNECTED":
        return None
    if int(np.prod(graph.tensors[op.outputs[0]].shape)) != graph.num_classes:
        return None
    return op


def _read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"TFLite file '{path}' does not exist.")
    if os.path.isdir(path):
        raise FileNotFoundError(
            f"'{path}' is a directory; pass the path of a .tflite file (for example the "
            "one cactus_keras.export.to_tflite wrote)."
        )
    with open(path, "rb") as f:
        return path, f.read()


def _not_tflite(path, content, reason):
    return TFLiteFormatError(
        f"'{path}' is not a valid TFLite model ({len(content)} bytes): {reason}. Pass a "
        ".tflite file written by cactus_keras.export.to_tflite or a TFLite converter; a "
        "truncated or overwritten file must be exported again."
    )


def _buffer(model, content, index, path):
    if index <= 0 or index >= len(model.buffers):
        return None
    buffer = model.buffers[index]
    if buffer.offset and buffer.offset > 1:  # data stored after the flatbuffer (>2 GB models)
        end = buffer.offset + buffer.size
        if end > len(content):
            raise _not_tflite(path, content, f"buffer {index} ends at byte {end}, past the end "
                              "of the file (truncated?)")
        return np.frombuffer(content, np.uint8, buffer.size, buffer.offset)
    if buffer.data is None or len(buffer.data) == 0:
        return None
    return np.asarray(buffer.data, np.uint8)


def _tensor(model, content, index, t, path):
    type_name = TYPE_NAMES.get(t.type, f"type {t.type}")
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    raw = _buffer(model, content, t.buffer, path)
    data = None
    if raw is not None:
        dtype = NUMPY_TYPES.get(t.type)
        if dtype is None:
            data = raw  # int4 and other packed types: kept raw, refused where used
        else:
            count = int(np.prod(shape)) if shape else 1
            if raw.size != count * np.dtype(dtype).itemsize:
                raise _not_tflite(path, content, f"constant tensor {index} ('{_name(t)}') has "
                                  f"{raw.size} bytes for shape {shape} of {type_name}")
            data = np.frombuffer(raw.tobytes(), dtype=np.dtype(dtype).newbyteorder("<"))
            data = data.astype(dtype).reshape(shape)
    scale = zero_point = None
    dim = 0
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale) > 0:
        scale = np.asarray(q.scale, np.float32).reshape(-1)
        zp = q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else [0] * scale.size
        zero_point = np.asarray(zp, np.int64).reshape(-1)
        dim = int(q.quantizedDimension)
    return Tensor(index, _name(t), shape, type_name, scale, zero_point, dim, data)


def _name(t):
    name = t.name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")


def _op_name(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    value = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
    name = OP_NAMES.get(value, f"BUILTIN_{value}")
    if name == "CUSTOM":
        custom = code.customCode
        custom = custom.decode() if isinstance(custom, bytes) else custom
        name = f"CUSTOM({custom})"
    return name


def read_model(path):
    """Parses `path`; returns (path, ModelT, tensors, ops, graph inputs, graph outputs)
    of subgraph 0, or raises FileNotFoundError / TFLiteFormatError naming the file."""
    path, content = _read(path)
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise _not_tflite(path, content, "it does not have the TFLite flatbuffer file "
                          "identifier 'TFL3' at bytes 4..8")
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
        graph = model.subgraphs[0]
        tensors = [_tensor(model, content, i, t, path) for i, t in enumerate(graph.tensors)]
        ops = []
        for i, op in enumerate(graph.operators or []):
            inputs = tuple(int(v) for v in (op.inputs if op.inputs is not None else ()))
            outputs = tuple(int(v) for v in (op.outputs if op.outputs is not None else ()))
            for v in inputs + outputs:
                if v >= len(tensors) or v < -1:
                    raise ValueError(f"op {i} refers to tensor {v} of {len(tensors)}")
            ops.append(Op(i, _op_name(model, op), inputs, outputs, op.builtinOptions))
        graph_inputs = [int(v) for v in graph.inputs]
        graph_outputs = [int(v) for v in graph.outputs]
    except TFLiteFormatError:
        raise
    except Exception as error:  # the flatbuffer reader raises anything on corrupt data
        raise _not_tflite(path, content, "its flatbuffer could not be parsed (corrupt or "
                          f"truncated: {type(error).__name__}: {error})") from None
    if not ops:
        raise _not_tflite(path, content, "it has no operators")
    return path, model, tensors, ops, graph_inputs, graph_outputs


def load_integer_graph(path):
    """Reads `path` and checks that it is a full-integer int8 model the verifier supports.

    Raises:
        FileNotFoundError: no such file.
        TFLiteFormatError (a ValueError): not a TFLite flatbuffer (random bytes, truncated,
            corrupt), or not a full-integer int8 model (float or dynamic-range model).
        UnsupportedOperatorError (a ValueError): ops without an integer bound rule; the
            message names them and lists the supported ops.

    Example:

    ```python
    cactus_keras.export.to_tflite(net, "model_int8.tflite", representative_data=x_train[:100])
    graph = cactus_keras.export.load_integer_graph("model_int8.tflite")
    entry = graph.tensors[graph.entry]     # the int8 tensor the bounds start from
    print(entry.shape, entry.type, entry.scale, entry.zero_point)
    ```
    """
    path, model, tensors, ops, graph_inputs, graph_outputs = read_model(path)
    if len(model.subgraphs) != 1:
        raise TFLiteFormatError(
            f"'{path}' has {len(model.subgraphs)} subgraphs (control flow); the integer "
            "verifier supports single-subgraph feed-forward models."
        )
    if len(graph_inputs) != 1 or len(graph_outputs) != 1:
        raise TFLiteFormatError(
            f"'{path}' has {len(graph_inputs)} inputs and {len(graph_outputs)} outputs; the "
            "verifier supports classifiers with one input and one output."
        )
    consumers = {}
    for op in ops:
        for position, t in enumerate(op.inputs):
            if t >= 0:
                consumers.setdefault(t, []).append((op, position))
    producer = {t: op for op in ops for t in op.outputs}

    def describe(t):
        return f"tensor {t} '{tensors[t].name}' ({tensors[t].type})"

    def not_int8(reason):
        return TFLiteFormatError(
            f"'{path}' is not a full-integer int8 model: {reason}. verify_tflite certifies "
            "the int8 model as it runs; export it with "
            "cactus_keras.export.to_tflite(..., int8=True) (full-integer quantization with "
            "a representative dataset)."
        )

    # Where the int8 data path starts: the input, or a float->int8 QUANTIZE right after it.
    entry = graph_inputs[0]
    skipped = set()
    input_tensor = tensors[entry]
    if input_tensor.type == "FLOAT32":
        users = consumers.get(entry, [])
        if len(users) != 1 or users[0][0].name != "QUANTIZE" or \
                tensors[users[0][0].outputs[0]].type != "INT8":
            first = users[0][0].name if users else "nothing"
            raise not_int8(f"its input {describe(entry)} feeds {first} directly (a float or "
                           "dynamic-range model)")
        skipped.add(users[0][0].index)
        entry = users[0][0].outputs[0]
    elif input_tensor.type != "INT8":
        raise not_int8(f"its input {describe(entry)} is not int8 or float32")
    if not tensors[entry].quantized:
        raise not_int8(f"its input {describe(entry)} has no quantization parameters")
    if tensors[entry].shape[:1] != (1,):
        raise TFLiteFormatError(
            f"'{path}': the input has static shape {tensors[entry].shape}; the verifier needs "
            "batch size 1 in the file (a dynamic batch, as Keras exports it, is fine)."
        )

    # Where it ends: the output, or the int8 input of a final DEQUANTIZE.
    output = graph_outputs[0]
    logits = output
    if tensors[output].type == "FLOAT32":
        last = producer.get(output)
        if last is None or last.name != "DEQUANTIZE" or tensors[last.inputs[0]].type != "INT8":
            raise not_int8(f"its output {describe(output)} is float32"
                           + (f", computed by {last.name}" if last is not None else ""))
        skipped.add(last.index)
        logits = last.inputs[0]
    elif tensors[output].type != "INT8":
        raise not_int8(f"its output {describe(output)} is not int8")

    # Shape-only ops: int32/int64 outputs read only by other shape ops or as RESHAPE's
    # shape operand. Walk backwards so chains (SHAPE -> STRIDED_SLICE -> PACK) resolve.
    shape_tensors = set()
    for op in reversed(ops):
        if op.index in skipped:
            continue
        if op.name == "RESHAPE" and len(op.inputs) > 1 and op.inputs[1] >= 0:
            shape_tensors.add(op.inputs[1])
        outputs_are_shapes = op.outputs and all(
            t in shape_tensors and tensors[t].type in ("INT32", "INT64") for t in op.outputs)
        if outputs_are_shapes and op.name in SHAPE_OPS:
            skipped.add(op.index)
            shape_tensors.update(t for t in op.inputs if t >= 0 and tensors[t].type in
                                 ("INT32", "INT64"))
    data_ops = [op for op in ops if op.index not in skipped]

    unsupported = sorted({op.name for op in data_ops if op.name not in DATA_OPS})
    if unsupported:
        where = ", ".join(f"op {op.index} {op.name}" for op in data_ops
                          if op.name in unsupported)
        raise UnsupportedOperatorError(
            f"'{path}' contains ops the integer verifier does not support: "
            f"{', '.join(unsupported)} ({where}). Supported: {SUPPORTED_SUMMARY}. Remove the "
            "layers that convert to them (for example tanh/sigmoid activations, "
            "LayerNormalization, multiplications) or certify the float Keras model with "
            "cactus_keras.certify."
        )

    softmax = None
    for position, op in enumerate(data_ops):
        if op.name == "SOFTMAX":
            if position != len(data_ops) - 1 or op.outputs[0] != logits:
                raise UnsupportedOperatorError(
                    f"'{path}': SOFTMAX (op {op.index}) is supported only as the last op; it "
                    "is monotone there and the certificate is computed on its input."
                )
            softmax = op
        if op.name == "DEQUANTIZE":
            raise UnsupportedOperatorError(
                f"'{path}': DEQUANTIZE (op {op.index}) inside the model means a float "
                "section; the integer verifier supports DEQUANTIZE only as the last op."
            )
        if op.name == "QUANTIZE" and tensors[op.inputs[0]].type != "INT8":
            raise not_int8(f"op {op.index} QUANTIZE reads {describe(op.inputs[0])}: a float "
                           "section inside the model")
        _check_types(path, op, tensors, shape_tensors, not_int8, describe)
    return IntegerGraph(path, tensors, data_ops, graph_inputs[0], entry, output, logits,
                        softmax)


def _check_types(path, op, tensors, shape_tensors, not_int8, describe):
    for position, t in enumerate(op.inputs):
        if t < 0 or t in shape_tensors:
            continue
        tensor = tensors[t]
        if op.name in ("MEAN",) and position == 1:
            continue  # reduction axes (int32 constant)
        if op.name in ("RESHAPE", "EXPAND_DIMS") and position == 1:
            continue
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and position == 2:
            if tensor.type != "INT32" or tensor.data is None:
                raise not_int8(f"op {op.index} {op.name} has bias {describe(t)}; expected a "
                               "constant int32 bias")
            continue
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and position == 1:
            if tensor.type != "INT8" or tensor.data is None or not tensor.quantized:
                raise not_int8(f"op {op.index} {op.name} has weights {describe(t)}; expected "
                               "constant int8 weights with scales")
            continue
        if tensor.type != "INT8" or not tensor.quantized:
            raise not_int8(f"op {op.index} {op.name} reads {describe(t)}")
        if not np.all(tensor.scale > 0):
            raise TFLiteFormatError(f"'{path}': {describe(t)} has a non-positive scale.")
    for t in op.outputs:
        tensor = tensors[t]
        if tensor.type != "INT8" or not tensor.quantized:
            raise not_int8(f"op {op.index} {op.name} writes {describe(t)}")
        if tensor.scale.size != 1:
            raise TFLiteFormatError(
                f"'{path}': op {op.index} {op.name} writes {describe(t)} with per-channel "
                "activation scales, which the verifier does not support."
            )
