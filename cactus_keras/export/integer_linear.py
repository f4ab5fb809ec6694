"""Exact integer linear maps: the int32 accumulators of CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED, computed with BLAS matrix products.

A floating-point matrix product of integers is exact when every partial sum it forms
is an integer the float type represents: whatever the order and blocking of the sums
(and fused multiply-adds), each partial sum of a column is bounded by
max|x| * sum_k |w_k|. Each map checks that bound before it multiplies and raises where
it does not hold, so the accumulators are the exact integers the interpreter computes
in int32.

Where the bound allows, the product runs in float32 (twice the speed of float64), split
along the depth into chunks whose partial sums stay below 2**24 (a convolution on the
TensorFlow path: into groups of input channels, each a convolution of its own,
`Convolution.channel_groups`); the chunks are added in float64. Elsewhere convolutions
are lowered to matrix products per block of samples (im2col: every kernel window of the
padded input becomes a row, in channels-last order; the depth split into groups of
whole kernel taps), the form BLAS is fast at. The maps return float64 arrays holding
the exact integers.

Example:

```python
conv = Convolution(weights, strides=(1, 1), dilations=(1, 1), out_hw=(28, 28),
                   pads=((1, 1), (1, 1)))
acc = conv(x - zero_point)   # exact integers (float64), (batch, 28, 28, out_channels)
```
"""

from __future__ import annotations

import numpy as np

from cactus_keras.int8.fixed_point import largest_magnitude
from cactus_keras.export.model_file import UnsupportedOperatorError

# Integers below these are exact in float32 / float64, and so are all their sums that
# stay below: every partial sum of a product is kept under the float32 limit per chunk
# of the depth, and the sum of the chunks under the float64 one.
FLOAT32_EXACT = 2.0**24
FLOAT64_EXACT = 2.0**53
# Rows x depth of one im2col block (float32): keeps the block near 16 MiB.
BLOCK_ELEMENTS = 2**22


# Convolutions run as the Keras backend's float32 convolution on the CPU where the
# backend has one that sums directly (TensorFlow, JAX); False: always NumPy im2col.
BACKEND_CONVOLUTION = True
_CONVOLVE = {}


def _backend_convolution():
    """fn(x, kernel, strides, dilations) -> NumPy float32: a VALID convolution pinned to
    the CPU (a GPU's cuDNN may pick Winograd or FFT algorithms, whose intermediate values
    are not integers), or None for other backends."""
    if "fn" in _CONVOLVE:
        return _CONVOLVE["fn"]
    import keras

    backend = keras.backend.backend()
    fn = None
    if backend == "tensorflow":
        import tensorflow as tf

        def fn(x, kernel, strides, dilations):
            with tf.device("/CPU:0"):
                return tf.nn.convolution(x, kernel, strides=list(strides), padding="VALID",
                                         dilations=list(dilations)).numpy()
    elif backend == "jax":
        import jax

        cpu = jax.devices("cpu")[0]

        def fn(x, kernel, strides, dilations):
            out = jax.lax.conv_general_dilated(
                jax.device_put(x, cpu), jax.device_put(kernel, cpu), tuple(strides),
                "VALID", rhs_dilation=tuple(dilations),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST)
            return np.asarray(out)
    _CONVOLVE["fn"] = fn
    return fn


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


class _Casts(dict):
    """{dtype: the integer matrix in that dtype}, each cast made on first use."""

    def __init__(self, source):
        super().__init__()
        self.source = source

    def __missing__(self, dtype):
        value = self[dtype] = self.source().astype(dtype)
        return value


class _ExactProduct:
    """Shared by the maps: the integer weights as a (depth, units) matrix in float32 and
    float64, with their absolute values, and the split of the depth into chunks whose
    float32 products are exact.

    For inputs bounded by |x| <= B, a chunk [s, e) of the depth is exact in float32 when
    B * max_n sum_{s <= k < e} |w_kn| < 2**24: every partial sum BLAS forms, in any
    order, is an integer below that. The chunks' results are added in float64, exact
    while B * max_n sum_k |w_kn| < 2**53 (checked; beyond, the map refuses).
    """

    def __init__(self, matrix, op_label):
        matrix = np.asarray(matrix, np.int64)
        # Cast on first use: a path that never runs in float64 never pays for the copy
        # (cnn7's dense layer: 100 MB per copy, made at every verify_tflite call).
        self.matrix = _Casts(lambda: matrix)
        self.absolute = _Casts(lambda: np.abs(matrix))
        self.backend_cache = {}  # the backend's constants of these weights (integer_backend)
        # cumulative[k, n] = sum_{k' < k} |w_k'n|: partial column sums of any chunk.
        self.cumulative = np.concatenate(
            [np.zeros((1, matrix.shape[1]), np.int64), np.cumsum(np.abs(matrix), axis=0)])
        self.column_l1 = float(self.cumulative[-1].max(initial=0))
        self.op_label = op_label
        self._plans = {}

    def check(self, x_bound):
        if float(x_bound) * self.column_l1 >= FLOAT64_EXACT:
            raise UnsupportedOperatorError(
                f"{self.op_label}: accumulators too large for exact float64 integer "
                "arithmetic.")

    def plan(self, x_bound, step=1):
        """The depth chunks [(start, end)] that are exact in float32 for |x| <= x_bound,
        or None where a single step of the depth already breaks the float32 limit (then
        float64). `step` rows make one unit that is never split (a convolution's kernel
        tap: `step` = its channels); start and end count those units."""
        self.check(x_bound)
        # Plans are cached per power of two of the bound (the bound is rounded up).
        bound = 2.0 ** np.ceil(np.log2(max(float(x_bound), 1.0)))
        if (bound, step) not in self._plans:
            self._plans[(bound, step)] = self._chunks(bound, self.cumulative[::step])
        return self._plans[(bound, step)]

    @staticmethod
    def _chunks(bound, cumulative):
        limit = FLOAT32_EXACT / bound  # sum of |w| per column allowed in one chunk
        depth = cumulative.shape[0] - 1
        chunks, start = [], 0
        while start < depth:
            # The largest end with max_n (C[end] - C[start]) < limit (monotone in end).
            low, high = start, depth
            while low < high:
                middle = (low + high + 1) // 2
                if (cumulative[middle] - cumulative[start]).max() < limit:
                    low = middle
                else:
                    high = middle - 1
            if low == start:
                return None
            chunks.append((start, low))
            start = low
        # As many chunks of (nearly) equal depth, in multiples of 8 where possible, if
        # they keep the bound too: BLAS and oneDNN's blocked convolutions run at full
        # speed on each, instead of a short tail.
        edges = np.linspace(0, depth, len(chunks) + 1)
        for unit in (8, 1):
            even = (np.round(edges / unit) * unit).astype(int)
            even[-1] = depth
            pairs = list(zip(even[:-1].tolist(), even[1:].tolist()))
            if all(s < e and (cumulative[e] - cumulative[s]).max() < limit for s, e in pairs):
                return pairs
        return chunks

    def product(self, rows, x_bound, absolute):
        """rows (M, depth) of integers with |rows| <= x_bound -> exact (M, units), float32
        where one chunk covers the depth (the caller widens it), else float64."""
        chunks = self.plan(x_bound)
        weights = self.absolute if absolute else self.matrix
        if chunks is None:
            return np.asarray(rows, np.float64) @ weights[np.float64]
        rows = np.asarray(rows, np.float32)
        w = weights[np.float32]
        if len(chunks) == 1:
            return rows @ w
        out = None
        for start, end in chunks:
            # A contiguous copy: BLAS runs at half speed on a strided column slice.
            part = np.ascontiguousarray(rows[:, start:end]) @ w[start:end]
            if out is None:
                out = part.astype(np.float64)
            else:
                out += part
        return out


class FullyConnected(_ExactProduct):
    """x @ W.T for integer x (batch, ..., depth) and integer weights W (units, depth);
    exact, as float64."""

    def __call__(self, x, absolute=False):
        flat = np.asarray(x).reshape(-1, x.shape[-1])
        out = self.product(flat, largest_magnitude(flat), absolute)
        out = out.astype(np.float64, copy=False)
        return out.reshape(x.shape[:-1] + (out.shape[-1],))


class Convolution(_ExactProduct):
    """2-D convolution (NHWC, zero padding of the centred input) with integer weights
    (out_channels, kh, kw, channels), as im2col matrix products.

    The kernel windows of a block of samples are written as rows (N * out_h * out_w,
    kh * kw * C) in the input's own channels-last order (each tap is one strided copy
    of C contiguous values per position, no transposition), then multiplied with the
    (kh * kw * C, out_channels) weights. The taps are grouped so that each group's
    float32 sums stay exact (the bound of `_ExactProduct`, per group of whole taps);
    each group is its own product and the groups are added in float64.
    """

    def __init__(self, weights, strides, dilations, out_hw, pads, op_label):
        out_channels, kh, kw, channels = weights.shape
        super().__init__(np.asarray(weights).reshape(out_channels, -1).T, op_label)
        self.kernel = (kh, kw)
        self.channels = channels
        self.geometry = (strides, dilations, out_hw, pads)
        self.out_channels = out_channels
        self._kernels = {}

    def tap_groups(self, x_bound):
        """Consecutive taps [(start, end)] (in the weights' (kh, kw) order) whose
        float32 sums are exact for |x| <= x_bound, or None where a single tap is not
        (then the product runs in float64): the depth plan with whole taps as units."""
        return self.plan(x_bound, step=self.channels)

    def channel_groups(self, x_bound):
        """Consecutive input channels [(start, end)] whose float32 convolution over all
        taps is exact for |x| <= x_bound, or None where one channel's taps are not.

        The same bound as the depth plan with another order of the depth: a group's
        partial sums are sums of products w_tcn x over its channels c (all taps t), so
        they stay below x_bound * max_n sum_{c in group, t} |w_tcn| < 2**24 in any
        order. Each group is a convolution over its own channels only, so the groups
        together cost the flops of one convolution (a tap group zero-fills the other
        taps of a whole kernel: a full convolution per group)."""
        self.check(x_bound)
        bound = 2.0 ** np.ceil(np.log2(max(float(x_bound), 1.0)))
        key = (bound, "channels")
        if key not in self._plans:
            (kh, kw), channels = self.kernel, self.channels
            absolute = np.diff(self.cumulative, axis=0)  # |w| per depth row, tap-major
            per_channel = absolute.reshape(kh * kw, channels, -1).sum(0)
            cumulative = np.concatenate([np.zeros((1, per_channel.shape[1]), np.int64),
                                         np.cumsum(per_channel, axis=0)])
            self._plans[key] = self._chunks(bound, cumulative)
        return self._plans[key]

    def _channel_kernels(self, groups, absolute):
        """One float32 (kh, kw, end - start, out_channels) kernel per channel group."""
        (kh, kw), channels = self.kernel, self.channels
        weights = (self.absolute if absolute else self.matrix)[np.float32]
        kernel = weights.reshape(kh, kw, channels, self.out_channels)
        return [np.ascontiguousarray(kernel[:, :, start:end]) for start, end in groups]

    def __call__(self, x, absolute=False):
        """Exact float64 (N, out_h, out_w, out_channels) of integer x (N, H, W, C)."""
        x = np.asarray(x, np.float32)  # integers below 2**24: exact
        groups = self.tap_groups(largest_magnitude(x))
        strides, dilations = self.geometry[:2]
        # TensorFlow's CPU convolution takes strides or dilations, not both at once.
        both = max(strides) > 1 and max(dilations) > 1
        if (groups is not None and BACKEND_CONVOLUTION and not both
                and _backend_convolution() is not None):
            return self._backend(x, groups, absolute)
        return self._im2col(x, groups, absolute)

    def _group_kernels(self, groups, absolute):
        """One float32 (kh, kw, C, out_channels) kernel per tap group, the other taps
        zero (a zero adds nothing to any partial sum, so each group's bound holds)."""
        key = (tuple(groups), absolute)
        if key not in self._kernels:
            (kh, kw), channels = self.kernel, self.channels
            weights = (self.absolute if absolute else self.matrix)[np.float32]
            taps_ = weights.reshape(kh * kw, channels, self.out_channels)
            kernels = []
            for start, end in groups:
                k = np.zeros_like(taps_)
                k[start:end] = taps_[start:end]
                kernels.append(k.reshape(kh, kw, channels, self.out_channels))
            self._kernels[key] = kernels
        return self._kernels[key]

    def _backend(self, x, groups, absolute):
        """The product as the Keras backend's float32 convolution on the CPU, one per tap
        group, the groups added in float64. The CPU kernels (oneDNN / Eigen for
        TensorFlow, XLA for JAX) sum the products directly (GEMM or direct loops, never
        Winograd or FFT transforms), so every partial sum is an integer the group's bound
        keeps below 2**24: exact, like the im2col product."""
        strides, dilations, out_hw, pads = self.geometry
        if any(p for pair in pads for p in pair):
            x = np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
        convolve = _backend_convolution()
        out = None
        for kernel in self._group_kernels(groups, absolute):
            part = convolve(x, kernel, strides, dilations)[:, : out_hw[0], : out_hw[1]]
            if out is None:
                out = part.astype(np.float64)
            else:
                out += part
        return out

    def _im2col(self, x, groups, absolute):
        dtype = np.float32 if groups is not None else np.float64
        taps_count = self.kernel[0] * self.kernel[1]
        groups = groups or [(0, taps_count)]
        weights = (self.absolute if absolute else self.matrix)[dtype]
        (kh, kw), (strides, dilations, out_hw, pads) = self.kernel, self.geometry
        channels = self.channels
        positions = int(np.prod(out_hw))
        chunk = max(1, BLOCK_ELEMENTS // max(positions * channels * taps_count, 1))
        out = np.empty((x.shape[0], positions, self.out_channels), np.float64)
        for first in range(0, x.shape[0], chunk):
            views = [view for _, _, view in taps(x[first: first + chunk].astype(dtype, copy=False),
                                                 kh, kw, strides, dilations, out_hw, pads, 0)]
            n = views[0].shape[0]
            for index, (start, end) in enumerate(groups):
                cols = np.empty((n,) + tuple(out_hw) + ((end - start) * channels,), dtype)
                for t in range(start, end):
                    cols[..., (t - start) * channels: (t - start + 1) * channels] = views[t]
                part = cols.reshape(n * positions, -1) @ weights[start * channels: end * channels]
                part = part.reshape(n, positions, self.out_channels)
                if index == 0:
                    out[first: first + n] = part
                else:
                    out[first: first + n] += part
        return out.reshape((x.shape[0],) + tuple(out_hw) + (self.out_channels,))


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
        """Exact float64 (N, out_h, out_w, out_channels) of integer x (N, H, W, C)."""
        x = np.asarray(x, np.float64)
        self.check(largest_magnitude(x))  # each output sums kh * kw products in float64
        (kh, kw), (strides, dilations, out_hw, pads) = self.kernel, self.geometry
        weights = (self.absolute if absolute else self.matrix)[np.float64]
        out = np.zeros((x.shape[0],) + tuple(out_hw) + (self.out_channels,))
        for i, j, view in taps(x, kh, kw, strides, dilations, out_hw, pads, 0.0):
            if self.multiplier > 1:
                view = np.repeat(view, self.multiplier, axis=-1)
            out += view * weights[i * kw + j]
        return out
