"""Certification of trained models: certificates per sample, compression grids."""

from cactus_keras.certification.certificates import CertificationResult, certify
from cactus_keras.certification.compressed import (
    CompressionTable,
    evaluate_compressed,
    set_batchnorm_statistics,
)

# The public names (documented, with examples, in the API reference).
__all__ = [
    "CertificationResult",
    "CompressionTable",
    "certify",
    "evaluate_compressed",
    "set_batchnorm_statistics",
]
