"""Compression-aware certified training: the model, its losses, schedules and init."""

from cactus_keras.training.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from cactus_keras.training.initialization import ibp_initialize
from cactus_keras.training.model import CactusModel, MemberResult
from cactus_keras.training.schedules import (
    EpsilonRamp,
    StandardWeightRamp,
    VariableRamp,
    smooth_ramp,
)
