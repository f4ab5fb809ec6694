"""Exact integer linear maps: the int32 accumulators of CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED, computed with BLAS matrix products.

A floating-point matrix product of integers is exact when every partial sum it forms
is an integer the float type represents: whatever the order and blocking of the sums
(and fused multiply-adds), each partial sum of a column is bounded by
max|x| * sum_k |w_k|. Each map checks that bound before it multiplies (below 2**53
for float64) and raises where it does not hold, so the accumulators are the exact
integers the interpreter computes in int32.

Convolutions are lowered to one matrix product per chunk of samples (im2col: every
kernel window of the padded input becomes a row), the form BLAS is fast at.

Example:

```python
conv = Convolution(weights, strides=(1, 1), dilations=(1, 1), out_hw=(28, 28),
                   pads=((1, 1), (1, 1)))
acc = conv(x - zero_point)            # int64, (batch, 28, 28, out_channels)
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.export.model_file import UnsupportedOperatorError

# Largest integer float64 holds exactly with every smaller one: partial sums stay below.
FLOAT64_EXACT = 2.0**53
# Rows x depth of one im2col block (float64): keeps the block near 16 MiB.
BLOCK_ELEMENTS = 2**21


def window(size, kernel, stride, dilation, padding, op_label):
    """(output size, padding before, padding after) with TFLite's SAME/VALID rules."""
    effective = (kernel - 1) * dilation + 1
    if padding == 0:  # SAME
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        return out, total // 2, total - total // 2
    if padding == 1:  # VALID
        return (size - effective + stride) // stride, 0, 0
    raise UnsupportedOperatorError(f"{op_label}: unknown padding {padding}.")


def taps(x, kh, kw, strides, dilations, out_hw, pads, fill):
    """Yields (i, j, view) of the padded input for every kernel tap, view shape
    (N, out_h, out_w, C)."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilations, out_hw
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                          j * dw: j * dw + sw * (ow - 1) + 1: sw, :]


def exact_integers(values):
    """float products of integers -> int64 (they are integers already; rint drops the
    sign of zero and guards the conversion)."""
    return np.rint(values).astype(np.int64)


class _ExactProduct:
    """Shared by the maps: the weights as a float64 matrix (depth, units), its absolute
    value, and the exactness bound check."""

    def __init__(self, matrix, op_label):
        matrix = np.asarray(matrix, np.int64)
        self.matrix = matrix.astype(np.float64)
        self.absolute = np.abs(self.matrix)
        # The largest sum_k |w_k| over output units bounds every partial sum per |x|.
        self.column_l1 = float(self.absolute.sum(axis=0).max(initial=0.0))
        self.op_label = op_label

    def check(self, x_bound):
        if float(x_bound) * self.column_l1 >= FLOAT64_EXACT:
            raise UnsupportedOperatorError(
                f"{self.op_label}: accumulators too large for exact float64 integer "
                "arithmetic.")

    def product(self, rows, absolute):
        return rows @ (self.absolute if absolute else self.matrix)


class FullyConnected(_ExactProduct):
    """x @ W.T for x (batch, ..., depth) and integer weights W (units, depth)."""

    def __call__(self, x, absolute=False):
        x = np.asarray(x, np.float64)
        self.check(np.abs(x).max(initial=0.0))
        return exact_integers(self.product(x, absolute))


class Convolution(_ExactProduct):
    """2-D convolution (NHWC, zero padding of the centred input) with integer weights
    (out_channels, kh, kw, channels), as im2col matrix products."""

    def __init__(self, weights, strides, dilations, out_hw, pads, op_label):
        out_channels, kh, kw, channels = weights.shape
        super().__init__(np.asarray(weights).reshape(out_channels, -1).T, op_label)
        self.kernel = (kh, kw)
        self.geometry = (strides, dilations, out_hw, pads)
        self.out_channels = out_channels

    def columns(self, x):
        """(N * out_h * out_w, kh * kw * C) rows of kernel windows."""
        (kh, kw), (strides, dilations, out_hw, pads) = self.kernel, self.geometry
        n, channels = x.shape[0], x.shape[-1]
        cols = np.empty((n,) + tuple(out_hw) + (kh, kw, channels), x.dtype)
        for i, j, view in taps(x, kh, kw, strides, dilations, out_hw, pads, 0):
            cols[:, :, :, i, j, :] = view
        return cols.reshape(-1, kh * kw * channels)

    def __call__(self, x, absolute=False):
        x = np.asarray(x, np.float64)
        self.check(np.abs(x).max(initial=0.0))
        out_hw = self.geometry[2]
        rows_per_sample = int(np.prod(out_hw)) * self.matrix.shape[0]
        chunk = max(1, BLOCK_ELEMENTS // max(rows_per_sample, 1))
        out = np.empty((x.shape[0],) + tuple(out_hw) + (self.out_channels,), np.int64)
        for start in range(0, x.shape[0], chunk):
            block = self.product(self.columns(x[start: start + chunk]), absolute)
            out[start: start + chunk] = exact_integers(block).reshape(
                (-1,) + tuple(out_hw) + (self.out_channels,))
        return out


class DepthwiseConvolution(_ExactProduct):
    """Depthwise 2-D convolution with integer weights (1, kh, kw, channels * multiplier):
    elementwise products summed over the kernel taps."""

    def __init__(self, weights, multiplier, strides, dilations, out_hw, pads, op_label):
        _, kh, kw, out_channels = weights.shape
        super().__init__(np.asarray(weights).reshape(kh * kw, out_channels), op_label)
        self.kernel = (kh, kw)
        self.multiplier = multiplier
        self.geometry = (strides, dilations, out_hw, pads)
        self.out_channels = out_channels

    def __call__(self, x, absolute=False):
        x = np.asarray(x, np.float64)
        self.check(np.abs(x).max(initial=0.0))
        (kh, kw), (strides, dilations, out_hw, pads) = self.kernel, self.geometry
        weights = self.absolute if absolute else self.matrix
        out = np.zeros((x.shape[0],) + tuple(out_hw) + (self.out_channels,))
        for i, j, view in taps(x, kh, kw, strides, dilations, out_hw, pads, 0.0):
            if self.multiplier > 1:
                view = np.repeat(view, self.multiplier, axis=-1)
            out += view * weights[i * kw + j]
        return exact_integers(out)
