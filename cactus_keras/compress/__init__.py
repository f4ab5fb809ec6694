"""Certificate-constrained compression: the smallest (or fastest) int8 file of a
network whose own integer certificate stays above a floor.

`search` (and the `cactus-keras compress` command) chooses per-layer structured
pruning ratios; `measure_latency` and `file_size` measure a `.tflite` file.
"""

from cactus_keras.compress.latency import file_size, measure_latency
from cactus_keras.compress.search import (
    OBJECTIVES,
    NoCandidateMeetsFloor,
    SearchConfig,
    candidates,
    hidden_layers,
    pareto_front,
    search,
)
