"""Certification of trained models: certificates per sample, compression grids."""

from cactus_keras.certification.certificates import CertificationResult, certify
from cactus_keras.certification.compressed import (
    CompressionTable,
    evaluate_compressed,
    set_batchnorm_statistics,
)
