"""cactus-keras: certified training that survives pruning and int8 quantization.

Example:

```python
import cactus_keras
result = cactus_keras.certify(net, x_test, y_test, epsilon=0.1)
print(result.certified_accuracy)
```
"""

import importlib

__version__ = "0.1.0"

# Submodules load on first use, so `cactus-keras --help` and `import cactus_keras` do
# not pay for importing TensorFlow before it is needed.
_LAZY = {
    "attacks": ("cactus_keras.attacks", None),
    "bounds": ("cactus_keras.bounds", None),
    "data": ("cactus_keras.data", None),
    "certification": ("cactus_keras.certification", None),
    "certify": ("cactus_keras.certification", "certify"),
    "CertificationResult": ("cactus_keras.certification", "CertificationResult"),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'cactus_keras' has no attribute '{name}'")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
