"""Fake quantization of kernels: what int8 deployment does to weights, in float.

Quantization here is what int8 deployment does to weights: symmetric, round to nearest,
per tensor or per output channel, `2**(bits-1) - 1` levels each side of zero.
"""

from __future__ import annotations

from keras import ops


def check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be an integer from 2 to 8, got {bits!r}.")
    return bits


def quantization_scale(kernel, bits, per_channel=True):
    """The quantization step of `kernel`: max |w| / (2**(bits-1) - 1), per output
    channel (the kernel's last axis) or per tensor. A zero channel gets step 1.

    Example:

    ```python
    from cactus_keras.compression import quantization_scale

    kernel = np.array([[0.5, -2.0], [-1.27, 1.0]], "float32")
    print(quantization_scale(kernel, bits=8))   # per output channel: [0.01, 2/127]
    ```
    """
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
    from cactus_keras.compression import fake_quantize

    kernel = net.get_layer("logits").kernel
    q = fake_quantize(kernel, bits=4)       # 15 levels per output channel, in float
    ```
    """
    check_bits(bits)
    levels = 2 ** (bits - 1) - 1
    scale = quantization_scale(kernel, bits, per_channel)
    return ops.clip(ops.round(kernel / scale), -levels, levels) * scale
