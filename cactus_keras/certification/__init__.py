"""Certification of trained models: certificates per sample and their summaries."""

from cactus_keras.certification.certificates import CertificationResult, certify
