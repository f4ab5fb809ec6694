"""Compression of networks and the members of the compression set.

Functions: magnitude pruning masks (`magnitude_masks`), fake quantization
(`fake_quantize`). Members (`CompressionMember` subclasses): `Pruning`,
`AWPQuantization` (AWP), `FixedMaskPruning`, `StraightThroughQuantization`,
`Int8FileQuantization` (the int8 file's arithmetic), and any a
user registers with `register_member`. `members_from_tables` builds a set from plain
tables (`{"kind": "pruning", "ratio": [0.5, 0.95]}`), as TOML configs and the CLI do.
`prune_structured` zeroes whole channels; `shrink` rebuilds such a network as a plain,
narrower Keras model that computes the same.
"""

from cactus_keras.compression.awp import AWPQuantization
from cactus_keras.compression.fixed_mask import FixedMaskPruning
from cactus_keras.compression.int8_file import Int8FileQuantization
from cactus_keras.compression.kernels import compressible_kernels
from cactus_keras.compression.masks import PRUNING_METHODS, magnitude_masks, sparsity
from cactus_keras.compression.member import (
    CompressionMember,
    MemberContext,
    member_class,
    member_from_config,
    member_kinds,
    register_member,
    unregister_member,
)
from cactus_keras.compression.member_tables import member_table, members_from_tables
from cactus_keras.compression.pruning import Pruning
from cactus_keras.compression.quantization import fake_quantize, quantization_scale
from cactus_keras.compression.ratio_schedules import ConstantRatio, PolynomialRatio
from cactus_keras.compression.shrink import ShrinkError, prune_structured, shrink
from cactus_keras.compression.straight_through import StraightThroughQuantization

# The public names (documented, with examples, in the API reference). The registry's
# lookups (member_class, member_from_config, member_kinds, member_table) stay importable:
# configs and the CLI use them through `members_from_tables`.
__all__ = [
    "PRUNING_METHODS",
    "AWPQuantization",
    "CompressionMember",
    "ConstantRatio",
    "FixedMaskPruning",
    "Int8FileQuantization",
    "MemberContext",
    "PolynomialRatio",
    "Pruning",
    "ShrinkError",
    "StraightThroughQuantization",
    "compressible_kernels",
    "fake_quantize",
    "magnitude_masks",
    "members_from_tables",
    "prune_structured",
    "quantization_scale",
    "register_member",
    "shrink",
    "sparsity",
]
