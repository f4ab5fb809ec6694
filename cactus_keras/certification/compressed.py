"""Certified accuracy of a network after compression, over a grid of compressions."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from cactus_keras import atomic_write, validation, vocabulary
from cactus_keras.bounds.graph import parse_network
from cactus_keras.certification.certificates import certify, network_of
from cactus_keras.compression.kernels import compressible_kernels
from cactus_keras.compression.masks import (
    check_pruning_method,
    check_ratio,
    magnitude_masks,
    output_is_excluded,
)
from cactus_keras.compression.quantization import check_bits, fake_quantize

# Row forms: pruned kernels, or weight-only fake-quantized kernels. (The int8 .tflite
# file is a third form, certified by `cactus_keras.export.verify_tflite`.)
PRUNED, QUANTIZED = vocabulary.PRUNE, vocabulary.QUANTIZE


@dataclasses.dataclass
class CompressionTable:
    """Rows of clean and certified accuracy, one per compression; see `rows`.

    Each row has `form` ("prune" or "quantize"), `pruning_method` and `ratio` (pruned
    rows), `bits` (quantized rows), `sparsity`, `clean_accuracy`,
    `certified_accuracy` and `samples`.

    Example:

    ```python
    table = cactus_keras.evaluate_compressed(net, x_test, y_test, 0.01, ratios=[0.5], bits=[8])
    for row in table.rows:
        print(row["form"], row.get("ratio"), row.get("bits"), row["certified_accuracy"])
    table.to_json("table.json")
    ```
    """

    rows: list
    epsilon: float
    bound: str
    recalibrated_batchnorm: bool
    input_range: tuple | None = (0.0, 1.0)

    def to_dict(self):
        return {
            "epsilon": self.epsilon,
            "bound": self.bound,
            "input_range": None if self.input_range is None else list(self.input_range),
            "recalibrated_batchnorm": self.recalibrated_batchnorm,
            "rows": self.rows,
        }

    def to_json(self, path):
        atomic_write.write_json(path, self.to_dict())

    def lookup(self, ratio=None, pruning_method="global_l1", *, bits=None):
        """The row of a pruning (`ratio`, `pruning_method`) or of a quantization (`bits`)."""
        for row in self.rows:
            if bits is not None:
                if row["form"] == QUANTIZED and row["bits"] == bits:
                    return row
            elif (row["form"] == PRUNED and row["pruning_method"] == pruning_method
                  and abs(row["ratio"] - ratio) < 1e-9):
                return row
        raise KeyError(f"no row for bits={bits}" if bits is not None
                       else f"no row for ratio={ratio}, pruning_method={pruning_method}")

    def __str__(self):
        lines = [
            f"epsilon {self.epsilon:g}, bound {self.bound}, batch norm "
            + ("recalibrated" if self.recalibrated_batchnorm else "as trained"),
            f"{'compression':<22} {'level':>7} {'sparsity':>9} {'clean':>7} {'certified':>10}",
        ]
        for row in self.rows:
            if row["form"] == PRUNED:
                kind, level = row["pruning_method"], f"{row['ratio']:.2f}"
            else:
                kind, level = "quantize (weights)", f"{row['bits']} bit"
            lines.append(
                f"{kind:<22} {level:>7} {row['sparsity']:>9.4f} "
                f"{row['clean_accuracy']:>7.4f} {row['certified_accuracy']:>10.4f}"
            )
        return "\n".join(lines)


def _working_copy(network):
    """One clone of `network` per network, kept with it: every row and every later call
    (each epoch of a tuning trial, each ratio of an experiment) reuses the clone and so
    its compiled bound computation, instead of tracing a new one per call."""
    copy = network.__dict__.get("_cactus_working_copy")
    if copy is None or len(copy.weights) != len(network.weights):
        copy = keras.models.clone_model(network)
        # object.__setattr__ keeps Keras from tracking the clone as part of the network.
        object.__setattr__(network, "_cactus_working_copy", copy)
    return copy


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


def _pruning_transform(pruning_method, ratio):
    def transform(kernels):
        masks = magnitude_masks(kernels, ratio, pruning_method)
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

    Example:

    ```python
    from cactus_keras.certification import set_batchnorm_statistics

    bn_net = cactus_keras.models.cnn3(batch_norm=True)
    set_batchnorm_statistics(bn_net, x_train)     # True: there was batch norm to set
    ```
    """
    layers = [layer for layer in parse_network(network).layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
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
    ratios=(0.0, 0.5, 0.7, 0.9),
    pruning_method="global_l1",
    *,
    bits=(),
    per_channel=True,
    bound="ibp",
    input_range="auto",
    recalibrate_batchnorm=None,
    exclude_output=False,
    batch_size=None,
    verbose=0,
):
    """Clean and certified accuracy of the network pruned at each ratio by each pruning
    method, and with its kernels fake-quantized at each bit width.

    Each pruned row is one (pruning method, ratio) with the achieved sparsity over the
    pruned kernels. The network itself is not changed: each row certifies a compressed
    copy. The structured method never prunes output units (classes) and counts its
    ratio in units.

    Args:
        model_or_network: a `CactusModel` (its `network` is used) or a Keras network.
        x: evaluation inputs.
        y: their integer labels.
        epsilon: certification radius.
        ratios: pruning ratios in [0, 1), one row each per pruning method.
        pruning_method: a pruning method or a list of them ("global_l1", "local_l1",
            "global_l2_structured").
        bits: bit widths (2 to 8) of weight-only fake-quantized kernels, one row each
            (form "quantize"): symmetric, round to nearest, per output channel unless
            `per_channel=False`.
        bound: the bound method ("ibp", "crown-ibp", "crown", "best").
        input_range: the valid data range the epsilon ball is cut to; "auto" takes a
            `CactusModel`'s own `input_range` and (0, 1) for a plain network; None
            leaves the ball uncut.
        recalibrate_batchnorm: inputs used to recompute batch-norm statistics of
            each compressed copy (None keeps the trained statistics).

    Example:

    ```python
    table = cactus_keras.evaluate_compressed(model, x_test, y_test, 0.1,
                                             ratios=[0, 0.5, 0.7],
                                             pruning_method=["global_l1", "local_l1"])
    print(table)
    ```
    """
    network = network_of(model_or_network)
    epsilon = validation.check_epsilon(epsilon)
    if isinstance(input_range, str) and input_range == "auto":
        input_range = getattr(model_or_network, "input_range", (0.0, 1.0))
    input_range = validation.check_input_range(input_range)
    # The data are checked once here, before any network is compressed (certify checks
    # them again per row, cheaply).
    num_classes = int(network.outputs[0].shape[-1]) if getattr(network, "outputs", None) else None
    validation.check_data(network, x, y, num_classes, input_range)
    if recalibrate_batchnorm is not None:
        validation.check_in_range(recalibrate_batchnorm, input_range, "recalibrate_batchnorm")
    ratios = [check_ratio(r, "ratios") for r in ratios]
    methods = [pruning_method] if isinstance(pruning_method, str) else list(pruning_method)
    methods = [check_pruning_method(m) for m in methods]
    bits = [check_bits(b) for b in bits]
    settings = [
        (dict(form=PRUNED, pruning_method=method, ratio=ratio, bits=None),
         _pruning_transform(method, ratio), output_is_excluded(method, exclude_output))
        for method in methods for ratio in ratios
    ] + [
        (dict(form=QUANTIZED, pruning_method=None, ratio=None, bits=b),
         _quantization_transform(b, per_channel), exclude_output)
        for b in bits
    ]
    recalibrated = False
    rows = []
    copy = _working_copy(network)
    # The kernels depend only on whether the output layer is excluded: read the graph
    # once per case, not once per row.
    kernels_of = {}
    for level, transform, excluded in settings:
        if excluded not in kernels_of:
            kernels_of[excluded] = compressible_kernels(network, excluded)
        kernels = kernels_of[excluded]
        achieved = _compress_into(copy, network, kernels, transform)
        if recalibrate_batchnorm is not None:
            recalibrated = set_batchnorm_statistics(copy, recalibrate_batchnorm) or recalibrated
        result = certify(copy, x, y, epsilon, bound=bound, batch_size=batch_size,
                         input_range=input_range, verbose=verbose)
        rows.append(
            {
                **level,
                "sparsity": achieved,
                "clean_accuracy": result.clean_accuracy,
                "certified_accuracy": result.certified_accuracy,
                "samples": int(len(result.labels)),
            }
        )
    return CompressionTable(rows=rows, epsilon=epsilon, bound=bound,
                            recalibrated_batchnorm=recalibrated, input_range=input_range)
