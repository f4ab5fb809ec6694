"""`verify_tflite`: run an int8 `.tflite` file and certify it as it runs."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import sys

import numpy as np
from tqdm.auto import tqdm

from cactus_keras import validation
from cactus_keras.int8.fixed_point import round_half_away
from cactus_keras.quiet import native_stderr_filtered
from cactus_keras.export.integer_backend import expect_batches
from cactus_keras.export.integer_intervals import IntervalArithmetic, round_bounds
from cactus_keras.int8.rounding import DEFAULT_ROUNDING, check_rounding
from cactus_keras.export.integer_margins import certify_propagation
from cactus_keras.export.integer_propagation import IntegerProgram
from cactus_keras.export.integer_simulation import KernelSimulation
from cactus_keras.export.model_file import (
    TFLiteFormatError,
    UnsupportedOperatorError,
    load_integer_graph,
)

KERNELS = ("default", "builtin", "reference")
# The interpreter's kernels -> the rounding the integer simulation follows.
SIMULATED_KERNELS = {"default": "xnnpack", "builtin": "builtin", "reference": "reference"}


@dataclasses.dataclass
class TFLiteVerificationResult:
    """Interpreter accuracy and integer certificates of one `.tflite` file.

    Attributes:
        path: the file.
        interpreter: which interpreter ran it, "ai_edge_litert" or "tf.lite".
        kernels: "default" (XNNPACK delegate where it applies), "builtin" (TFLite's
            optimized kernels) or "reference" (TFLite's reference kernels).
        epsilon, input_range: the L-infinity box in the float data space.
        labels: the true labels.
        predicted: the interpreter's arg-max (first maximum) on the quantized inputs.
        simulated: the arg-max of the integer simulation of the same inputs.
        certified: bool per sample: every int8 input in the quantized box is classified
            as the label by the int8 arithmetic of the file.
        output_lower, output_upper: (samples, classes) int8 bounds of the output codes.

    Example:

    ```python
    cactus_keras.export.to_tflite(net, "model_int8.tflite", representative_data=x_train[:100])
    result = cactus_keras.export.verify_tflite("model_int8.tflite", x_test, y_test, epsilon=0.01)
    print(result.summary())
    print(result.clean_accuracy, result.certified_accuracy, result.simulation_agreement)
    ```
    """

    path: str
    interpreter: str
    kernels: str
    rounding: str
    epsilon: float
    input_range: tuple | None
    labels: np.ndarray
    predicted: np.ndarray
    simulated: np.ndarray
    certified: np.ndarray
    output_lower: np.ndarray
    output_upper: np.ndarray

    @property
    def clean_accuracy(self):
        return float(np.mean(self.predicted == self.labels))

    @property
    def certified_accuracy(self):
        return float(np.mean(self.certified))

    @property
    def simulation_agreement(self):
        """Fraction of samples where the integer simulation's arg-max equals the
        interpreter's (1.0 expected)."""
        return float(np.mean(self.simulated == self.predicted))

    def summary(self):
        return (
            f"{len(self.labels)} samples, epsilon={self.epsilon:g}, {self.interpreter} "
            f"({self.kernels} kernels): clean accuracy {self.clean_accuracy:.4f}, certified "
            f"accuracy {self.certified_accuracy:.4f} (rounding model {self.rounding}), "
            f"simulation agreement "
            f"{self.simulation_agreement:.4f}"
        )

    def to_dict(self):
        return {
            "path": self.path,
            "interpreter": self.interpreter,
            "kernels": self.kernels,
            "rounding": self.rounding,
            "epsilon": self.epsilon,
            "input_range": list(self.input_range) if self.input_range is not None else None,
            "samples": int(len(self.labels)),
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": self.certified_accuracy,
            "simulation_agreement": self.simulation_agreement,
        }


def interpreter_class():
    """(Interpreter class, OpResolverType, name): LiteRT's, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        return Interpreter, OpResolverType, "ai_edge_litert"
    except ImportError:  # pragma: no cover - ai_edge_litert is a dependency
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType, "tf.lite"


def make_interpreter(path, kernels="default", preserve_all_tensors=False, num_threads=None):
    """An interpreter for `path`. kernels: "default" (XNNPACK where it applies),
    "builtin" (no default delegate) or "reference" (BUILTIN_REF). `num_threads`: the
    interpreter's threads, all CPUs by default (the int8 kernels compute each output
    in one thread, so the outputs do not depend on it). Returns (interpreter, name)."""
    if kernels not in KERNELS:
        raise ValueError(f"`kernels` must be one of {', '.join(KERNELS)}, got {kernels!r}.")
    path = os.fspath(path)
    cls, resolver, name = interpreter_class()
    resolver_type = {
        "default": resolver.AUTO,
        "builtin": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "reference": resolver.BUILTIN_REF,
    }[kernels]
    try:
        with native_stderr_filtered():  # LiteRT's "Created ... XNNPACK delegate" line
            interpreter = cls(model_path=path, experimental_op_resolver_type=resolver_type,
                              experimental_preserve_all_tensors=preserve_all_tensors,
                              num_threads=num_threads or os.cpu_count() or 1)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()
        raise TFLiteFormatError(
            f"{name} could not load '{path}': {message[-1] if message else error}"
        ) from None
    return interpreter, name


def quantize_input(graph, x):
    """Float inputs -> int8 codes of the model's entry tensor: round(x / scale) + zero
    point (round half away from zero, in float32 as TFLite's QUANTIZE), clamped."""
    t = graph.entry_tensor
    v = np.asarray(x, np.float32) / np.float32(t.scale[0])
    q = round_half_away(v) + int(t.zero_point[0])
    return np.clip(q, -128, 127).astype(np.int8)


def input_interval(graph, x, epsilon, input_range, rounding=DEFAULT_ROUNDING):
    """int8 bounds of the quantized epsilon box: [max(x - eps, lo), min(x + eps, hi)]
    divided by the scale, floor/ceil (sound for any quantizer whose error is below one
    step; with rounding="nearest", [ceil(v - 0.5), floor(v + 0.5)] for round-to-nearest
    quantizers), plus the zero point, clamped to [-128, 127]. The box always contains
    x."""
    t = graph.entry_tensor
    x = np.asarray(x, np.float64)
    low, high = x - epsilon, x + epsilon
    if input_range is not None:
        low = np.minimum(np.maximum(low, input_range[0]), x)
        high = np.maximum(np.minimum(high, input_range[1]), x)
    scale, zero_point = np.float64(t.scale[0]), int(t.zero_point[0])
    v_lo, v_hi = low / scale, high / scale
    lower, upper = round_bounds(v_lo, v_hi, rounding, 0.5)
    return (np.clip(lower + zero_point, -128, 127).astype(np.int64),
            np.clip(upper + zero_point, -128, 127).astype(np.int64))


class InterpreterRunner:
    """Runs batches through an interpreter, resizing the batch dimension when allowed."""

    def __init__(self, interpreter):
        self.interpreter = interpreter
        details = interpreter.get_input_details()[0]
        self.input_index = details["index"]
        self.input_dtype = details["dtype"]
        signature = details.get("shape_signature", details["shape"])
        self.dynamic = len(signature) > 0 and signature[0] == -1
        self.sample_shape = tuple(int(d) for d in details["shape"][1:])
        self.output_index = interpreter.get_output_details()[0]["index"]
        self.batch = int(details["shape"][0])

    def _resize(self, batch):
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self.input_index, (batch,) + self.sample_shape)
            self.interpreter.allocate_tensors()
            self.batch = batch

    def __call__(self, inputs):
        """inputs: int8 codes (or floats for a float-input model). Returns the outputs,
        shape (samples, classes)."""
        inputs = np.asarray(inputs, self.input_dtype)
        if self.dynamic:
            self._resize(len(inputs))
            return self._invoke(inputs)
        # A fixed batch dimension is 1 (load_integer_graph checks it): one by one.
        return np.concatenate([self._invoke(inputs[i: i + 1]) for i in range(len(inputs))])

    def _invoke(self, inputs):
        self.interpreter.set_tensor(self.input_index, inputs)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output_index)).reshape(len(inputs), -1)


@contextlib.contextmanager
def _inconsistent_file_errors(path, name):
    """The interpreter's own errors while it reads or runs a file that loaded (a
    zero point its kernels do not support, tensor sizes that do not fit, names that
    are not text) as a TFLiteFormatError naming the file."""
    try:
        yield
    except (RuntimeError, UnicodeDecodeError) as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise TFLiteFormatError(
            f"'{path}' is inconsistent: {name} could not run it "
            f"({lines[0] if lines else type(error).__name__})."
        ) from None


@contextlib.contextmanager
def _inconsistent_graph_errors(path):
    """NumPy's errors while the integer program runs a graph whose tensor shapes do not
    fit each other (a file that loaded but is inconsistent) as a TFLiteFormatError;
    the verifier's own errors pass unchanged."""
    try:
        yield
    except (TFLiteFormatError, UnsupportedOperatorError):
        raise
    except (ValueError, IndexError) as error:
        raise TFLiteFormatError(
            f"'{path}' is inconsistent: its tensors do not fit its ops ({error})."
        ) from None


def _check_x(graph, x, y, input_range):
    x = np.asarray(x)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"`x` must be a numeric array, got dtype {x.dtype}.")
    expected = graph.entry_tensor.shape[1:]
    if any(int(e) < 1 for e in expected):
        raise TFLiteFormatError(
            f"'{graph.path}' is inconsistent: its input shape (batch, "
            f"{', '.join(str(e) for e in expected)}) has a dimension below 1."
        )
    if x.shape[1:] != expected:
        raise ValueError(
            f"`x` has shape {x.shape}, but '{graph.path}' expects (batch, "
            f"{', '.join(str(e) for e in expected)}). Reshape the data to match."
        )
    # check_data checks the labels; the shape was checked above (no Keras model here).
    return validation.check_data(_NoShape, x, y, graph.num_classes, input_range)


class _NoShape:
    inputs = None


def _show_progress(verbose):
    if verbose == "auto":
        return sys.stderr.isatty()
    if verbose not in (0, 1, True, False):
        raise ValueError(f"`verbose` must be 'auto', 0 or 1, got {verbose!r}.")
    return bool(verbose)


def _run_program(program, arithmetic, lower, upper, rounding, path):
    with _inconsistent_graph_errors(path):
        return program.run(arithmetic, lower, upper, rounding=rounding)


def _clean_pass(run, program, simulation, graph, name, xb, q, rounding):
    """The interpreter's outputs and the integer simulation of the clean inputs (or the
    simulation's error)."""
    with _inconsistent_file_errors(graph.path, name):
        outputs = run(xb if graph.float_input else q)
    q64 = q.astype(np.int64)
    try:
        return outputs, _run_program(program, simulation, q64, q64, rounding, graph.path)
    except (TFLiteFormatError, UnsupportedOperatorError) as error:
        return outputs, error  # raised after the interval pass's own errors, as before


def verify_tflite(path, x, y, epsilon, input_range=(0.0, 1.0), batch_size=256, *,
                  kernels="default", rounding=DEFAULT_ROUNDING, verbose="auto"):
    """Runs an int8 `.tflite` file and certifies it against L-infinity perturbations.

    The interpreter (`ai_edge_litert`, else `tf.lite`) gives the clean predictions on
    the quantized inputs. The certificate is computed on the int8 model as it runs: the
    op graph, int8 weights, int32 biases, scales and zero points are read from the file
    and integer intervals are propagated through the integer arithmetic
    (`cactus_keras.export.integer_intervals`): exact int32 accumulators, requantization as
    [floor(a*M), ceil(b*M)] + zp (sound for any round-to-nearest implementation of a*M
    with a tiny multiplier error, which covers TFLite's fixed-point reference and
    optimized kernels and XNNPACK's float requantization alike), fused activation
    clamps, pooling, ADD and MEAN rules. A final softmax stays in the file; the
    certificate handles it through its monotonicity. A final dense layer is folded into
    the margins (exact accumulators of w_y - w_j) where that is tighter.

    A sample is certified when no int8 input in its quantized epsilon box can make the
    first-maximum arg-max of the int8 output differ from the label: q_y > q_j for
    j < y and q_y >= q_j for j > y (a tie with an earlier class does not certify). The
    bounds are the same whichever `kernels` run the file. The integer simulation of the
    clean inputs, rounding ties like `kernels`, is compared with the interpreter
    (`simulation_agreement`, expected 1.0).

    Args:
        path: a full-integer int8 `.tflite` file (e.g. from `to_tflite`).
        x: float inputs (samples, *input shape) in the data space.
        y: integer labels.
        epsilon: L-infinity radius in the data space.
        input_range: `(low, high)` the box is cut to, or None.
        batch_size: samples per batch.
        kernels: "default" (XNNPACK delegate where it applies), "builtin" (TFLite's
            optimized kernels) or "reference" (TFLite's reference kernels).
        rounding: the rounding model the certificate assumes
            (`cactus_keras.int8.rounding`; recorded in the result and its JSON).
            "nearest" (default): every rounding of the input quantizer and of each
            requantization is within the largest error of the round-to-nearest
            kernels (0.5, plus 2**(shift - 1) for the first step of a two-step
            fixed-point rounding, plus 2**-20 relative), which keeps points points and
            certifies much more on deep models; sound for LiteRT's reference and
            optimized kernels (also with single rounding and ruy), XNNPACK and
            TFLite Micro with CMSIS-NN. "floor_ceil": bounded by floor/ceil of the real
            value, sound for any implementation whose total rounding error is below
            one unit.
        verbose: "auto" (a progress bar over the samples when stderr is a terminal),
            0 or 1.

    Returns:
        A `TFLiteVerificationResult`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a TFLite flatbuffer, corrupt or truncated, not full-integer int8,
            or ops without an integer rule (the message names them).

    Example:

    ```python
    cactus_keras.export.to_tflite(net, "model_int8.tflite", representative_data=x_train[:100])
    result = cactus_keras.export.verify_tflite("model_int8.tflite", x_test, y_test, epsilon=0.01)
    assert result.certified_accuracy <= result.clean_accuracy
    ```
    """
    graph = load_integer_graph(path)
    check_rounding(rounding)
    epsilon = validation.check_epsilon(epsilon)
    input_range = validation.check_input_range(input_range)
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    x, y = _check_x(graph, x, y, input_range)
    interpreter, name = make_interpreter(graph.path, kernels)
    with _inconsistent_file_errors(graph.path, name):
        run = InterpreterRunner(interpreter)
    program = IntegerProgram(graph)
    simulation = KernelSimulation(SIMULATED_KERNELS[kernels])
    intervals = IntervalArithmetic(rounding)
    predicted, simulated, certified, lows, highs = [], [], [], [], []
    bar = tqdm(total=len(x), desc="verify_tflite", unit="sample", file=sys.stderr,
               disable=not _show_progress(verbose), leave=False)
    full_batches = max(len(x) // batch_size, 1)
    with (concurrent.futures.ThreadPoolExecutor(max_workers=1) as passes,
          expect_batches(full_batches)):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start: start + batch_size], y[start: start + batch_size]
            q = quantize_input(graph, xb)
            # The interpreter and the simulation of the clean points run beside the
            # interval pass: the interpreter, NumPy and TensorFlow release the GIL, so
            # their single-threaded stretches overlap instead of leaving a core idle.
            clean = passes.submit(_clean_pass, run, program, simulation, graph, name, xb, q,
                                  rounding)
            lower, upper = input_interval(graph, xb, epsilon, input_range, rounding)
            try:
                bounds = _run_program(program, intervals, lower, upper, rounding, graph.path)
            except Exception:
                clean.result()  # the interpreter's error comes first, as it runs first
                raise
            outputs, point = clean.result()
            if isinstance(point, Exception):
                raise point
            predicted.append(np.argmax(outputs, axis=1))
            simulated.append(np.argmax(point.lower, axis=1))
            certified.append(certify_propagation(graph, bounds, yb))
            lows.append(bounds.lower)
            highs.append(bounds.upper)
            bar.update(len(yb))
        bar.close()
    return TFLiteVerificationResult(
        path=graph.path,
        interpreter=name,
        kernels=kernels,
        rounding=rounding,
        epsilon=epsilon,
        input_range=input_range,
        labels=y,
        predicted=np.concatenate(predicted),
        simulated=np.concatenate(simulated),
        certified=np.concatenate(certified),
        output_lower=np.concatenate(lows),
        output_upper=np.concatenate(highs),
    )
