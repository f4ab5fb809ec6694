"""Certified accuracy of a network after compression, over a grid of compressions."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np

from cactus_keras import validation
from cactus_keras.certification.certificates import certify
from cactus_keras.compression.quantization import check_bits, fake_quantize
from cactus_keras.compression.pruning import (
    check_pruning_method,
    check_ratio,
    magnitude_masks,
    output_is_excluded,
    prunable_kernels,
)


@dataclasses.dataclass
class CompressionTable:
    """Rows of clean and certified accuracy per (method, ratio); see `rows`."""

    rows: list
    epsilon: float
    bound: str
    recalibrated_batchnorm: bool

    def to_dict(self):
        return {
            "epsilon": self.epsilon,
            "bound": self.bound,
            "recalibrated_batchnorm": self.recalibrated_batchnorm,
            "rows": self.rows,
        }

    def to_json(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    def lookup(self, method, ratio=None, bits=None):
        """The row of a pruning (method, ratio) or of a quantization ("quantize", bits)."""
        for row in self.rows:
            if row["method"] != method:
                continue
            if bits is not None and row["bits"] == bits:
                return row
            if ratio is not None and row["ratio"] is not None and abs(row["ratio"] - ratio) < 1e-9:
                return row
        raise KeyError((method, ratio, bits))

    def __str__(self):
        lines = [
            f"epsilon {self.epsilon:g}, bound {self.bound}, batch norm "
            + ("recalibrated" if self.recalibrated_batchnorm else "as trained"),
            f"{'method':<22} {'level':>7} {'sparsity':>9} {'clean':>7} {'certified':>10}",
        ]
        for row in self.rows:
            level = f"{row['ratio']:.2f}" if row["bits"] is None else f"{row['bits']} bit"
            lines.append(
                f"{row['method']:<22} {level:>7} {row['sparsity']:>9.4f} "
                f"{row['clean_accuracy']:>7.4f} {row['certified_accuracy']:>10.4f}"
            )
        return "\n".join(lines)


def _network_of(model_or_network):
    # A CactusModel carries the plain network; anything else is the network itself.
    return getattr(model_or_network, "network", model_or_network)


def _compress_into(copy, network, kernels, transform):
    """Sets `copy` (a clone of `network`) to `network` with `transform` applied to
    `kernels`; returns the fraction of zeros over those kernels afterwards."""
    copy.set_weights(network.get_weights())
    # A clone lists its weights in the same order as the original.
    index = {id(v): i for i, v in enumerate(network.weights)}
    values = [keras.ops.convert_to_numpy(v) for v in transform([k.value for k in kernels])]
    for kernel, value in zip(kernels, values):
        copy.weights[index[id(kernel)]].assign(value)
    return sum(float((v == 0).sum()) for v in values) / sum(v.size for v in values)


def _pruning_transform(method, ratio):
    def transform(kernels):
        masks = magnitude_masks(kernels, ratio, method)
        return [k * m for k, m in zip(kernels, masks)]

    return transform


def _quantization_transform(bits, per_channel):
    def transform(kernels):
        return [fake_quantize(k, bits, per_channel) for k in kernels]

    return transform


def set_batchnorm_statistics(network, x, batch_size=2048):
    """Sets every BatchNormalization's moving statistics to those of `x`.

    The statistics are computed layer by layer on one batch of up to `batch_size`
    samples (momentum 0 for that pass), so a compressed network's batch norm matches
    its own activations rather than the uncompressed network's.
    """
    layers = [l for l in network._flatten_layers(include_self=False) if isinstance(l, keras.layers.BatchNormalization)]
    if not layers:
        return False
    momenta = [l.momentum for l in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        network(np.asarray(x[:batch_size], "float32"), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return True


def evaluate_compressed(
    model_or_network,
    x,
    y,
    epsilon,
    pruning=(0.0, 0.5, 0.7, 0.9),
    methods=("global_l1",),
    *,
    bits=(),
    per_channel=True,
    bound="ibp",
    recalibrate_batchnorm=None,
    exclude_output=False,
    batch_size=None,
    verbose=0,
):
    """Clean and certified accuracy of the network pruned at each ratio by each method,
    and quantized at each bit width.

    Each row is one (method, ratio) with the achieved sparsity over the pruned kernels.
    The network itself is not changed: each row certifies a pruned copy. The structured
    method never prunes output units (classes) and counts its ratio in units.

    Args:
        model_or_network: a `CactusModel` (its `network` is used) or a Keras network.
        x, y: evaluation data.
        epsilon: certification radius.
        pruning: ratios in [0, 1).
        methods: pruning methods ("global_l1", "local_l1", "global_l2_structured").
        bits: bit widths (2 to 8) of fake-quantized kernels, one row each (method
            "quantize"): symmetric, round to nearest, per output channel unless
            `per_channel=False`.
        bound: certification method ("ibp", "crown-ibp", "crown", "best").
        recalibrate_batchnorm: inputs used to recompute batch-norm statistics of
            each pruned copy (None keeps the trained statistics).

    Example:

    ```python
    table = cactus_keras.evaluate_compressed(model, x_test, y_test, 0.1,
                                             pruning=[0, 0.5, 0.7],
                                             methods=["global_l1", "local_l1"])
    print(table)
    ```
    """
    network = _network_of(model_or_network)
    epsilon = validation.check_epsilon(epsilon)
    ratios = [check_ratio(r, "pruning ratio") for r in pruning]
    methods = [check_pruning_method(m) for m in methods]
    bits = [check_bits(b) for b in bits]
    settings = [
        (method, ratio, None, _pruning_transform(method, ratio),
         output_is_excluded(method, exclude_output))
        for method in methods for ratio in ratios
    ] + [
        ("quantize", None, b, _quantization_transform(b, per_channel), exclude_output)
        for b in bits
    ]
    recalibrated = False
    rows = []
    # One working copy, so its compiled bound computation is reused for every row.
    copy = keras.models.clone_model(network)
    for method, ratio, width, transform, excluded in settings:
        kernels = prunable_kernels(network, excluded)
        achieved = _compress_into(copy, network, kernels, transform)
        if recalibrate_batchnorm is not None:
            recalibrated = set_batchnorm_statistics(copy, recalibrate_batchnorm) or recalibrated
        result = certify(copy, x, y, epsilon, method=bound, batch_size=batch_size, verbose=verbose)
        rows.append(
            {
                "method": method,
                "ratio": ratio,
                "bits": width,
                "sparsity": achieved,
                "clean_accuracy": result.clean_accuracy,
                "certified_accuracy": result.certified_accuracy,
                "samples": int(len(result.labels)),
            }
        )
    return CompressionTable(rows=rows, epsilon=epsilon, bound=bound, recalibrated_batchnorm=recalibrated)
