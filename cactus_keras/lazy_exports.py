"""Lazy re-exports for a package whose modules import heavy libraries (Keras, KerasTuner,
TensorFlow): a name is imported from its module on first use, so that importing the
package (as the command line does to build its parser) stays cheap."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package, exports, hidden=()):
    """`(__getattr__, __dir__, __all__)` for `package` (its `__name__`), whose names map
    to the modules that define them in `exports`; `hidden` names stay importable but out
    of `__all__` (the documented surface).

    ```python
    _EXPORTS = {"run_search": "cactus_keras.compress.search"}
    __getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
    ```
    """
    public = sorted(set(exports) - set(hidden))

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return public

    return __getattr__, __dir__, public
