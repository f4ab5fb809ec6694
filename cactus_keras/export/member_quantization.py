"""Writes the activation quantization an `Int8FileQuantization` member trained for into an
int8 `.tflite` file, so that the file is the network the member trained.

The converter calibrates each activation tensor's scale and zero point on the
representative data; a network trained with the int8 file member was trained for the
ranges the member tracked instead. `apply_member_quantization` rewrites the file: the
input tensor and each CONV_2D / FULLY_CONNECTED output get the member's (scale, zero
point), each RESHAPE output its input's, and each int32 bias is requantized to the new
input scale (round(b / (s_in s_w)), from the Keras layer's float bias). Kernels and
their per-channel scales are the converter's (the member quantizes kernels as it does).

Example:

```python
content = apply_member_quantization(content, member, model)
```
"""

from __future__ import annotations

import numpy as np

# TFLite BuiltinOperator codes (schema.fbs).
CONV_2D, FULLY_CONNECTED, RESHAPE = 3, 9, 22
# Ops that only compute the int32 shape of a RESHAPE (a Flatten with a dynamic batch):
# SHAPE, STRIDED_SLICE, PACK. Their tensors are not int8 activations.
SHAPE_OPS = (77, 45, 83)


def _opcode(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _set_quantization(tensor, scale, zero_point):
    tensor.quantization.scale = [float(np.float32(scale))]
    tensor.quantization.zeroPoint = [int(zero_point)]
    tensor.quantization.min = None
    tensor.quantization.max = None


def apply_member_quantization(content, member, model):
    """`content` (the converter's int8 file, bytes) with the activation scales and zero
    points of `member` (an `Int8FileQuantization` of the `CactusModel` `model`)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    quantization = member.tensor_quantization(model)
    steps = [s for s in member.program()[0] if s.kind == "affine"]
    tflite = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(content), 0))
    graph = tflite.subgraphs[0]
    tensors = graph.tensors
    _set_quantization(tensors[graph.inputs[0]], *quantization[0])
    affine = 0
    for op in graph.operators:
        code = _opcode(tflite, op)
        if code in SHAPE_OPS:
            continue
        if code == RESHAPE:
            source = tensors[op.inputs[0]].quantization
            _set_quantization(tensors[op.outputs[0]], source.scale[0], source.zeroPoint[0])
        elif code in (CONV_2D, FULLY_CONNECTED):
            if affine >= len(steps):
                raise ValueError("The int8 file has more CONV_2D/FULLY_CONNECTED ops than "
                                 f"the network has affine layers ({len(steps)}).")
            step = steps[affine]
            affine += 1
            s_in = np.float32(tensors[op.inputs[0]].quantization.scale[0])
            _set_quantization(tensors[op.outputs[0]], *quantization[affine])
            if len(op.inputs) > 2 and op.inputs[2] >= 0 and step.layer.bias is not None:
                s_w = np.asarray(tensors[op.inputs[1]].quantization.scale, np.float32)
                bias_scale = (s_in * s_w).astype(np.float32)
                bias = np.asarray(step.layer.bias.numpy(), np.float32)
                values = np.clip(np.round(bias / bias_scale), -(2**31 - 1), 2**31 - 1)
                bias_tensor = tensors[op.inputs[2]]
                bias_tensor.quantization.scale = [float(v) for v in np.broadcast_to(
                    bias_scale, bias.shape)]
                bias_tensor.quantization.zeroPoint = [0] * len(bias)
                tflite.buffers[bias_tensor.buffer].data = np.frombuffer(
                    values.astype("<i4").tobytes(), np.uint8)
        else:
            name = next((k for k, v in vars(schema.BuiltinOperator).items() if v == code), code)
            raise ValueError(
                f"The int8 file has a {name} op, which the int8_file member does not "
                "model; export the network without `int8_member` (calibrated ranges)."
            )
    if affine != len(steps):
        raise ValueError(f"The int8 file has {affine} CONV_2D/FULLY_CONNECTED ops, the "
                         f"network {len(steps)} affine layers; they must correspond.")
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(tflite.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
