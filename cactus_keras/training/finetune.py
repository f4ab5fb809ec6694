"""Certified fine-tuning of one fixed compressed network (the `ibp-then-finetune`
baseline's second stage).

CACTUS trains the full network and its compressed members together. The classical
alternative is to compress a trained network once and fine-tune what is left. These
models are that alternative, in the same `CactusModel` machinery (same loss, same
metrics, same `fit`): the compression set is a single member, the compressed network,
and its kernels are a fixed transform of the trainable ones.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cactus_keras.compression.pruning import (
    check_pruning_method,
    check_ratio,
    magnitude_masks,
    output_is_excluded,
    prunable_kernels,
)
from cactus_keras.compression.quantization import check_bits, fake_quantize
from cactus_keras.training.model import CactusModel


class CompressedFineTuning(CactusModel):
    """Base class: certified training of `compress(kernels)` instead of the kernels.

    Subclasses define `compress(values)`, the compressed values of the prunable kernels
    (Dense and convolution kernels), through which gradients must reach the kernels.
    After `fit`, `apply_compression()` writes the compressed kernels into the network,
    which is then the deployable compressed network (save `model.network`).

    Batch-norm moving statistics stay those of the network before fine-tuning (the
    compressed pass runs in a stateless scope); recalibrate them for evaluation with
    `evaluate_compressed(..., recalibrate_batchnorm=x)` if the network has batch norm.
    """

    def __init__(self, network, epsilon, standard_weight=0.5, certified_loss="ibp",
                 input_range=(0.0, 1.0), exclude_output=False, **kwargs):
        self.exclude_output = bool(exclude_output)
        super().__init__(
            network, epsilon, compression=(), standard_weight=standard_weight,
            certified_loss=certified_loss, input_range=input_range, **kwargs,
        )

    def _create_state(self):
        self._compressed = prunable_kernels(self.network, self._excludes_output())

    def _excludes_output(self):
        return self.exclude_output

    def compress(self, values):
        raise NotImplementedError(f"{type(self).__name__} must define compress(values).")

    def member_results(self, x, y, training=True):
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        evaluate = self._evaluator(x, labels, training)
        values = self.compress([k.value for k in self._compressed])
        return [("", *evaluate(self._mapping(self._compressed, values)))]

    def apply_compression(self):
        """Writes the compressed kernels into the network's variables."""
        values = self.compress([k.value for k in self._compressed])
        for kernel, value in zip(self._compressed, values):
            kernel.assign(ops.convert_to_numpy(value))
        return self.network

    def get_config(self):
        raise NotImplementedError(
            f"{type(self).__name__} is a fine-tuning wrapper and is not saved; call "
            "`model.apply_compression()` and save `model.network` instead."
        )


class MaskedFineTuning(CompressedFineTuning):
    """Fine-tunes the network pruned once by magnitude at `ratio`, with the mask fixed.

    The mask is computed from the weights at construction and never changes; pruned
    weights receive no gradient (`kernel * mask`).

    Args:
        network: a trained Keras network.
        epsilon: the certified-training radius.
        ratio: fraction of the prunable weights removed, in [0, 1).
        method: "global_l1", "local_l1" or "global_l2_structured".
        standard_weight, certified_loss, input_range, exclude_output: as `CactusModel`
            and `Pruning`.

    Example:

    ```python
    model = cactus_keras.training.MaskedFineTuning(net, epsilon=0.1, ratio=0.7)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(x_train, y_train, epochs=2)
    pruned = model.apply_compression()
    ```
    """

    def __init__(self, network, epsilon, ratio, method="global_l1", **kwargs):
        self.ratio = check_ratio(ratio)
        self.method = check_pruning_method(method)
        super().__init__(network, epsilon, **kwargs)

    def _create_state(self):
        super()._create_state()
        masks = magnitude_masks([k.value for k in self._compressed], self.ratio, self.method)
        self._masks = [
            self.add_variable(m.shape, initializer=keras.initializers.Constant(np.asarray(m)),
                              trainable=False, name=f"fixed_mask_{i}")
            for i, m in enumerate(ops.convert_to_numpy(m) for m in masks)
        ]

    def _excludes_output(self):
        return output_is_excluded(self.method, self.exclude_output)

    def compress(self, values):
        return [v * ops.stop_gradient(m.value) for v, m in zip(values, self._masks)]


class QuantizedFineTuning(CompressedFineTuning):
    """Fine-tunes the fake-quantized network with a straight-through estimator.

    The forward pass uses `fake_quantize(kernel, bits)`; the gradient passes to the
    float kernel as if rounding were the identity (the STE of quantization-aware
    training).

    Example:

    ```python
    model = cactus_keras.training.QuantizedFineTuning(net, epsilon=0.1, bits=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(x_train, y_train, epochs=2)
    quantized = model.apply_compression()
    ```
    """

    def __init__(self, network, epsilon, bits=8, per_channel=True, **kwargs):
        self.bits = check_bits(bits)
        self.per_channel = bool(per_channel)
        super().__init__(network, epsilon, **kwargs)

    def compress(self, values):
        return [
            v + ops.stop_gradient(fake_quantize(v, self.bits, self.per_channel) - v)
            for v in values
        ]
