"""VNN-LIB robustness properties and VNN-COMP benchmark folders for external verifiers.

One property per sample, in the format of the VNN-COMP benchmarks that alpha-beta-CROWN
reads: `X_0 ... X_{n-1}` are the network inputs flattened in row-major order (the ONNX
input without its batch dimension), `Y_0 ... Y_{k-1}` its outputs. The input assertions
are the L-infinity box of radius epsilon around the sample, cut to the data range; the
output assertion is the *violation* of robustness, as VNN-COMP states properties: some
class j != y has Y_j >= Y_y. A verifier that proves the assertions unsatisfiable
(`unsat`) has certified the sample; `sat` comes with a counterexample.

`write_benchmark` writes a folder as VNN-COMP benchmarks ship: `onnx/model.onnx`,
`vnnlib/sample_<i>.vnnlib` and `instances.csv` (onnx, vnnlib, timeout per line).

Example:

```python
cactus_keras.export.vnnlib.write_benchmark(model, x_test[:20], y_test[:20], epsilon=0.1,
                                           folder="vnncomp/fmnist")
# abcrown.py --onnx_path vnncomp/fmnist/onnx/model.onnx \
#     --vnnlib_path vnncomp/fmnist/vnnlib/sample_0.vnnlib
```
"""

from __future__ import annotations

import os

import numpy as np

from cactus_keras import validation
from cactus_keras.export.onnx import to_onnx
from cactus_keras.export.tflite import _network, write_file


def vnnlib_input_box(x, epsilon, input_range=(0.0, 1.0)):
    """[max(x - eps, low), min(x + eps, high)] (float64), always containing x."""
    x = np.asarray(x, np.float64)
    lower, upper = x - epsilon, x + epsilon
    if input_range is not None:
        lower = np.minimum(np.maximum(lower, input_range[0]), x)
        upper = np.maximum(np.minimum(upper, input_range[1]), x)
    return lower, upper


def _number(value):
    # repr gives the shortest decimal that reads back as the same float64.
    return repr(float(value))


def property_text(lower, upper, label, num_classes, comment=""):
    """The VNN-LIB text of one robustness property: inputs in [lower, upper]
    (flattened row-major), and the violation "some Y_j >= Y_label"."""
    lower, upper = np.ravel(lower), np.ravel(upper)
    label = int(label)
    lines = [f"; {line}" for line in comment.splitlines()]
    lines += [f"(declare-const X_{i} Real)" for i in range(lower.size)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    lines += ["", "; Input constraints:"]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append(f"(assert (<= X_{i} {_number(hi)}))")
        lines.append(f"(assert (>= X_{i} {_number(lo)}))")
    lines += ["", f"; Output constraints (robustness is violated if a class beats {label}):",
              "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label]
    lines += ["))", ""]
    return "\n".join(lines)


def write_benchmark(model_or_network, x, y, epsilon, folder, input_range=(0.0, 1.0),
                    timeout=300, opset_version=None):
    """Writes a VNN-COMP benchmark folder: the ONNX network, one VNN-LIB robustness
    property per sample and `instances.csv`.

    Args:
        model_or_network: a `cactus_keras.CactusModel` or a Keras 3 model (one input,
            one output).
        x, y: the samples (samples, *input shape) in the data space and their labels.
        epsilon: L-infinity radius in the data space.
        folder: the benchmark folder (created).
        input_range: `(low, high)` the boxes are cut to, or None.
        timeout: seconds per instance, written to `instances.csv`.
        opset_version: the ONNX opset, or None for the exporter's default.

    Returns:
        The paths of the VNN-LIB files, in sample order.
    """
    network = _network(model_or_network)
    epsilon = validation.check_epsilon(epsilon)
    input_range = validation.check_input_range(input_range)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}.")
    num_classes = int(np.prod(network.outputs[0].shape[1:]))
    x, y = validation.check_data(network, x, y, num_classes, input_range)
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        raise ValueError(f"`folder` '{folder}' is a file; pass a folder for the benchmark.")
    onnx_path = to_onnx(network, os.path.join(folder, "onnx", "model.onnx"), opset_version)
    lower, upper = vnnlib_input_box(x, epsilon, input_range)
    paths, rows = [], []
    for i, label in enumerate(np.asarray(y)):
        name = os.path.join("vnnlib", f"sample_{i}.vnnlib")
        comment = (f"Robustness of sample {i} (label {int(label)}) of '{network.name}': "
                   f"L-infinity epsilon {epsilon:g}, cut to the data range {input_range}.")
        text = property_text(lower[i], upper[i], label, num_classes, comment)
        paths.append(write_file(os.path.join(folder, name), text.encode()))
        rows.append(f"{os.path.relpath(onnx_path, folder)},{name},{timeout:g}")
    write_file(os.path.join(folder, "instances.csv"), ("\n".join(rows) + "\n").encode())
    return paths
