"""Fake quantization of kernels and the adversarial-weight-perturbation (AWP) member.

Quantization here is what int8 deployment does to weights: symmetric, round to nearest,
per tensor or per output channel, `2**(bits-1) - 1` levels each side of zero.
"""

from __future__ import annotations

import keras
from keras import ops


def check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be an integer from 2 to 8, got {bits!r}.")
    return bits


def quantization_scale(kernel, bits, per_channel=True):
    """The quantization step of `kernel`: max |w| / (2**(bits-1) - 1), per output
    channel (the kernel's last axis) or per tensor. A zero channel gets step 1."""
    levels = 2 ** (bits - 1) - 1
    magnitude = ops.abs(kernel)
    if per_channel:
        axes = tuple(range(len(kernel.shape) - 1))
        largest = ops.max(magnitude, axis=axes, keepdims=True)
    else:
        largest = ops.max(magnitude)
    return ops.where(largest > 0, largest / levels, ops.ones_like(largest))


def fake_quantize(kernel, bits=8, per_channel=True):
    """The kernel after symmetric round-to-nearest quantization, in float.

    Example:

    ```python
    q = fake_quantize(layer.kernel, bits=4)
    ```
    """
    check_bits(bits)
    levels = 2 ** (bits - 1) - 1
    scale = quantization_scale(kernel, bits, per_channel)
    return ops.clip(ops.round(kernel / scale), -levels, levels) * scale


@keras.saving.register_keras_serializable(package="cactus_keras")
class Quantization:
    """The quantization member of the CACTUS compression set, by adversarial weight
    perturbation (AWP).

    Each step the member is the network at `theta + stop_gradient(delta*)`, where
    `delta*` approximately maximizes the member's loss over the per-weight L-infinity
    ball of radius `epsilon_weight * step(layer)`: `steps` signed-gradient ascent steps
    from 0 (step size the radius for one step, 2.5 radius / steps otherwise).
    `step(layer)` is the quantization step of the kernel at `bits` (per output channel
    with `per_channel`), recomputed from the current weights.

    Why this bounds the quantized network: round-to-nearest moves each weight by at most
    half a step, so with `epsilon_weight >= 0.5` the quantized kernel lies in the ball,
    and the loss at the worst point of the ball (which AWP approximates from below) is
    at least the quantized network's loss. Training it down therefore trains the
    quantized network's loss down, without a straight-through estimator. Radii below
    0.5 do not cover rounding; larger ones also cover a few steps of clipping and
    scale drift between training and export.

    Args:
        bits: target bit width, 2 to 8.
        epsilon_weight: eta, the radius in quantization steps (>= 0).
        steps: ascent steps (>= 1).
        per_channel: per-output-channel steps (as int8 TFLite kernels) or per tensor.
        exclude_output: leave the output layer's kernel unperturbed.
        name: member name in metrics (`certified_accuracy_<name>`).

    Example:

    ```python
    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[
        cactus_keras.Pruning((0.25, 0.75)), cactus_keras.Quantization(bits=8)])
    ```
    """

    num_samples = 1

    def __init__(self, bits=8, epsilon_weight=0.5, steps=1, per_channel=True,
                 exclude_output=False, name="quantized"):
        self.bits = check_bits(bits)
        try:
            eta = float(epsilon_weight)
        except (TypeError, ValueError):
            raise TypeError(f"`epsilon_weight` must be a number, got {epsilon_weight!r}.") from None
        if not eta >= 0:
            raise ValueError(f"`epsilon_weight` (eta) must be >= 0, got {epsilon_weight!r}.")
        self.epsilon_weight = eta
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
        self.steps = steps
        self.per_channel = bool(per_channel)
        self.exclude_output = bool(exclude_output)
        self.excludes_output = self.exclude_output
        self.name = name

    def member_names(self):
        return [self.name]

    def radii(self, kernels):
        """Per-weight radius of the perturbation ball for each kernel value."""
        return [
            ops.stop_gradient(self.epsilon_weight * quantization_scale(k, self.bits, self.per_channel))
            * ops.ones_like(k)
            for k in kernels
        ]

    def step_size(self, radius):
        return radius if self.steps == 1 else 2.5 * radius / self.steps

    def get_config(self):
        return {
            "bits": self.bits,
            "epsilon_weight": self.epsilon_weight,
            "steps": self.steps,
            "per_channel": self.per_channel,
            "exclude_output": self.exclude_output,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
