"""Certificate-constrained compression: the smallest (or fastest) int8 file of a
network whose own integer certificate stays above a floor.

`run_search` (and the `cactus-keras compress` command) chooses per-layer structured
pruning ratios; `measure_latency` and `file_size` measure a `.tflite` file.

```python
from cactus_keras.compress import SearchConfig, run_search
report = run_search(network, x_train, y_train, SearchConfig(epsilon=0.1, min_certified=0.6),
                "runs/compress", load_test=lambda: (x_test, y_test))
```

Importing this package imports neither TensorFlow nor the exporter; the names below
load them when first used (the command line builds its parser without them).
"""

from cactus_keras.lazy_exports import lazy_exports

_EXPORTS = {
    "file_size": "cactus_keras.compress.latency",
    "measure_latency": "cactus_keras.compress.latency",
    "OBJECTIVES": "cactus_keras.compress.search",
    "NoCandidateMeetsFloor": "cactus_keras.compress.search",
    "SearchConfig": "cactus_keras.compress.search",
    "candidates": "cactus_keras.compress.search",
    "hidden_layers": "cactus_keras.compress.search",
    "pareto_front": "cactus_keras.compress.search",
    "run_search": "cactus_keras.compress.search",
}

# `candidates`, `hidden_layers` and `pareto_front` are steps of `run_search`: importable,
# not part of the documented surface.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__, _EXPORTS, hidden={"candidates", "hidden_layers", "pareto_front"})
