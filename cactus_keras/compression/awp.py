"""`AWPQuantization`: the quantization member of the compression set, trained by
adversarial weight perturbation (AWP)."""

from __future__ import annotations

from keras import ops

from cactus_keras import backend
from cactus_keras import vocabulary
from cactus_keras.compression.member import CompressionMember, register_member
from cactus_keras.compression.quantization import check_bits, fake_quantize, quantization_scale


@register_member(vocabulary.AWP_QUANTIZATION)
class AWPQuantization(CompressionMember):
    """The quantization member of the CACTUS compression set, by adversarial weight
    perturbation (AWP).

    Each step the member is the network at `theta + stop_gradient(delta*)`, where
    `delta*` approximately maximizes the member's loss over the per-weight L-infinity
    ball of radius `awp_radius * step(layer)`: `awp_steps` signed-gradient ascent steps
    from 0 (step size the radius for one step, 2.5 radius / steps otherwise).
    `step(layer)` is the quantization step of the kernel at `bits` (per output channel
    with `per_channel`), recomputed from the current weights. In evaluation the member
    is the fake-quantized network itself, so `certified_accuracy_<name>` is that of the
    quantized kernels.

    Why this bounds the quantized network: round-to-nearest moves each weight by at most
    half a step, so with `awp_radius >= 0.5` the quantized kernel lies in the ball,
    and the loss at the worst point of the ball (which AWP approximates from below) is
    at least the quantized network's loss. Training it down therefore trains the
    quantized network's loss down, without a straight-through estimator. Radii below
    0.5 do not cover rounding; larger ones also cover a few steps of clipping and
    scale drift between training and export.

    Args:
        bits: target bit width, 2 to 8.
        awp_radius: eta, the radius in quantization steps (>= 0).
        awp_steps: ascent steps (>= 1).
        per_channel: per-output-channel steps (as int8 TFLite kernels) or per tensor.
        exclude_output: leave the output layer's kernel unperturbed.
        name: member name in metrics (`certified_accuracy_<name>`).

    Example:

    ```python
    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[
        cactus_keras.Pruning((0.25, 0.75)), cactus_keras.AWPQuantization(bits=8, awp_radius=0.5)])
    ```
    """

    def __init__(self, bits=8, awp_radius=0.5, awp_steps=1, per_channel=True,
                 exclude_output=False, name="quantized"):
        super().__init__(exclude_output=exclude_output, name=name)
        self.bits = check_bits(bits)
        try:
            eta = float(awp_radius)
        except (TypeError, ValueError):
            raise TypeError(f"`awp_radius` must be a number, got {awp_radius!r}.") from None
        if not eta >= 0:
            raise ValueError(f"`awp_radius` (eta) must be >= 0, got {awp_radius!r}.")
        self.awp_radius = eta
        if isinstance(awp_steps, bool) or not isinstance(awp_steps, int) or awp_steps < 1:
            raise ValueError(f"`awp_steps` must be a positive integer, got {awp_steps!r}.")
        self.awp_steps = awp_steps
        self.per_channel = bool(per_channel)

    def radii(self, kernels):
        """Per-weight radius of the perturbation ball for each kernel value."""
        return [
            ops.stop_gradient(self.awp_radius * quantization_scale(k, self.bits, self.per_channel))
            * ops.ones_like(k)
            for k in kernels
        ]

    def step_size(self, radius):
        return radius if self.awp_steps == 1 else 2.5 * radius / self.awp_steps

    def compress(self, kernels, context):
        if not context.training:
            return [fake_quantize(k, self.bits, self.per_channel) for k in kernels]
        radii = self.radii(kernels)
        deltas = [ops.zeros_like(k) for k in kernels]

        def loss_of(values):
            return context.loss([k + d for k, d in zip(kernels, values)])

        for _ in range(self.awp_steps):
            grads = backend.gradients(loss_of, deltas)
            deltas = [
                ops.clip(d + self.step_size(r) * ops.sign(g), -r, r)
                for d, g, r in zip(deltas, grads, radii)
            ]
        return [k + ops.stop_gradient(d) for k, d in zip(kernels, deltas)]
