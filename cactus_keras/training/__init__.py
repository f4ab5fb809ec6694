"""Compression-aware certified training: the model, its losses, schedules and init."""

from cactus_keras.training.certified_losses import CERTIFIED_LOSSES, check_certified_loss
from cactus_keras.training.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from cactus_keras.training.batch_slices import member_slice
from cactus_keras.training.initialization import ibp_initialize
from cactus_keras.training.model import CactusModel, MemberResult
from cactus_keras.training.schedules import (
    EpsilonRamp,
    MemberWeightRamp,
    StandardWeightRamp,
    VariableRamp,
    smooth_ramp,
)
