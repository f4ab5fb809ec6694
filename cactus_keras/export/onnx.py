"""`to_onnx`: the float network as an ONNX file, for external verifiers.

Complete verifiers of the float network (alpha-beta-CROWN and the other VNN-COMP tools)
read ONNX models and VNN-LIB properties (`cactus_keras.export.vnnlib`). The file is
written by Keras's own ONNX export (`network.export(path, format="onnx")`, through
`tf2onnx` on the TensorFlow backend); install it with `pip install 'cactus-keras[onnx]'`.

Example:

```python
cactus_keras.export.to_onnx(model, "model.onnx")
session = onnxruntime.InferenceSession("model.onnx")
logits = session.run(None, {session.get_inputs()[0].name: x_test[:8]})[0]
```
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings

import numpy as np

from cactus_keras.export.tflite import _network, write_file
from cactus_keras.quiet import native_stderr_filtered

ONNX_INSTALL = "pip install 'cactus-keras[onnx]' (onnx, onnxruntime and tf2onnx)"


def _require(module, what):
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the Python package '{module}', which is not "
                         f"installed; install it with {ONNX_INSTALL}.")


def to_onnx(model_or_network, path, opset_version=None):
    """Exports the float network to an ONNX file with Keras's own ONNX export.

    The file computes what the Keras network computes (onnxruntime agrees with Keras to
    1e-5 on test images, tested), with a dynamic batch dimension and the network's
    input shape. A final softmax stays in the file; VNN-LIB margin properties are
    unchanged by it (softmax keeps the order of the outputs).

    Args:
        model_or_network: a `cactus_keras.CactusModel` (its `.network` is exported) or a
            Keras 3 Sequential/functional model with one input and one output.
        path: the `.onnx` file to write (parent folders are created).
        opset_version: the ONNX opset, or None for the exporter's default.

    Returns:
        `path`, as a string.
    """
    network = _network(model_or_network)
    _require("tf2onnx" if _backend() == "tensorflow" else "onnx", "ONNX export")
    _require("onnx", "ONNX export")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` '{path}' is a directory; pass a file name such as "
                         "'model.onnx'.")
    if opset_version is not None and (not isinstance(opset_version, int)
                                      or isinstance(opset_version, bool) or opset_version < 7):
        raise ValueError(f"`opset_version` must be an integer >= 7 or None, got "
                         f"{opset_version!r}.")
    # Keras refuses to export a model that was never called; one zero sample builds it.
    network(np.zeros((1,) + tuple(network.inputs[0].shape[1:]), "float32"), training=False)
    with tempfile.TemporaryDirectory(prefix="cactus_onnx_") as folder:
        target = os.path.join(folder, "model.onnx")
        try:
            with warnings.catch_warnings(), native_stderr_filtered():
                # Keras's tf2onnx shim probes `np.object` (a NumPy FutureWarning), and the
                # converter logs its progress natively: neither is the user's to act on.
                warnings.filterwarnings("ignore", message=".*np\\.object", category=FutureWarning)
                network.export(target, format="onnx", verbose=False,
                               opset_version=opset_version)
        except Exception as error:  # tf2onnx raises assorted conversion errors
            lines = [line for line in str(error).splitlines() if line.strip()]
            summary = "; ".join(lines[:3])[:600] if lines else type(error).__name__
            raise ValueError(f"ONNX export of model '{network.name}' failed: {summary}.") \
                from None
        with open(target, "rb") as f:
            content = f.read()
    write_file(path, content)
    return path


def _backend():
    import keras

    return keras.backend.backend()
