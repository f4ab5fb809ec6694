"""cactus-keras: certified training that survives pruning and int8 quantization.

Example:

```python
import cactus_keras

net = cactus_keras.models.cnn3(input_shape=(28, 28, 1), num_classes=10)
model = cactus_keras.CactusModel(net, epsilon=0.1,
                                 compression=[cactus_keras.Pruning(ratio=(0.25, 0.75))])
model.compile(optimizer="adam")
model.fit(x_train, y_train, epochs=10, callbacks=[cactus_keras.EpsilonRamp(5, start_epoch=1)])
result = cactus_keras.certify(model, x_test, y_test, epsilon=0.1)
print(result.certified_accuracy)
```

Importing the package is cheap: names and subpackages load on first use, so the
command line starts without TensorFlow. The Keras classes (`CactusModel`, the
compression members) are registered as soon as Keras is imported, before or after
this package, so `import cactus_keras; keras.saving.load_model("model.keras")` works.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_EXPORTS = {
    "CertificationResult": "cactus_keras.certification",
    "CompressionTable": "cactus_keras.certification",
    "certify": "cactus_keras.certification",
    "evaluate_compressed": "cactus_keras.certification",
    "CompressionMember": "cactus_keras.compression",
    "FixedMaskPruning": "cactus_keras.compression",
    "Pruning": "cactus_keras.compression",
    "AWPQuantization": "cactus_keras.compression",
    "StraightThroughQuantization": "cactus_keras.compression",
    "Int8FileQuantization": "cactus_keras.compression",
    "register_member": "cactus_keras.compression",
    "CactusModel": "cactus_keras.training",
    "EpsilonRamp": "cactus_keras.training",
    "EpochLearningRate": "cactus_keras.training",
    "MemberWeightRamp": "cactus_keras.training",
    "StandardWeightRamp": "cactus_keras.training",
}
_SUBPACKAGES = ("attacks", "bounds", "certification", "compression", "data", "models",
                "training", "export", "interop", "experiments", "tuning", "validation",
                "backend", "atomic_write", "keras_internals", "cli")
# The modules whose import registers classes with Keras's serialization.
_REGISTERING = ("cactus_keras.training", "cactus_keras.compression")

__all__ = sorted([*_EXPORTS, *_SUBPACKAGES[:11]])


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"cactus_keras.{name}")
    else:
        raise AttributeError(f"module 'cactus_keras' has no attribute {name!r}")
    if "keras" in sys.modules:
        _register()
    return value


def __dir__():
    return __all__


_registered = False


def _importing_cactus_keras():
    """True while a module of this package is still executing (being imported)."""
    return any(name.startswith("cactus_keras.")
               and getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items()))


def _register():
    """Imports the registering modules once Keras is loaded and no module of this
    package is half-imported (importing them then could meet it half-initialized)."""
    global _registered
    if _registered or "keras" not in sys.modules or _importing_cactus_keras():
        return
    _registered = True
    for finder in [f for f in sys.meta_path if isinstance(f, _RegisterAfterImport)]:
        sys.meta_path.remove(finder)
    for module in _REGISTERING:
        importlib.import_module(module)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Until the classes are registered: finds `keras` and this package's modules with
    the other finders and wraps their loaders, so that registration runs right after
    Keras has finished importing, or after the module of this package that imported
    Keras has."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" and not fullname.startswith("cactus_keras."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # The importing system marks the module as done only after this returns.
        module.__spec__._initializing = False
        _register()

    def __getattr__(self, name):
        # Resource readers, source and the like are the wrapped loader's.
        return getattr(self._loader, name)


if "keras" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
