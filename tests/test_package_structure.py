"""Rules about the package's source that no import checks: private Keras API only in
keras_internals.py, and every top-level module in the layer contract (.importlinter)."""

import configparser
import os
import re

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "cactus_keras")

# Package names that are also private Keras names but belong to the package's own
# (non-Keras) classes: `Method._model` in experiments/methods.py.
OWN_NAMES = {"_model"}


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), open(path, encoding="utf-8").read()


def _private_keras_names():
    """Private attributes of Keras's models, layers, callbacks, optimizers, metrics and
    variables: those of the classes and those their instances set."""
    classes = [keras.Model, keras.Sequential, keras.layers.Layer, keras.callbacks.Callback,
               keras.callbacks.BackupAndRestore, keras.optimizers.Optimizer,
               keras.metrics.Metric, keras.Variable]
    names = {n for c in classes for n in dir(c)}
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"))
    for instance in [model, model.layers[1], model.optimizer, keras.Variable(1.0),
                     keras.callbacks.BackupAndRestore("unused_backup_dir")]:
        names |= set(vars(instance))
    return {n for n in names if n.startswith("_") and not n.startswith("__")} - OWN_NAMES


def test_private_keras_api_is_used_only_in_keras_internals():
    private = _private_keras_names()
    assert {"_trainable_variables", "_maybe_symbolic_build", "_save_model"} <= private
    # An attribute read (`x._name`) or a method override (an indented `def _name(`).
    use = re.compile(r"\.(_[A-Za-z]\w*)\b|^[ \t]+def (_[A-Za-z]\w*)\(", re.MULTILINE)
    private_import = re.compile(r"^\s*(from|import) (keras|keras_tuner)\.src\b", re.MULTILINE)
    found = []
    for path, text in _sources():
        if path.endswith("keras_internals.py"):
            continue
        names = {m.group(1) or m.group(2) for m in use.finditer(text)} & private
        found += [f"{path}: {name}" for name in sorted(names)]
        found += [f"{path}: imports {m.group(2)}.src" for m in private_import.finditer(text)]
    assert not found, "move these into cactus_keras/keras_internals.py: " + "; ".join(found)


def test_every_top_level_module_is_in_the_layer_contract():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, ".importlinter"))
    layers = config["importlinter:contract:layers"]["layers"]
    named = set(re.findall(r"cactus_keras\.(\w+)", layers))
    top_level = {
        name[:-3] if name.endswith(".py") else name
        for name in os.listdir(PACKAGE)
        if (name.endswith(".py") and name != "__init__.py")
        or os.path.isfile(os.path.join(PACKAGE, name, "__init__.py"))
    }
    assert {"bounds", "cli", "keras_internals"} <= top_level
    missing = sorted(top_level - named)
    assert not missing, f"add {missing} to a layer in .importlinter"
    assert not named - top_level, f".importlinter names modules that do not exist: {sorted(named - top_level)}"
