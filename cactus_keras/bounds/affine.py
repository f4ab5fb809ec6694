"""Rules for affine Keras layers, each given by its linear map, |map| and adjoint."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from cactus_keras.bounds.rules import (AffineRule, RefusedLayerError, UnsupportedLayerError,
                                       register_rule)


def _merge_spec_axis(coefficients):
    """(batch, specs, *shape) -> (batch * specs, *shape), and the way back."""
    shape = ops.shape(coefficients)
    batch, specs = shape[0], shape[1]
    merged = ops.reshape(coefficients, (-1, *coefficients.shape[2:]))

    def split(x):
        return ops.reshape(x, (batch, specs, *x.shape[1:]))

    return merged, split


@register_rule(keras.layers.Dense)
class DenseRule(AffineRule):
    """`x @ kernel + bias` on the last axis."""

    def parameters(self, clean_inputs, training):
        layer = self.layer
        if getattr(layer, "quantization_mode", None):
            raise UnsupportedLayerError(
                f"Dense layer '{layer.name}' is quantized in Keras "
                f"({layer.quantization_mode}); bound a float model and use "
                "cactus_keras's fake quantization instead."
            )
        return layer.kernel, layer.bias

    def linear(self, inputs, params):
        return ops.matmul(inputs[0], params[0])

    def abs_linear(self, inputs, params):
        return ops.matmul(inputs[0], ops.abs(params[0]))

    def offset(self, params):
        return params[1]

    def transpose(self, coefficients, params):
        return [ops.matmul(coefficients, ops.transpose(params[0]))]


def _conv_output_padding(in_size, kernel, stride, dilation, padding):
    """The output_padding that makes conv_transpose return exactly `in_size`."""
    effective = (kernel - 1) * dilation + 1
    if padding == "valid":
        out = (in_size - effective) // stride + 1
        return in_size - (out - 1) * stride - effective
    out = -(-in_size // stride)
    return in_size - (out - 1) * stride - effective + 2 * (effective // 2)


@register_rule(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
class ConvRule(AffineRule):
    """N-d convolution; the adjoint is the transposed convolution."""

    def __init__(self, layer, input_shapes):
        super().__init__(layer, input_shapes)
        if layer.groups != 1:
            raise RefusedLayerError(
                f"Conv layer '{layer.name}' uses groups={layer.groups}; only groups=1 "
                "has a bound rule."
            )
        if layer.padding not in ("valid", "same"):
            raise RefusedLayerError(
                f"Conv layer '{layer.name}' uses padding='{layer.padding}'; bounds "
                "support 'valid' and 'same'."
            )
        # Checked here, eagerly: the offset is used inside compiled steps.
        if layer.data_format == "channels_first" and layer.use_bias:
            self._check_channels_first_bias()

    def parameters(self, clean_inputs, training):
        return self.layer.kernel, self.layer.bias

    def _conv(self, x, kernel):
        layer = self.layer
        return ops.conv(
            x,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )

    def linear(self, inputs, params):
        return self._conv(inputs[0], params[0])

    def abs_linear(self, inputs, params):
        return self._conv(inputs[0], ops.abs(params[0]))

    def offset(self, params):
        bias = params[1]
        if bias is None:
            return None
        if self.layer.data_format == "channels_first":
            # An explicit broadcast along the channels: `ops.add` would become
            # TensorFlow's BiasAdd, which fails on this pass's constant shapes in a
            # compiled step (see also `_check_channels_first_bias`).
            rank = len(self.layer.kernel_size)
            out_shape = tuple(self.layer.compute_output_shape((1, *self.input_shapes[0])))
            return ops.reshape(bias, (1, -1) + (1,) * rank) * ops.ones(out_shape, bias.dtype)
        return bias

    def _check_channels_first_bias(self):
        """Refuses a channels-first layer whose bias Keras does not add along the
        channels in every call.

        Keras adds a channels-first bias with `ops.add`, which on TensorFlow becomes a
        BiasAdd along the last axis when that axis is known to have `filters` elements
        too: in eager calls, while a compiled call adds it along the channels.
        `model(x)` and `model.predict(x)` then disagree, and no certificate can
        describe the network. The same `ops.add` runs here on a probe, so the check
        follows Keras on any backend (on JAX it always passes)."""
        layer = self.layer
        rank = len(layer.kernel_size)
        out_shape = tuple(layer.compute_output_shape((1, *self.input_shapes[0])))
        probe = np.arange(1, layer.filters + 1, dtype="float32").reshape((1, -1) + (1,) * rank)
        added = ops.convert_to_numpy(ops.add(ops.zeros(out_shape), probe))
        if not np.array_equal(added, np.broadcast_to(probe, out_shape)):
            raise RefusedLayerError(
                f"Conv layer '{layer.name}' (data_format='channels_first') has as many "
                f"filters as its output's last axis ({layer.filters}): Keras on "
                f"{keras.backend.backend()} then adds the bias along that axis in eager "
                "calls and along the channels in compiled ones, so model(x) and "
                "model.predict(x) disagree and no certificate can describe it. Use "
                "data_format='channels_last', or another number of filters."
            )

    def transpose(self, coefficients, params):
        layer = self.layer
        (in_shape,) = self.input_shapes
        spatial = in_shape[1:] if layer.data_format == "channels_first" else in_shape[:-1]
        output_padding = tuple(
            _conv_output_padding(n, k, s, d, layer.padding)
            for n, k, s, d in zip(
                spatial, layer.kernel_size, layer.strides, layer.dilation_rate
            )
        )
        merged, split = _merge_spec_axis(coefficients)
        result = ops.conv_transpose(
            merged,
            _dilated_kernel(params[0], layer.dilation_rate),
            strides=layer.strides,
            padding=layer.padding,
            output_padding=output_padding,
            data_format=layer.data_format,
            dilation_rate=1,
        )
        return [split(result)]


def _dilated_kernel(kernel, dilation_rate):
    """The kernel of a dilated convolution as an undilated one: its taps spread
    `dilation_rate` apart with zeros between them. TensorFlow's CPU kernels of the
    transposed convolution refuse dilation rates above 1 unless oneDNN runs (it does
    not on CPUs without AVX-512); this form is the same linear map on every backend."""
    rates = tuple(int(d) for d in dilation_rate)
    if all(d == 1 for d in rates):
        return kernel
    spatial = tuple(kernel.shape[:-2])
    for axis, (size, rate) in enumerate(zip(spatial, rates)):
        if rate == 1 or size == 1:
            continue
        # (size, ...) -> (size, rate, ...) with zeros after each tap, then drop the
        # trailing rate - 1 zeros: (size - 1) * rate + 1 along this axis.
        moved = ops.moveaxis(kernel, axis, 0)
        expanded = ops.expand_dims(moved, 1)
        pad = [(0, 0)] * len(expanded.shape)
        pad[1] = (0, rate - 1)
        spread = ops.reshape(ops.pad(expanded, pad), (size * rate, *moved.shape[1:]))
        kernel = ops.moveaxis(spread[: (size - 1) * rate + 1], 0, axis)
    return kernel


class ElementwiseAffineRule(AffineRule):
    """`x * scale + offset` with scale and offset broadcast over the batch.

    The default `parameters` probes the layer with zeros and ones, which is exact for
    any elementwise affine layer (Rescaling, Normalization) and needs no knowledge of
    how the layer stores its constants.

    Example:

    ```python
    class Shift(keras.layers.Layer):            # x + 0.5: elementwise affine
        def call(self, x):
            return x + 0.5

    cactus_keras.bounds.register_rule(Shift)(cactus_keras.bounds.ElementwiseAffineRule)
    shifted = keras.Sequential([keras.Input((28, 28, 1)), Shift(), keras.layers.Flatten(),
                                keras.layers.Dense(10)])
    result = cactus_keras.certify(shifted, x_test, y_test, epsilon=0.01, bound="crown")
    ```
    """

    def parameters(self, clean_inputs, training):
        shape = (1, *self.input_shapes[0])
        zeros = ops.zeros(shape, dtype=self.compute_dtype)
        offset = self.layer(zeros, training=False)
        scale = self.layer(ops.ones(shape, dtype=self.compute_dtype), training=False) - offset
        return scale, offset

    def linear(self, inputs, params):
        return inputs[0] * params[0]

    def abs_linear(self, inputs, params):
        return inputs[0] * ops.abs(params[0])

    def offset(self, params):
        return params[1]

    def transpose(self, coefficients, params):
        return [coefficients * ops.expand_dims(params[0], 1)]


register_rule(keras.layers.Rescaling, keras.layers.Normalization)(ElementwiseAffineRule)


@register_rule(keras.layers.BatchNormalization)
class BatchNormalizationRule(ElementwiseAffineRule):
    """Batch norm as a per-channel affine map.

    At inference the moving statistics define it. In a training pass the statistics
    are those of the clean batch, so bounds and the clean forward pass use the same
    affine map (the bounds are then valid for that map, as in IBP training).
    """

    def parameters(self, clean_inputs, training):
        layer = self.layer
        rank = len(self.input_shapes[0]) + 1
        axis = layer.axis % rank
        reduce_axes = [i for i in range(rank) if i != axis]
        broadcast = [1] * rank
        broadcast[axis] = self.input_shapes[0][axis - 1]
        if training and layer.trainable:
            if getattr(layer, "renorm", False):
                raise UnsupportedLayerError(
                    f"BatchNormalization '{layer.name}' uses renorm, which has no "
                    "bound rule in training; set renorm=False."
                )
            if clean_inputs is None:
                raise ValueError(
                    f"BatchNormalization '{layer.name}' needs the clean inputs in a "
                    "training pass; pass `clean=` to the interval pass."
                )
            mean, variance = ops.moments(clean_inputs[0], axes=reduce_axes)
        else:
            mean, variance = layer.moving_mean, layer.moving_variance
        scale = ops.rsqrt(ops.cast(variance, self.compute_dtype) + layer.epsilon)
        if layer.scale:
            scale = scale * layer.gamma
        offset = -ops.cast(mean, self.compute_dtype) * scale
        if layer.center:
            offset = offset + layer.beta
        return ops.reshape(scale, broadcast), ops.reshape(offset, broadcast)

    def forward(self, inputs, params, training):
        # The layer itself updates its moving statistics in training.
        return self.layer(inputs[0], training=training)


@register_rule(
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
class IdentityRule(AffineRule):
    """Layers that are the identity at inference (dropout, noise, regularizers).

    Bounds describe the inference-time network; in training the clean pass still
    applies the layer.
    """

    def forward(self, inputs, params, training):
        return self.layer(inputs[0], training=training)

    def linear(self, inputs, params):
        return inputs[0]

    def transpose(self, coefficients, params):
        return [coefficients]


@register_rule(keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute)
class ReshapeRule(AffineRule):
    """Layers that only move elements; the adjoint moves them back."""

    def linear(self, inputs, params):
        return self.layer(inputs[0])

    def transpose(self, coefficients, params):
        (in_shape,) = self.input_shapes
        layer = self.layer
        if isinstance(layer, keras.layers.Permute):
            inverse = [0] * len(layer.dims)
            for i, d in enumerate(layer.dims):
                inverse[d - 1] = i + 1
            return [ops.transpose(coefficients, (0, 1, *[d + 1 for d in inverse]))]
        if isinstance(layer, keras.layers.Flatten) and layer.data_format == "channels_first" and len(in_shape) > 1:
            # Flatten moved channels last before reshaping: undo both steps.
            moved = (*in_shape[1:], in_shape[0])
            back = ops.reshape(coefficients, (*ops.shape(coefficients)[:2], *moved))
            rank = len(in_shape)
            return [ops.transpose(back, (0, 1, rank + 1, *range(2, rank + 1)))]
        return [ops.reshape(coefficients, (*ops.shape(coefficients)[:2], *in_shape))]


def _spatial_margins(layer, rank):
    """(axes of the sample shape, (before, after) per axis) of a padding or cropping
    layer on samples of `rank` dimensions (spatial axes and one channel axis)."""
    margins = layer.padding if hasattr(layer, "padding") else layer.cropping
    if isinstance(margins[0], int):  # the 1D layers store one (before, after) pair
        margins = (margins,)
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    axes = range(1, rank) if first else range(rank - 1)
    return list(axes), [tuple(m) for m in margins]


def _crop(coefficients, axes, margins):
    index = [slice(None)] * len(coefficients.shape)
    for axis, (before, after) in zip(axes, margins):
        size = coefficients.shape[axis + 2]
        index[axis + 2] = slice(before, size - after)
    return coefficients[tuple(index)]


def _pad(coefficients, axes, margins):
    widths = [(0, 0)] * len(coefficients.shape)
    for axis, margin in zip(axes, margins):
        widths[axis + 2] = margin
    return ops.pad(coefficients, widths)


@register_rule(
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
)
class PaddingRule(AffineRule):
    """Zero padding and cropping: each is the other's adjoint."""

    def linear(self, inputs, params):
        return self.layer(inputs[0])

    def transpose(self, coefficients, params):
        (in_shape,) = self.input_shapes
        axes, margins = _spatial_margins(self.layer, len(in_shape))
        if hasattr(self.layer, "padding"):
            return [_crop(coefficients, axes, margins)]
        return [_pad(coefficients, axes, margins)]


def _channel_axis(data_format, rank):
    """The channel axis of a shape without its batch axis."""
    return 0 if data_format == "channels_first" else rank - 1


@register_rule(
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
class AveragePoolingRule(AffineRule):
    """Average pooling is linear with non-negative weights.

    Its adjoint is a transposed sum-pooling per channel, after dividing by the number
    of valid elements of each window ('same' padding does not count padded elements).
    """

    def linear(self, inputs, params):
        return self.layer(inputs[0])

    def _window_ops(self, spatial):
        layer = self.layer
        rank = len(spatial)
        kernel = ops.ones((*layer.pool_size, 1, 1), dtype=self.compute_dtype)
        strides = layer.strides
        output_padding = tuple(
            _conv_output_padding(n, k, s, 1, layer.padding)
            for n, k, s in zip(spatial, layer.pool_size, strides)
        )
        ones = ops.ones((1, *spatial, 1), dtype=self.compute_dtype)
        counts = ops.conv(ones, kernel, strides=strides, padding=layer.padding)
        return kernel, strides, output_padding, counts, rank

    def transpose(self, coefficients, params):
        layer = self.layer
        (in_shape,) = self.input_shapes
        rank = len(in_shape)
        channel_axis = _channel_axis(layer.data_format, rank)
        spatial = tuple(d for i, d in enumerate(in_shape) if i != channel_axis)
        kernel, strides, output_padding, counts, n = self._window_ops(spatial)
        # Put channels next to the spec axis so each channel is pooled alone.
        a = coefficients
        if channel_axis != 0:
            a = ops.moveaxis(a, channel_axis + 2, 2)
        shape = ops.shape(a)
        out_spatial = a.shape[3:]
        a = ops.reshape(a, (-1, *out_spatial, 1)) / counts
        a = ops.conv_transpose(
            a, kernel, strides=strides, padding=layer.padding, output_padding=output_padding
        )
        a = ops.reshape(a, (shape[0], shape[1], shape[2], *spatial))
        if channel_axis != 0:
            a = ops.moveaxis(a, 2, channel_axis + 2)
        return [a]


@register_rule(
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)
class GlobalAveragePoolingRule(AffineRule):
    """Mean over the spatial axes; the adjoint spreads each coefficient evenly."""

    def linear(self, inputs, params):
        return self.layer(inputs[0])

    def transpose(self, coefficients, params):
        layer = self.layer
        (in_shape,) = self.input_shapes
        rank = len(in_shape)
        channel_axis = _channel_axis(layer.data_format, rank)
        spatial_axes = [i for i in range(rank) if i != channel_axis]
        count = math.prod(in_shape[i] for i in spatial_axes)
        a = coefficients / count
        if not layer.keepdims:
            for i in spatial_axes:
                a = ops.expand_dims(a, i + 2)
        target = (*ops.shape(coefficients)[:2], *in_shape)
        return [ops.broadcast_to(a, target)]


@register_rule(keras.layers.Add, keras.layers.Average, keras.layers.Subtract)
class MergeSumRule(AffineRule):
    """Sums (and means, differences) of several inputs of the same shape."""

    def _weights(self, count):
        if isinstance(self.layer, keras.layers.Average):
            return [1.0 / count] * count
        if isinstance(self.layer, keras.layers.Subtract):
            return [1.0, -1.0]
        return [1.0] * count

    def linear(self, inputs, params):
        return self.layer(list(inputs))

    def abs_linear(self, inputs, params):
        rank = max(len(x.shape) for x in inputs)
        total = None
        for w, x in zip(self._weights(len(inputs)), inputs):
            # Like the layer, give lower-rank inputs size-1 axes after the batch axis.
            while len(x.shape) < rank:
                x = ops.expand_dims(x, 1)
            term = abs(w) * x
            total = term if total is None else total + term
        return total

    def transpose(self, coefficients, params):
        weights = self._weights(len(self.input_shapes))
        out_rank = len(coefficients.shape) - 2
        result = []
        for w, shape in zip(weights, self.input_shapes):
            expanded = (1,) * (out_rank - len(shape)) + tuple(shape)
            a = _unbroadcast(coefficients * w, expanded)
            if len(shape) < out_rank:
                a = ops.reshape(a, (*ops.shape(coefficients)[:2], *shape))
            result.append(a)
        return result


def _unbroadcast(coefficients, in_shape):
    """Sums coefficients over axes where the input was broadcast (size 1)."""
    out_shape = coefficients.shape[2:]
    for i, (n_in, n_out) in enumerate(zip(in_shape, out_shape)):
        if n_in == 1 and n_out != 1:
            coefficients = ops.sum(coefficients, axis=i + 2, keepdims=True)
    return coefficients


@register_rule(keras.layers.Concatenate)
class ConcatenateRule(AffineRule):
    """Concatenation; the adjoint splits the coefficients back."""

    def linear(self, inputs, params):
        return self.layer(list(inputs))

    def transpose(self, coefficients, params):
        rank = len(self.input_shapes[0])
        axis = self.layer.axis % (rank + 1)
        sizes = [shape[axis - 1] for shape in self.input_shapes]
        splits = []
        start = 0
        for size in sizes:
            index = [slice(None)] * (rank + 2)
            index[axis + 1] = slice(start, start + size)
            splits.append(coefficients[tuple(index)])
            start += size
        return splits
