"""Configured runs: one training run (`TrainConfig`, `train`) and whole experiments
(`cactus-keras experiment CONFIG.toml`): methods side by side, reports and plots.

Importing this package imports nothing heavy (the command line reads its argument
parser from here); the names below load their modules when first used.
"""

from cactus_keras.lazy_exports import lazy_exports

_EXPORTS = {
    "COMPRESSIONS": "cactus_keras.experiments.training",
    "TrainConfig": "cactus_keras.experiments.training",
    "build_model": "cactus_keras.experiments.training",
    "schedule_callbacks": "cactus_keras.experiments.training",
    "train": "cactus_keras.experiments.training",
    "ConfigError": "cactus_keras.experiments.config",
    "ExperimentConfig": "cactus_keras.experiments.config",
    "load_config": "cactus_keras.experiments.config",
    "parse_config": "cactus_keras.experiments.config",
    "example_config": "cactus_keras.experiments.examples",
    "example_names": "cactus_keras.experiments.examples",
    "METHODS": "cactus_keras.experiments.methods",
    "run_experiment": "cactus_keras.experiments.runner",
}

# The documented names; `parse_config` and `schedule_callbacks` stay importable (what
# `load_config` and `train` run).
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, hidden={"parse_config", "schedule_callbacks"})
