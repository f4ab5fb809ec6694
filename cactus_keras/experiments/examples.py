"""The example experiment configs shipped with the package (`configs/*.toml`).

```python
path = cactus_keras.experiments.example_config("quickstart")
config = cactus_keras.experiments.load_config(path)
```

`cactus-keras experiment --example quickstart --output runs/quickstart` runs one.
Nothing heavy is imported here: the command line lists the names in its help.
"""

from __future__ import annotations

import os

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def example_names():
    """The names of the example configs shipped with the package.

    Example:

    ```python
    names = cactus_keras.experiments.example_names()
    assert "quickstart" in names and "fashion_mnist_cpu" in names
    ```
    """
    if not os.path.isdir(EXAMPLES_DIR):
        return []
    return sorted(n[: -len(".toml")] for n in os.listdir(EXAMPLES_DIR) if n.endswith(".toml"))


def example_config(name):
    """The path of the shipped example config `name` (e.g. "quickstart").

    Example:

    ```python
    path = cactus_keras.experiments.example_config("quickstart")   # .../configs/quickstart.toml
    print(open(path).read())
    ```
    """
    names = example_names()
    if name not in names:
        raise ValueError(
            f"No example config named {name!r}; the examples are: {', '.join(names)}."
        )
    return os.path.join(EXAMPLES_DIR, f"{name}.toml")
