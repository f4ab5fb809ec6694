"""Compression of networks and the members of the compression set.

Functions: magnitude pruning masks (`magnitude_masks`), fake quantization
(`fake_quantize`). Members (`CompressionMember` subclasses): `Pruning`,
`Quantization` (AWP), `FixedMaskPruning`, `StraightThroughQuantization`, and any a
user registers with `register_member`. `members_from_tables` builds a set from plain
tables (`{"kind": "pruning", "ratio": [0.5, 0.95]}`), as TOML configs and the CLI do.
"""

from cactus_keras.compression.awp import Quantization
from cactus_keras.compression.fixed_mask import FixedMaskPruning
from cactus_keras.compression.kernels import prunable_kernels
from cactus_keras.compression.masks import PRUNING_METHODS, magnitude_masks, sparsity
from cactus_keras.compression.member import (
    CompressionMember,
    MemberContext,
    member_class,
    member_from_config,
    member_kinds,
    register_member,
)
from cactus_keras.compression.member_tables import member_table, members_from_tables
from cactus_keras.compression.pruning import Pruning
from cactus_keras.compression.quantization import fake_quantize, quantization_scale
from cactus_keras.compression.ratio_schedules import ConstantRatio, PolynomialRatio
from cactus_keras.compression.straight_through import StraightThroughQuantization

# The public names (documented, with examples, in the API reference). The registry's
# lookups (member_class, member_from_config, member_kinds, member_table) stay importable:
# configs and the CLI use them through `members_from_tables`.
__all__ = [
    "PRUNING_METHODS",
    "CompressionMember",
    "ConstantRatio",
    "FixedMaskPruning",
    "MemberContext",
    "PolynomialRatio",
    "Pruning",
    "Quantization",
    "StraightThroughQuantization",
    "fake_quantize",
    "magnitude_masks",
    "members_from_tables",
    "prunable_kernels",
    "quantization_scale",
    "register_member",
    "sparsity",
]
