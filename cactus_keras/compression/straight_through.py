"""`StraightThroughQuantization`: the fake-quantized network, trained through a
straight-through estimator (the quantization-aware-training baseline)."""

from __future__ import annotations

from keras import ops

from cactus_keras import vocabulary
from cactus_keras.compression.member import CompressionMember, register_member
from cactus_keras.compression.quantization import check_bits, fake_quantize


@register_member(vocabulary.STRAIGHT_THROUGH_QUANTIZATION)
class StraightThroughQuantization(CompressionMember):
    """Fake-quantized kernels in the forward pass; the gradient passes to the float
    kernel as if rounding were the identity (the STE of quantization-aware training).

    With `CactusModel(..., include_full_network=False)` this is certified fine-tuning
    of the quantized network (the `ibp-then-finetune` baseline).

    Args:
        bits: bit width, 2 to 8.
        per_channel: per-output-channel scales (as int8 TFLite kernels) or per tensor.
        exclude_output: as `AWPQuantization`.
        name: as `AWPQuantization`.

    Example:

    ```python
    model = cactus_keras.CactusModel(
        net, epsilon=0.1, include_full_network=False,
        compression=[cactus_keras.StraightThroughQuantization(bits=8)])
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(x_train, y_train, epochs=2)
    quantized = model.apply_compression()
    ```
    """

    def __init__(self, bits=8, per_channel=True, exclude_output=False, name="quantized"):
        super().__init__(exclude_output=exclude_output, name=name)
        self.bits = check_bits(bits)
        self.per_channel = bool(per_channel)

    def compress(self, kernels, context):
        return [
            k + ops.stop_gradient(fake_quantize(k, self.bits, self.per_channel) - k)
            for k in kernels
        ]
