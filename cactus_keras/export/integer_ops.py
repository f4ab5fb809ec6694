"""One rule per int8 TFLite op: what the op computes, written once for intervals and
points.

A rule reads its op's constants from the file once (centred int8 weights, int32 biases,
scales, zero points, multipliers, geometry, the fused activation clamp) and, when
called, maps the values of its input tensors to the value of its output tensor. A
value is a (lower, upper) pair of int64 arrays shaped (batch, *static shape); where the
kernel rounds, the rule asks the arithmetic it is given: `IntervalArithmetic` (sound
bounds under a rounding model, `integer_intervals`) or `KernelSimulation` (the
bit-exact kernels, `integer_simulation`). Exact integer steps (accumulators, window
sums, copies, clamps, maxima) are the same for both.

Example:

```python
rule = integer_rule_for(graph, graph.ops[0])
lower, upper = rule(IntervalArithmetic("floor_ceil"), (x_lower, x_upper))
```
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cactus_keras.int8.fixed_point import (
    INT8_MAX,
    INT8_MIN,
    activation_range,
    add_multipliers,
    mean_multiplier,
    quantize_multiplier,
)
from cactus_keras.export.integer_backend import affine_interval, affine_point
from cactus_keras.export.integer_linear import (
    Convolution,
    DepthwiseConvolution,
    FullyConnected,
    taps,
    window,
)
from cactus_keras.export.model_file import UnsupportedOperatorError


@dataclasses.dataclass
class Requantization:
    """How an op maps int32 accumulators (or centred int8 codes) to its int8 output:
    the real multiplier M (per output channel, float64), its fixed-point form, XNNPACK's
    float32 multiplier, the output zero point and the activation clamp."""

    op_name: str
    multiplier: np.ndarray
    zero_point: int
    activation: tuple
    multiplier32: np.ndarray | None = None
    quantized: tuple = None

    def __post_init__(self):
        self.multiplier = np.asarray(self.multiplier, np.float64)
        self.quantized = quantize_multiplier(self.multiplier)


@dataclasses.dataclass
class AddQuantization:
    s_a: np.float64
    zp_a: int
    s_b: np.float64
    zp_b: int
    s_out: np.float64
    zp_out: int
    activation: tuple
    multipliers: tuple = None

    def __post_init__(self):
        self.multipliers = add_multipliers(self.s_a, self.s_b, self.s_out)


@dataclasses.dataclass
class MeanQuantization:
    s_in: np.float64
    zp_in: int
    s_out: np.float64
    zp_out: int
    count: int
    quantized: tuple = None
    legacy_bias: int = 0

    def __post_init__(self):
        self.quantized = mean_multiplier(self.s_in / self.s_out, self.count)
        # The older kernels' output offset: trunc(zp_in * s_in / s_out) in float32.
        self.legacy_bias = int(np.float32(self.zp_in) * np.float32(self.s_in)
                               / np.float32(self.s_out))


@dataclasses.dataclass
class SoftmaxQuantization:
    s_in: np.float64
    beta: float
    s_out: np.float64
    zp_out: int


class OpRule:
    """Base of the rules: the op, its tensors and their quantization.

    `inputs`: the tensor indices whose values the rule is called with.
    `narrow_inputs`: whether the rule takes int8 arrays as they come (it computes
    nothing on them that could leave int8); the others are given int64.
    """

    narrow_inputs = False

    def __init__(self, graph, op):
        self.graph = graph
        self.op = op
        self.tensors = graph.tensors
        self.label = f"'{graph.path}' op {op.index} {op.name}"
        self.inputs = (op.inputs[0],)
        self.output = op.outputs[0]

    def quant(self, t):
        tensor = self.tensors[t]
        return np.float64(tensor.scale[0]), int(tensor.zero_point[0])

    def shape(self, t):
        return self.tensors[t].shape

    def activation(self, fused=None):
        s_out, zp_out = self.quant(self.output)
        if fused is None:
            fused = self.op.options.fusedActivationFunction
        return activation_range(fused, s_out, zp_out, self.label)

    def __call__(self, arithmetic, *values):
        raise NotImplementedError


def wide(value):
    """A (lower, upper) value as int64 (a point stays one array)."""
    lower, upper = value
    if lower.dtype == np.int64 and upper.dtype == np.int64:
        return value
    lower = lower.astype(np.int64)
    return (lower, lower) if upper is value[0] else (lower, upper.astype(np.int64))


def _map(fn, value):
    """A monotone elementwise map applied to both ends (once for a point)."""
    lower, upper = value
    out = fn(lower)
    return (out, out) if upper is lower else (out, fn(upper))


class IntegerAffineRule(OpRule):
    """CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: exact int32 accumulators of the
    centred input through the integer linear map, plus the bias, requantized."""

    weight_axis = 0
    narrow_inputs = True  # the fast path casts them itself; the NumPy path widens

    def __init__(self, graph, op):
        super().__init__(graph, op)
        self.weights, self.weight_scale = self.centred_weights(op.inputs[1], self.weight_axis)
        self.channels = self.weights.shape[self.weight_axis]
        self.zp_in = self.quant(op.inputs[0])[1]
        s_in = self.quant(op.inputs[0])[0]
        s_out, zp_out = self.quant(self.output)
        scales = np.broadcast_to(self.weight_scale, (self.channels,))
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            self.bias = self.tensors[op.inputs[2]].data.astype(np.int64).reshape(-1)
        else:
            self.bias = np.zeros(self.channels, np.int64)
        self.requantization = Requantization(
            op.name, s_in * scales / s_out, zp_out, self.activation(),
            multiplier32=(np.float32(s_in) * scales.astype(np.float32)) / np.float32(s_out))

    def centred_weights(self, t, axis):
        """int8 weights minus their zero points (int64), and their scales (float64)."""
        w = self.tensors[t]
        zp = w.zero_point
        if (w.scale.size > 1 or zp.size > 1) and w.quantized_dimension != axis:
            raise UnsupportedOperatorError(
                f"'{self.graph.path}': weights '{w.name}' are quantized per channel along "
                f"axis {w.quantized_dimension}; expected the output-channel axis {axis}.")
        if w.scale.size not in (1, w.data.shape[axis]):
            raise UnsupportedOperatorError(
                f"'{self.graph.path}': weights '{w.name}' have {w.scale.size} scales for "
                f"{w.data.shape[axis]} channels.")
        shape = [1] * w.data.ndim
        shape[axis] = -1
        centred = w.data.astype(np.int64) - (zp.reshape(shape) if zp.size > 1 else zp[0])
        return centred, w.scale.astype(np.float64)

    def geometry(self, kh, kw):
        o = self.op.options
        dh = getattr(o, "dilationHFactor", 1) or 1
        dw = getattr(o, "dilationWFactor", 1) or 1
        in_shape = self.shape(self.op.inputs[0])
        oh, top, bottom = window(in_shape[1], kh, o.strideH, dh, o.padding, self.label)
        ow, left, right = window(in_shape[2], kw, o.strideW, dw, o.padding, self.label)
        return (o.strideH, o.strideW), (dh, dw), (oh, ow), ((top, bottom), (left, right))

    def layout(self, value):
        """The input as the linear map takes it."""
        return value

    def __call__(self, arithmetic, value):
        # The same integers in fewer, multi-threaded passes where the backend allows.
        if not arithmetic.point and value[1] is not value[0]:
            bounds = affine_interval(self, arithmetic.rounding, value)
            if bounds is not None:
                return bounds
        elif arithmetic.point and getattr(arithmetic, "kernels", None):
            codes = affine_point(self, arithmetic.kernels, value)
            if codes is not None:
                return codes
        value = wide(value)
        batch = value[0].shape[0]
        # q - zp lies in [-255, 255]: exact in float32, which the linear maps compute in.
        centred = _map(lambda v: np.subtract(self.layout(v), self.zp_in, dtype=np.float32),
                       value)
        accumulator = arithmetic.accumulate(self.linear, *centred)

        def add_bias(a):
            # Channels last, so per-channel multipliers broadcast. In place: the
            # accumulator is a fresh array of its own.
            a = a.reshape(batch, -1, self.channels)
            a += self.bias
            return a

        accumulator = _map(add_bias, accumulator)
        return arithmetic.requantize(accumulator, self.requantization)


class Conv2DRule(IntegerAffineRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        shape = self.shape(op.inputs[0])
        if len(shape) != 4:
            raise UnsupportedOperatorError(f"{self.label}: input of rank {len(shape)}.")
        out_channels, kh, kw, channels = self.weights.shape
        if channels != shape[3]:
            raise UnsupportedOperatorError(f"{self.label}: grouped convolutions are not "
                                           "supported.")
        self.linear = Convolution(self.weights, *self.geometry(kh, kw), self.label)
        self.linear.check(510)

    def layout(self, value):
        return value.reshape((-1,) + self.shape(self.op.inputs[0])[1:])


class DepthwiseConv2DRule(IntegerAffineRule):
    weight_axis = 3

    def __init__(self, graph, op):
        super().__init__(graph, op)
        shape = self.shape(op.inputs[0])
        _, kh, kw, out_channels = self.weights.shape
        channels = shape[3]
        if out_channels % channels:
            raise UnsupportedOperatorError(f"{self.label}: {out_channels} output channels "
                                           f"for {channels} input channels.")
        self.linear = DepthwiseConvolution(self.weights, out_channels // channels,
                                           *self.geometry(kh, kw), self.label)
        self.linear.check(510)

    def layout(self, value):
        return value.reshape((-1,) + self.shape(self.op.inputs[0])[1:])


class FullyConnectedRule(IntegerAffineRule):
    def __init__(self, graph, op):
        if getattr(op.options, "weightsFormat", 0) not in (0, None):
            raise UnsupportedOperatorError(
                f"'{graph.path}' op {op.index} {op.name}: shuffled weights format.")
        super().__init__(graph, op)
        self.depth = self.weights.shape[1]
        self.linear = FullyConnected(self.weights.T, self.label)
        self.linear.check(510)

    def layout(self, value):
        return value.reshape(value.shape[0], -1, self.depth)


def _broadcast(value, shape, rank):
    batch = value.shape[0]
    return value.reshape((batch,) + (1,) * (rank - len(shape)) + shape)


class AddRule(OpRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        self.inputs = tuple(op.inputs[:2])
        a, b = self.inputs
        self.rank = max(len(self.shape(a)), len(self.shape(b)))
        self.quantization = AddQuantization(*self.quant(a), *self.quant(b),
                                            *self.quant(self.output), self.activation())

    def __call__(self, arithmetic, a, b):
        ta, tb = self.inputs
        a = _map(lambda v: _broadcast(v, self.shape(ta), self.rank), a)
        b = _map(lambda v: _broadcast(v, self.shape(tb), self.rank), b)
        return arithmetic.add(a, b, self.quantization)


class PoolRule(OpRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        shape = self.shape(op.inputs[0])
        o = op.options
        kh, kw = o.filterHeight, o.filterWidth
        oh, top, bottom = window(shape[1], kh, o.strideH, 1, o.padding, self.label)
        ow, left, right = window(shape[2], kw, o.strideW, 1, o.padding, self.label)
        if self.quant(op.inputs[0]) != self.quant(self.output):
            raise UnsupportedOperatorError(
                f"{self.label}: input and output quantization differ (TFLite requires "
                "them equal for int8 pooling).")
        self.act = self.activation()
        self.window = (kh, kw, (o.strideH, o.strideW), (1, 1), (oh, ow),
                       ((top, bottom), (left, right)))
        self.in_shape = shape[1:]


class MaxPool2DRule(PoolRule):
    def __call__(self, arithmetic, value):
        fill = np.iinfo(np.int64).min // 4

        def pool(x):
            best = None
            for _, _, view in taps(x.reshape((-1,) + self.in_shape), *self.window, fill):
                best = view.copy() if best is None else np.maximum(best, view)
            return np.clip(best, *self.act)

        return _map(pool, value)


class AveragePool2DRule(PoolRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        # Windows at a SAME border count only the input pixels they cover.
        self.count = self.window_sum(np.ones((1,) + self.in_shape[:2] + (1,), np.int64))

    def window_sum(self, x):
        total = None
        for _, _, view in taps(x, *self.window, 0):
            total = view.copy() if total is None else total + view
        return total

    def __call__(self, arithmetic, value):
        sums = _map(lambda x: self.window_sum(x.reshape((-1,) + self.in_shape)), value)
        averages = arithmetic.average(sums, self.count)
        return _map(lambda x: np.clip(x, *self.act), averages)


class MeanRule(OpRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        shape = self.shape(op.inputs[0])
        axes_tensor = self.tensors[op.inputs[1]]
        if axes_tensor.data is None:
            raise UnsupportedOperatorError(f"{self.label}: axes are not constant.")
        axes = sorted({int(a) % len(shape) for a in np.asarray(axes_tensor.data).reshape(-1)})
        self.axes = tuple(a + 1 for a in axes)  # batch first
        count = int(np.prod([shape[a] for a in axes]))
        self.quantization = MeanQuantization(*self.quant(op.inputs[0]),
                                             *self.quant(self.output), count)

    def __call__(self, arithmetic, value):
        sums = _map(lambda x: x.sum(axis=self.axes), value)
        return arithmetic.mean(sums, self.quantization)


class ConcatenationRule(OpRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        self.inputs = tuple(op.inputs)
        self.rank = len(self.shape(self.output))
        self.axis = int(op.options.axis) % self.rank + 1
        self.out_quant = self.quant(self.output)
        self.act = self.activation()

    def __call__(self, arithmetic, *values):
        s_out, zp_out = self.out_quant
        parts = []
        for t, value in zip(self.inputs, values):
            value = _map(lambda v, t=t: _broadcast(v, self.shape(t), self.rank), value)
            s_in, zp_in = self.quant(t)
            if (s_in, zp_in) != (s_out, zp_out):
                # The kernel computes round(q * m - zp_in * m) in float32.
                value = arithmetic.rescale(value, zp_in, s_in / s_out, zp_out)
            parts.append(_map(lambda v: np.clip(v, *self.act), value))
        lower = np.concatenate([p[0] for p in parts], self.axis)
        if all(p[1] is p[0] for p in parts):
            return lower, lower
        return lower, np.concatenate([p[1] for p in parts], self.axis)


class CopyRule(OpRule):
    """RESHAPE, SQUEEZE, EXPAND_DIMS: the same codes in another shape."""

    narrow_inputs = True

    def __call__(self, arithmetic, value):
        return value


class RequantizeRule(OpRule):
    """Standalone RELU, RELU_N1_TO_1, RELU6 and int8 QUANTIZE: the centred input
    requantized to the output scale, clamped to the activation's range."""

    FUSED = {"RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}

    def __init__(self, graph, op):
        super().__init__(graph, op)
        s_in, self.zp_in = self.quant(op.inputs[0])
        s_out, zp_out = self.quant(self.output)
        if op.name in self.FUSED:
            act = self.activation(self.FUSED[op.name])
        else:
            act = (INT8_MIN, INT8_MAX)
        self.requantization = Requantization(op.name, s_in / s_out, zp_out, act)

    def __call__(self, arithmetic, value):
        return arithmetic.requantize(_map(lambda v: v - self.zp_in, value), self.requantization)


class SoftmaxRule(OpRule):
    def __init__(self, graph, op):
        super().__init__(graph, op)
        beta = float(getattr(op.options, "beta", 1.0) or 1.0)
        self.quantization = SoftmaxQuantization(self.quant(op.inputs[0])[0], beta,
                                                *self.quant(self.output))

    def __call__(self, arithmetic, value):
        batch = value[0].shape[0]
        classes = value[0].shape[-1]
        flat = _map(lambda v: v.reshape(-1, classes), value)
        out = arithmetic.softmax(flat, self.quantization)
        return _map(lambda v: v.reshape(batch, -1), out)


RULES = {
    "CONV_2D": Conv2DRule,
    "DEPTHWISE_CONV_2D": DepthwiseConv2DRule,
    "FULLY_CONNECTED": FullyConnectedRule,
    "ADD": AddRule,
    "MAX_POOL_2D": MaxPool2DRule,
    "AVERAGE_POOL_2D": AveragePool2DRule,
    "MEAN": MeanRule,
    "CONCATENATION": ConcatenationRule,
    "RESHAPE": CopyRule,
    "SQUEEZE": CopyRule,
    "EXPAND_DIMS": CopyRule,
    "RELU": RequantizeRule,
    "RELU6": RequantizeRule,
    "RELU_N1_TO_1": RequantizeRule,
    "QUANTIZE": RequantizeRule,
    "SOFTMAX": SoftmaxRule,
}


def integer_rule_for(graph, op):
    """The rule of `op` (an op of `graph.ops`), its constants read."""
    rule = RULES.get(op.name)
    if rule is None:
        raise UnsupportedOperatorError(
            f"'{graph.path}' op {op.index} {op.name}: no integer rule for this op.")
    return rule(graph, op)
