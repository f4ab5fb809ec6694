"""Configured runs: one training run (`TrainConfig`, `train`) and whole experiments
(`cactus-keras experiment CONFIG.toml`): methods side by side, reports and plots."""

from cactus_keras.experiments.training import (
    COMPRESSIONS,
    TrainConfig,
    build_model,
    schedule_callbacks,
    train,
)
from cactus_keras.experiments.config import ConfigError, ExperimentConfig, load_config, parse_config
from cactus_keras.experiments.methods import METHODS
from cactus_keras.experiments.runner import run_experiment
