"""Compression-aware certified training: the model, its losses, schedules and init."""

from cactus_keras.training.batch_slices import member_slice
from cactus_keras.training.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from cactus_keras.training.certified_losses import CERTIFIED_LOSSES, check_certified_loss
from cactus_keras.training.ibp_regularizers import check_regularization
from cactus_keras.training.initialization import ibp_initialize
from cactus_keras.training.model import CactusModel, MemberResult
from cactus_keras.training.schedules import (
    LR_SCHEDULES,
    EpochLearningRate,
    EpsilonRamp,
    MemberWeightRamp,
    StandardWeightRamp,
    VariableRamp,
    check_lr_schedule,
    learning_rate_at,
    smooth_ramp,
)

# The public names (documented, with examples, in the API reference). The validators
# (check_*), member_slice, MemberResult and smooth_ramp stay importable: they are the
# model's internals, not API.
__all__ = [
    "CERTIFIED_LOSSES",
    "LR_SCHEDULES",
    "CactusModel",
    "EpochLearningRate",
    "EpsilonRamp",
    "MemberWeightRamp",
    "NonFiniteLossError",
    "StandardWeightRamp",
    "StopOnNonFiniteLoss",
    "VariableRamp",
    "ibp_initialize",
    "learning_rate_at",
]
