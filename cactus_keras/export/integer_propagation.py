"""Runs the op rules of an int8 graph, in order, on a batch: integer intervals of every
tensor over the input boxes, or the bit-exact simulation of the kernels on points.

`IntegerProgram` reads every op's constants once (`integer_ops`), so one program serves
all the batches of a verification; `propagate` is the one-call form.

Example:

```python
program = IntegerProgram(load_integer_graph("model.tflite"))
bounds = program.run(IntervalArithmetic("floor_ceil"), lower, upper)
points = program.run(KernelSimulation("xnnpack"), q, q)
```
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cactus_keras.export.integer_intervals import DEFAULT_ROUNDING, IntervalArithmetic, check_rounding
from cactus_keras.export.integer_ops import integer_rule_for, wide
from cactus_keras.export.integer_simulation import KernelSimulation, check_kernels
from cactus_keras.export.model_file import UnsupportedOperatorError, final_fully_connected


@dataclasses.dataclass
class Propagation:
    """Bounds of one batch.

    Attributes:
        lower, upper: (batch, classes) int64 bounds of the output codes the interpreter
            takes the arg-max of (the int8 output; after a final SOFTMAX its int8
            probabilities).
        tensors: {tensor index: (lower, upper)} of every int8 tensor when propagated with
            keep=True (shapes (batch, *static shape)), else only the logits.
        softmax_input: (lower, upper) of the input of a final SOFTMAX, else None.
        fold_input: (lower, upper) of the input of a final FULLY_CONNECTED, else None.
    """

    lower: np.ndarray
    upper: np.ndarray
    tensors: dict
    softmax_input: tuple | None = None
    fold_input: tuple | None = None
    rounding: str = DEFAULT_ROUNDING


def _integers(array):
    """int8 or int64: int8 arrays are kept (a quarter of the memory traffic of int64)."""
    array = np.asarray(array)
    return array if array.dtype in (np.int8, np.int64) else array.astype(np.int64)


class IntegerProgram:
    """The rules of `graph`'s ops, ready to run on batches with an arithmetic."""

    def __init__(self, graph):
        self.graph = graph
        self.rules = [integer_rule_for(graph, op) for op in graph.ops]
        self.fold = final_fully_connected(graph)
        self.last_use = {}
        for position, op in enumerate(graph.ops):
            for t in op.inputs:
                self.last_use[t] = position

    def _get(self, values, t):
        if t in values:
            return values[t]
        tensor = self.graph.tensors[t]
        if tensor.data is not None:
            c = tensor.data.astype(np.int64)[None]
            return c, c
        raise UnsupportedOperatorError(
            f"'{self.graph.path}': tensor {t} '{tensor.name}' is read before it is computed.")

    def _shaped(self, t, value):
        """The value in the tensor's shape, batch first; int8 values (the affine rules'
        fast path) stay int8 up to a rule that computes on them (`wide`)."""
        shape = self.graph.tensors[t].shape
        lower, upper = value
        batch = lower.shape[0]
        lower = _integers(lower).reshape((batch,) + shape)
        if upper is value[0]:
            return lower, lower
        return lower, _integers(upper).reshape((batch,) + shape)

    def run(self, arithmetic, lower, upper, keep=False, rounding=DEFAULT_ROUNDING):
        """Propagates the (batch, *input shape) int8 codes [lower, upper] of the entry
        tensor (`upper is lower` for points) through every op.

        Returns:
            A `Propagation`; `rounding` is recorded in it.
        """
        graph = self.graph
        values = {graph.entry: self._shaped(graph.entry, (lower, upper))}
        fold_input = softmax_input = None
        for position, (op, rule) in enumerate(zip(graph.ops, self.rules)):
            inputs = [self._get(values, t) for t in rule.inputs]
            if not rule.narrow_inputs:
                inputs = [wide(v) for v in inputs]
            if op is self.fold and not arithmetic.point:
                fold_input = inputs[0]
            if op.name == "SOFTMAX":
                softmax_input = inputs[0]
            values[rule.output] = self._shaped(rule.output, rule(arithmetic, *inputs))
            if not keep:
                for t in op.inputs:
                    if self.last_use.get(t) == position and t != graph.logits:
                        values.pop(t, None)
        lower, upper = wide(values[graph.logits])
        batch = lower.shape[0]
        tensors = ({t: wide(v) for t, v in values.items()} if keep
                   else {graph.logits: (lower, upper)})
        if softmax_input is not None:
            softmax_input = tuple(v.reshape(batch, -1) for v in wide(softmax_input))
        if fold_input is not None:
            fold_input = tuple(v.reshape(batch, -1) for v in wide(fold_input))
        return Propagation(lower.reshape(batch, -1), upper.reshape(batch, -1), tensors,
                           softmax_input, fold_input, rounding)


def propagate(graph, lower, upper=None, *, point=False, keep=False, rounding=DEFAULT_ROUNDING,
              kernels="reference"):
    """Propagates int8 input bounds through `graph` (an `IntegerGraph`).

    Args:
        lower, upper: int arrays (batch, *input shape) of int8 codes of the entry tensor;
            for `point=True` pass the quantized inputs as `lower` only.
        point: simulate the integer kernels on single points.
        keep: keep the bounds of every intermediate tensor in `Propagation.tensors`.
        rounding: the rounding model (`cactus_keras.int8.rounding`): "nearest"
            (default; the rounding error of TFLite's fixed-point kernels, XNNPACK and
            CMSIS-NN) or "floor_ceil" (any kernel whose requantization error is below
            one unit).
        kernels: whose rounding the point simulation follows: "reference" (TFLite's
            reference kernels), "builtin" (its optimized kernels) or "xnnpack" (the
            XNNPACK delegate). Intervals are sound for all three.

    Returns:
        A `Propagation`.

    Example:

    ```python
    bounds = propagate(graph, lower, upper, rounding="nearest")
    simulated = propagate(graph, quantize_input(graph, x), point=True, kernels="xnnpack")
    ```
    """
    check_rounding(rounding)
    check_kernels(kernels)
    arithmetic = KernelSimulation(kernels) if point else IntervalArithmetic(rounding)
    lower = np.asarray(lower, np.int64)
    upper = lower if (point or upper is None) else np.asarray(upper, np.int64)
    if not point and np.any(lower > upper):
        raise ValueError("`lower` must be <= `upper` everywhere.")
    return IntegerProgram(graph).run(arithmetic, lower, upper, keep=keep, rounding=rounding)
