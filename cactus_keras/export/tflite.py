"""`to_tflite`: full-integer int8 (or float32) TFLite export of a Keras 3 model."""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

from cactus_keras import atomic_write, validation
from cactus_keras.quiet import native_stderr_filtered


def _network(model_or_network):
    from cactus_keras.training.model import CactusModel

    if isinstance(model_or_network, CactusModel):
        return model_or_network.network
    if not isinstance(model_or_network, keras.Model):
        raise TypeError(
            "`model_or_network` must be a cactus_keras.CactusModel or a Keras 3 model "
            f"(keras.Sequential or functional keras.Model), got "
            f"{type(model_or_network).__name__}. A tf.keras (Keras 2) model or a saved file "
            "must first be loaded with keras.saving.load_model."
        )
    return validation.check_single_io(model_or_network, "exporting")


def _check_samples(x, input_shape, what, input_range=None):
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{what} must be numeric, got dtype {x.dtype}.")
    if x.ndim == len(input_shape) and all(
            e is None or e == n for e, n in zip(input_shape, x.shape)):
        raise ValueError(
            f"{what} has shape {x.shape}, the shape of a single sample; pass a batch "
            f"(samples, {', '.join(str(e) for e in input_shape)}), e.g. x[None]."
        )
    if x.ndim != len(input_shape) + 1 or any(
            e is not None and e != n for e, n in zip(input_shape, x.shape[1:])):
        raise ValueError(
            f"{what} has sample shape {x.shape[1:]} but the model input is "
            f"({', '.join(str(e) for e in input_shape)}) (batch dimension first). Pass "
            "inputs shaped like the training data (for example add a channel axis with "
            "x[..., None])."
        )
    x = x.astype("float32", copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or infinite values.")
    # Calibrating on data outside the range the model is used in gives activation
    # ranges that waste the int8 levels (or clip the real data): a bad file, silently.
    validation.check_in_range(x, input_range, "representative_data")
    return x


def representative_samples(representative_data, input_shape, limit, input_range=None):
    """Up to `limit` float32 samples (samples, *input_shape) from a NumPy array or a
    tf.data.Dataset of inputs or (inputs, labels[, weights]) elements, batched or not,
    checked against `input_range` (`validation.check_in_range`; None: finite only)."""
    import tensorflow as tf

    what = "`representative_data`"
    if representative_data is None:
        raise ValueError(
            f"{what} is required for int8 export: a NumPy array of model inputs (about "
            "100-500 training images) or a tf.data.Dataset of inputs or (inputs, labels)."
        )
    if isinstance(representative_data, tf.data.Dataset):
        chunks, count = [], 0
        for element in representative_data:
            if isinstance(element, dict):
                raise TypeError(f"{what} yields dicts; yield inputs or (inputs, labels).")
            if isinstance(element, (tuple, list)):
                if not element:
                    raise ValueError(f"{what} yields empty tuples.")
                element = element[0]
            element = np.asarray(element)
            if element.ndim == len(input_shape):
                element = element[None]  # unbatched dataset
            chunk = _check_samples(element, input_shape, f"{what} (a dataset element)",
                                   input_range)
            chunks.append(chunk[: limit - count])
            count += len(chunks[-1])
            if count >= limit:
                break
        if not count:
            raise ValueError(
                f"{what} is an empty dataset; pass at least one input sample (about 100-500 "
                "training images is typical)."
            )
        return np.concatenate(chunks)[:limit]
    if isinstance(representative_data, (str, bytes, dict)):
        raise TypeError(
            f"{what} must be a NumPy array of inputs or a tf.data.Dataset, got "
            f"{type(representative_data).__name__}."
        )
    x = np.asarray(representative_data)
    if x.size == 0:
        raise ValueError(
            f"{what} is empty (shape {x.shape}); pass at least one input sample (about "
            "100-500 training images is typical)."
        )
    return _check_samples(x, input_shape, what, input_range)[:limit]


def configure_int8(converter, samples):
    """Sets a TFLiteConverter to full-integer int8 with int8 input and output, its
    activation ranges calibrated on `samples` (float32, batch first)."""
    import tensorflow as tf

    def dataset():
        for sample in samples:
            yield [sample[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter


def convert(converter, what, hint=""):
    """`converter.convert()`, its assorted TF/MLIR errors turned into a short ValueError
    about `what`."""
    try:
        with native_stderr_filtered():  # the converter's "fully_quantize: 0, ..." line
            return converter.convert()
    except Exception as error:  # the converter raises assorted TF/MLIR errors
        lines = [line for line in str(error).splitlines() if line.strip()]
        summary = "; ".join(lines[:3])[:600] if lines else type(error).__name__
        raise ValueError(f"TFLite conversion of {what} failed: {summary}.{hint}") from None


def write_file(path, content):
    """Writes `content` to `path` whole or not at all: a failed write leaves no
    truncated model behind."""
    return atomic_write.write_bytes(path, content)


EXPORTERS = ("auto", "litert", "saved_model")


def _litert_options(samples, int8):
    """Converter options for Keras's LiteRT exporter. Its default `supported_ops` also
    allows SELECT_TF_OPS (TensorFlow kernels inside the file); overridden here so the
    file holds builtin ops only (int8 ones for a full-integer file)."""
    import tensorflow as tf

    if not int8:
        return {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}

    def dataset():
        for sample in samples:
            yield [sample[None]]

    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": dataset,
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        "inference_input_type": tf.int8,
        "inference_output_type": tf.int8,
    }


def _export_litert(network, samples, int8, what, hint):
    """The file's bytes from Keras's own `model.export(path, format="litert")`."""
    with tempfile.TemporaryDirectory(prefix="cactus_litert_") as folder:
        target = os.path.join(folder, "model.tflite")  # Keras wants the .tflite suffix
        try:
            with native_stderr_filtered():  # the converter's "fully_quantize: 0, ..." line
                network.export(target, format="litert", verbose=False,
                               **_litert_options(samples, int8))
        except Exception as error:  # the converter raises assorted TF/MLIR errors
            lines = [line for line in str(error).splitlines() if line.strip()]
            summary = "; ".join(lines[:3])[:600] if lines else type(error).__name__
            raise ValueError(f"TFLite conversion of {what} failed: {summary}.{hint}") from None
        with open(target, "rb") as f:
            return f.read()


def _export_saved_model(network, samples, int8, what, hint):
    """The file's bytes from a SavedModel (`network.export`, which Keras writes on every
    backend) converted with `TFLiteConverter.from_saved_model`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="cactus_tflite_") as saved_model:
        network.export(saved_model, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if int8:
            configure_int8(converter, samples)
        return convert(converter, what, hint)


def _int8_member(model_or_network, int8_member, int8):
    """The `Int8FileQuantization` member whose ranges the file gets, or None."""
    from cactus_keras.compression.int8_file import int8_file_member, int8_file_members
    from cactus_keras.training.model import CactusModel

    if int8_member is None or not int8:
        return None
    if int8_member == "auto":
        return int8_file_member(model_or_network)
    members = int8_file_members(model_or_network)
    if not isinstance(model_or_network, CactusModel):
        raise ValueError(f"`int8_member`={int8_member!r} names a member of a CactusModel; "
                         "pass the CactusModel, not its network.")
    found = [m for m in members if m.name == int8_member]
    if not found:
        raise ValueError(
            f"`int8_member` must name an int8_file member of the model (one of "
            f"{', '.join(m.name for m in members) or 'none'}), got {int8_member!r}; or "
            "pass None to calibrate the ranges on `representative_data`.")
    return found[0]


def to_tflite(model_or_network, path, representative_data=None, int8=True,
              num_calibration_samples=200, exporter="auto", *, int8_member="auto",
              input_range="auto"):
    """Exports a Keras model to a `.tflite` file, full-integer int8 by default.

    Which exporter writes the file (`exporter`):

    * "litert" (the default on the TensorFlow backend): Keras's own
      `network.export(path, format="litert", ...)`, with its converter options set to
      full-integer int8. Keras's default `supported_ops` includes SELECT_TF_OPS (TF
      kernels in the file, which the int8 verifier and most int8 runtimes cannot run),
      so they are overridden with `TFLITE_BUILTINS_INT8` (`TFLITE_BUILTINS` for float).
    * "saved_model" (the default on other backends, where Keras's LiteRT export needs
      the TensorFlow or PyTorch backend): the network is written as a SavedModel
      (`network.export`, which Keras supports on JAX too) and converted with
      `tf.lite.TFLiteConverter.from_saved_model` (`from_keras_model` does not work with
      Keras 3). Both give the same full-integer file (tested).

    With `int8=True` the conversion is full-integer: `Optimize.DEFAULT`, the
    representative dataset for calibrating activation ranges, `TFLITE_BUILTINS_INT8`
    only, and int8 input and output tensors (quantize inputs with the input tensor's
    scale and zero point; `verify_tflite` does this). Weights are int8 (per channel for
    convolutions and dense layers), biases int32. A final softmax is kept, as deployed;
    `verify_tflite` certifies through it. With `int8=False` the file is float32.

    Args:
        model_or_network: a `cactus_keras.CactusModel` (its `.network` is exported) or a
            Keras 3 Sequential/functional model with one input and one output.
        path: the `.tflite` file to write (parent folders are created).
        representative_data: model inputs for calibration: a NumPy array (samples,
            *input shape) or a tf.data.Dataset of inputs or (inputs, labels), batched or
            not. Required when `int8=True`.
        int8: full-integer int8 (True) or float32 (False).
        num_calibration_samples: at most this many samples are used for calibration.
        exporter: "auto", "litert" or "saved_model" (see above).
        input_range: the data range `representative_data` must lie in (the range the
            file is certified in by `verify_tflite`); "auto" takes a `CactusModel`'s own
            `input_range` and (0, 1) for a plain network; None checks only that the
            samples are finite.
        int8_member: the activation scales and zero points: "auto" (default) takes
            them from the `CactusModel`'s `Int8FileQuantization` member when it has
            one (the ranges it trained for; `member_quantization`), else they are
            calibrated on `representative_data`; a member's name picks that member;
            None always calibrates.

    Returns:
        `path`, as a string.

    Example:

    ```python
    cactus_keras.export.to_tflite(model, "model.tflite", x_train[:100])
    result = cactus_keras.export.verify_tflite("model.tflite", x_test, y_test, 0.01)
    ```
    """
    network = _network(model_or_network)
    if isinstance(input_range, str) and input_range == "auto":
        input_range = getattr(model_or_network, "input_range", (0.0, 1.0))
    input_range = validation.check_input_range(input_range)
    num_calibration_samples = validation.check_positive_int(
        num_calibration_samples, "num_calibration_samples")
    if exporter not in EXPORTERS:
        raise ValueError(f"`exporter` must be one of {', '.join(EXPORTERS)}, got "
                         f"{exporter!r}.")
    if exporter == "auto":
        exporter = "litert" if keras.backend.backend() == "tensorflow" else "saved_model"
    input_shape = tuple(network.inputs[0].shape[1:])
    samples = None
    if int8 or representative_data is not None:
        samples = representative_samples(representative_data, input_shape,
                                         num_calibration_samples, input_range)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` '{path}' is a directory; pass a file name such as "
                         "'model.tflite'.")
    hint = (" Layers without an int8 TFLite kernel cannot be exported full-integer; try "
            "int8=False to see whether the float conversion works.") if int8 else ""
    what = f"model '{network.name}'{' (int8)' if int8 else ''}"
    export = _export_litert if exporter == "litert" else _export_saved_model
    content = export(network, samples, int8, what, hint)
    member = _int8_member(model_or_network, int8_member, int8)
    if member is not None:
        from cactus_keras.export.member_quantization import apply_member_quantization

        content = apply_member_quantization(content, member, model_or_network)
    write_file(path, content)
    return path
