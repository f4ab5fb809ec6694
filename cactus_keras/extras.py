"""The optional parts of cactus-keras and the extra that installs each.

The core (bounds, compression, training, certification, data from IDX/npz, models,
experiments) needs Keras and NumPy only, on the TensorFlow or the JAX backend. TFLite
export and verification, TF-MOT and TensorFlow Datasets need the `tensorflow` extra;
`cactus-keras tune` needs the `tune` extra (KerasTuner).

Example:

```python
from cactus_keras import extras

if extras.available("tensorflow"):
    ...
extras.require("tensorflow_model_optimization", "The tfmot method")  # or a clear error
```
"""

from __future__ import annotations

import importlib.util

# Top-level module -> the extra that installs it.
EXTRA_OF = {
    "tensorflow": "tensorflow",
    "tf_keras": "tensorflow",
    "tensorflow_model_optimization": "tensorflow",
    "tensorflow_datasets": "tensorflow",
    "ai_edge_litert": "tensorflow",
    "tensorboard": "tensorflow",
    "keras_tuner": "tune",
}


class MissingExtraError(ModuleNotFoundError):
    """A feature's optional dependency is not installed; the message names the extra."""


def available(module):
    """Whether `module` (a top-level module name) can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module):
    """`pip install 'cactus-keras[EXTRA]'` for the extra that installs `module`."""
    return f"pip install 'cactus-keras[{EXTRA_OF.get(module.split('.')[0], 'full')}]'"


def missing_message(module, feature):
    return f"{feature} needs {module}, which is not installed: {install_hint(module)}."


def require(module, feature):
    """Raises `MissingExtraError` naming the extra unless `module` is importable.

    `feature` is what the user asked for, as they asked it ("TFLite export",
    "[evaluation] tflite = true").
    """
    if not available(module):
        raise MissingExtraError(missing_message(module, feature), name=module)


def message_for(error):
    """The message naming the extra for an import error of an optional module, or None
    for other modules."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if isinstance(error, MissingExtraError):
        return str(error)
    if name in EXTRA_OF:
        return f"{name} is not installed; this command needs it: {install_hint(name)}."
    return None
