"""Physical structured pruning: a structured-pruned network rebuilt as a narrower one.

A structured mask zeroes an output channel's (or unit's) whole kernel but leaves its
bias, so the masked network still computes those channels, as constants: the
activation of the bias, after batch norm's shift. `shrink` removes them from the Keras
model, with the matching batch-norm entries and the next layer's input channels, and
folds their constant into the next layer's bias, so the narrower model computes what
the masked one does (up to float rounding) and its int8 file is really smaller.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from cactus_keras.bounds.graph import functional_of, topological_nodes
from cactus_keras.compression.kernels import compressible_kernels
from cactus_keras.compression.masks import check_ratio, magnitude_masks

_AFFINE = (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D)
# Layers that act on each channel alone: removed channels stay constant through them
# and the kept channels pass through unchanged (weights, if any, sliced per channel).
_CHANNELWISE = (
    layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Dropout, layers.GaussianNoise,
    layers.GaussianDropout, layers.AlphaDropout, layers.Identity, layers.ActivityRegularization,
    layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
    layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
    layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D,
    layers.Cropping1D, layers.Cropping2D, layers.Cropping3D,
)
_ELEMENTWISE_MERGE = (
    layers.Add, layers.Subtract, layers.Average, layers.Maximum, layers.Minimum, layers.Multiply,
)
# Relative spread under which a folded contribution counts as one value per channel.
_UNIFORM_TOLERANCE = 1e-5


class ShrinkError(ValueError):
    """The network cannot be rebuilt narrower without changing what it computes."""


class _NeedRepresentative(Exception):
    """Internal: a consumer needs one removed input channel kept (see `shrink`)."""

    def __init__(self, layer, tensor, channel):
        super().__init__(layer.name)
        self.layer, self.tensor, self.channel = layer, tensor, channel


def _is_channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _kept_outputs(layer, forced, is_output):
    """Output channels of an affine layer whose kernel is not all zero (plus `forced`)."""
    kernel = ops.convert_to_numpy(layer.kernel)
    count = kernel.shape[-1]
    if is_output:
        return None
    alive = np.any(kernel.reshape(-1, count) != 0, axis=0)
    for channel in forced.get(id(layer), ()):
        alive[channel] = True
    if alive.all():
        return None
    if not alive.any():
        # A layer needs one unit: keep the first (a constant, folded downstream as usual).
        alive[0] = True
    return np.flatnonzero(alive)


def _linear_part(layer, kernel, z):
    """`layer`'s linear map (kernel only, no bias or activation) applied to `z`."""
    config = layer.get_config()
    config.update(activation="linear", use_bias=False, name=None)
    if isinstance(layer, layers.Dense):
        config["units"] = kernel.shape[-1]
    else:
        config["filters"] = kernel.shape[-1]
    for key in ("kernel_regularizer", "activity_regularizer", "kernel_constraint"):
        config.pop(key, None)
    twin = layer.__class__.from_config(config)
    twin.build(z.shape)
    twin.kernel.assign(kernel)
    return ops.convert_to_numpy(twin(z))


def _new_affine(layer, x, in_keep, out_keep, value, representative):
    """The narrower copy of Dense/Conv `layer` called on `x`."""
    kernel = ops.convert_to_numpy(layer.kernel).copy()
    bias = ops.convert_to_numpy(layer.bias).copy() if layer.use_bias else np.zeros(kernel.shape[-1], "float32")
    if in_keep is not None:
        removed = np.setdiff1d(np.arange(kernel.shape[-2]), in_keep)
        z = np.array(value, copy=True)
        z[..., in_keep] = 0.0
        contribution = _linear_part(layer, kernel, z)
        axes = tuple(range(contribution.ndim - 1))
        low, high = contribution.min(axis=axes), contribution.max(axis=axes)
        uniform = np.all(high - low <= _UNIFORM_TOLERANCE * np.maximum(1.0, np.abs(high)))
        if uniform:
            bias = bias + contribution.reshape(-1, contribution.shape[-1])[0]
        else:
            # Zero padding of the convolution sees the constant channels as zeros at the
            # border: no bias reproduces that. One constant channel kept as a
            # representative (its weights absorb the others', scaled by their constants)
            # does, exactly, when every removed channel is one value over space.
            flat = np.asarray(value).reshape(-1, value.shape[-1])
            spread = flat.max(axis=0) - flat.min(axis=0)
            if np.any(spread[removed] > _UNIFORM_TOLERANCE * np.maximum(1.0, np.abs(flat[0, removed]))):
                raise ShrinkError(
                    f"Cannot shrink the input channels of layer '{layer.name}' "
                    f"({type(layer).__name__}): the removed channels reaching it are not "
                    "one constant over space (a padding or cropping layer between), so "
                    "their contribution cannot be folded into its bias."
                )
            constants = flat[0]
            if representative is None:
                channel = removed[np.argmax(np.abs(constants[removed]))]
                raise _NeedRepresentative(layer, None, int(channel))
            r = representative
            scale = constants[removed] / constants[r]
            kernel[..., r, :] += np.tensordot(kernel[..., removed, :], scale, axes=([-2], [0]))
        kernel = kernel[..., in_keep, :]
    if out_keep is not None:
        kernel, bias = kernel[..., out_keep], bias[out_keep]
    config = layer.get_config()
    config["units" if isinstance(layer, layers.Dense) else "filters"] = kernel.shape[-1]
    folded = np.any(bias != 0)
    config["use_bias"] = bool(layer.use_bias or folded)
    new = layer.__class__.from_config(config)
    y = new(x)
    new.kernel.assign(kernel.astype(new.kernel.dtype))
    if new.use_bias:
        new.bias.assign(bias.astype(new.bias.dtype))
    return y


def _slice_per_channel(layer, weights, keep, channels):
    """`weights` with every per-channel axis (size `channels`, last) sliced to `keep`."""
    out = []
    for w in weights:
        if w.ndim >= 1 and w.shape[-1] == channels:
            out.append(w[..., keep])
        elif w.size <= 1:
            out.append(w)
        else:
            raise ShrinkError(
                f"Cannot shrink through layer '{layer.name}' ({type(layer).__name__}): a "
                f"weight of shape {w.shape} is not per channel of the last axis "
                f"({channels})."
            )
    return out


def _copy(layer, x, config=None):
    new = layer.__class__.from_config(config or layer.get_config())
    y = new(x)
    if layer.weights:
        new.set_weights(layer.get_weights())
    return new, y


def _unsupported(layer, why):
    return ShrinkError(
        f"Cannot shrink through layer '{layer.name}' ({type(layer).__name__}): {why} "
        "Shrink only networks whose pruned channels pass through supported layers "
        "(Dense, Conv, BatchNormalization, activations, pooling, Flatten, Dropout, "
        "Rescaling, Normalization, Concatenate, and merges whose inputs keep the same "
        "channels), or leave that layer's inputs unpruned."
    )


def _build(network, functional, values, forced, representatives):
    inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=t.name) for t in functional.inputs]
    new = {id(t): n for t, n in zip(functional.inputs, inputs)}
    keep = {id(t): None for t in functional.inputs}
    outputs = {id(t) for t in functional.outputs}
    for node in topological_nodes(functional):
        layer = node.operation
        if isinstance(layer, keras.Model):
            raise ShrinkError(
                f"Model '{network.name}' nests model '{layer.name}'; shrink needs its "
                "layers at one level (build the network without nested models)."
            )
        ins = list(node.input_tensors)
        if len(node.outputs) != 1:
            raise _unsupported(layer, "it has several outputs.")
        out = node.outputs[0]
        in_keeps = [keep[id(t)] for t in ins]
        xs = [new[id(t)] for t in ins]
        x = xs[0]
        in_keep = in_keeps[0]
        if not _is_channels_last(layer) and any(k is not None for k in in_keeps):
            raise _unsupported(layer, "it is channels_first.")
        if isinstance(layer, _AFFINE):
            if getattr(layer, "groups", 1) != 1:
                raise _unsupported(layer, "grouped convolutions are not supported.")
            out_keep = _kept_outputs(layer, forced, id(out) in outputs)
            y = _new_affine(layer, x, in_keep, out_keep, values[id(ins[0])],
                            representatives.get(id(layer)))
        elif all(k is None for k in in_keeps):
            # Nothing removed reaches this layer: copied as it is.
            _, y = _copy(layer, xs if len(xs) > 1 else x)
            out_keep = None
        elif isinstance(layer, layers.BatchNormalization):
            if layer.axis not in (-1, len(ins[0].shape) - 1):
                raise _unsupported(layer, f"its axis {layer.axis} is not the channel axis.")
            channels = ins[0].shape[-1]
            bn = layer.__class__.from_config(layer.get_config())
            y = bn(x)
            bn.set_weights(_slice_per_channel(layer, layer.get_weights(), in_keep, channels))
            out_keep = in_keep
        elif isinstance(layer, (layers.Rescaling, layers.Normalization, layers.PReLU)):
            channels = ins[0].shape[-1]
            config = layer.get_config()
            if isinstance(layer, layers.Rescaling):
                for key in ("scale", "offset"):
                    value = np.asarray(config[key])
                    if value.size > 1:
                        config[key] = _slice_per_channel(layer, [value], in_keep, channels)[0].tolist()
                _, y = _copy(layer, x, config)
            elif isinstance(layer, layers.Normalization):
                if list(np.atleast_1d(layer.axis)) not in ([-1], [len(ins[0].shape) - 1]):
                    raise _unsupported(layer, "it normalizes other axes than the channels.")
                mean, variance = _slice_per_channel(
                    layer, [ops.convert_to_numpy(layer.mean), ops.convert_to_numpy(layer.variance)],
                    in_keep, channels)
                y = layers.Normalization(axis=-1, mean=mean.reshape(-1), variance=variance.reshape(-1),
                                         invert=config.get("invert", False), name=layer.name)(x)
            else:
                prelu = layer.__class__.from_config(config)
                y = prelu(x)
                prelu.set_weights(_slice_per_channel(layer, layer.get_weights(), in_keep, channels))
            out_keep = in_keep
        elif isinstance(layer, layers.Activation) or isinstance(layer, _CHANNELWISE):
            if isinstance(layer, layers.Activation) and getattr(layer.activation, "__name__", "") in (
                    "softmax", "log_softmax"):
                raise _unsupported(layer, "softmax mixes channels.")
            _, y = _copy(layer, x)
            out_keep = in_keep
        elif isinstance(layer, layers.Flatten):
            shape = tuple(ins[0].shape[1:])
            channels, positions = shape[-1], int(np.prod(shape[:-1]))
            _, y = _copy(layer, x)
            out_keep = (np.arange(positions)[:, None] * channels + in_keep[None, :]).reshape(-1)
        elif isinstance(layer, _ELEMENTWISE_MERGE):
            first = in_keeps[0]
            if any(k is None or first is None or not np.array_equal(k, first) for k in in_keeps):
                raise _unsupported(layer, "its inputs keep different channels.")
            _, y = _copy(layer, xs)
            out_keep = first
        elif isinstance(layer, layers.Concatenate):
            if layer.axis not in (-1, len(out.shape) - 1):
                raise _unsupported(layer, "it concatenates on another axis than the channels.")
            parts, offset = [], 0
            for t, k in zip(ins, in_keeps):
                c = t.shape[-1]
                parts.append(offset + (np.arange(c) if k is None else k))
                offset += c
            _, y = _copy(layer, xs)
            out_keep = np.concatenate(parts)
        else:
            raise _unsupported(layer, "it is not a layer shrink can carry removed channels through.")
        new[id(out)] = y
        keep[id(out)] = out_keep
    return keras.Model(inputs, [new[id(t)] for t in functional.outputs], name=network.name)


def _producer_affine(functional, tensor_id, layer_name):
    """The affine layer whose output channels reach `tensor_id` one to one."""
    producers = {id(node.outputs[0]): node for node in topological_nodes(functional)}
    node = producers.get(tensor_id)
    while node is not None:
        layer = node.operation
        if isinstance(layer, _AFFINE):
            return layer
        single = isinstance(layer, (_CHANNELWISE, layers.Activation, layers.BatchNormalization,
                                    layers.Rescaling, layers.Normalization, layers.PReLU))
        if not single or len(node.input_tensors) != 1:
            break
        node = producers.get(id(node.input_tensors[0]))
    raise ShrinkError(
        f"Cannot shrink the input channels of layer '{layer_name}': its zero padding sees "
        "the removed channels' constants as zeros at the border, and they do not come "
        "straight from one Dense or Conv layer whose one constant channel could stand for "
        "them."
    )


def shrink(network):
    """The structured-pruned `network` rebuilt as a plain, narrower Keras model.

    Output channels (units) of Dense and Conv layers whose kernel is all zero are
    removed, with their batch-norm entries and the next layer's input channels
    (through activations, pooling, Flatten, Dropout, Rescaling, Normalization,
    Concatenate). Their constant output (the activation of the bias, after batch
    norm) is folded into the next layer's bias, so the new model computes what the
    masked one does, to float rounding: logits, IBP and CROWN bounds alike. The output
    layer's units (the classes) are never removed. Where the next layer is a
    convolution with zero padding and a removed constant is not zero, no bias can
    reproduce the border, so one removed channel is kept as a constant stand-in for the
    others of its layer. A layer it cannot carry removed channels through (an `Add`
    whose inputs keep different channels, a `Reshape`, ...) is a `ShrinkError` naming
    it: never a silently different network.

    Example:

    ```python
    pruned = cactus_keras.compression.prune_structured(net, 0.5)
    small = cactus_keras.compression.shrink(pruned)
    small.count_params() < pruned.count_params()
    ```
    """
    if not isinstance(network, keras.Model):
        raise TypeError(f"shrink expects a keras.Model, got {type(network).__name__}.")
    functional = functional_of(network, ShrinkError, "shrinking it", "shrink needs")
    if len(functional.inputs) != 1:
        raise ShrinkError(f"Model '{network.name}' has {len(functional.inputs)} inputs; shrink needs one.")
    tensors, seen = [], set()
    for node in topological_nodes(functional):
        for t in node.outputs:
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
    probe = keras.Model(functional.inputs, tensors)
    zeros = np.zeros((1, *functional.inputs[0].shape[1:]), "float32")
    # The removed channels are constant: their value at any input (zero) is their value.
    values = {id(t): ops.convert_to_numpy(v) for t, v in zip(tensors, probe([zeros], training=False))}
    values[id(functional.inputs[0])] = zeros
    forced, representatives = {}, {}
    for _ in range(len(tensors) + 1):
        try:
            return _build(network, functional, values, forced, representatives)
        except _NeedRepresentative as need:
            consumer = need.layer
            node = next(n for n in topological_nodes(functional) if n.operation is consumer)
            producer = _producer_affine(functional, id(node.input_tensors[0]), consumer.name)
            forced.setdefault(id(producer), set()).add(need.channel)
            representatives[id(consumer)] = need.channel
    raise ShrinkError(f"shrink did not settle on model '{network.name}'.")  # pragma: no cover


def prune_structured(network, ratio, per_layer=False):
    """A copy of `network` with whole output channels/units zeroed (global L2 structured).

    `ratio` is one fraction over all hidden Dense/Conv layers (ranked globally, as the
    `global_l2_structured` members do), or with `per_layer` a dict of layer name ->
    fraction pruned in that layer alone (layers not named stay whole). The output layer
    is never pruned. Biases stay: `shrink` folds the removed channels' constants.

    Example:

    ```python
    from cactus_keras.compression import prune_structured, shrink

    pruned = prune_structured(net, 0.5)   # half the hidden output channels zeroed
    small = shrink(pruned)                # the same function, without those channels
    first = [l.name for l in net.layers if hasattr(l, "kernel")][0]
    one_layer = prune_structured(net, {first: 0.25}, per_layer=True)
    print(net.count_params(), small.count_params())
    ```
    """
    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    kernels = compressible_kernels(copy, exclude_output=True)
    if per_layer:
        owners = {id(l.kernel): l.name for l in _all_layers(copy) if isinstance(l, _AFFINE)}
        names = {owners[id(k)] for k in kernels}
        unknown = set(ratio) - names
        if unknown:
            raise ValueError(
                f"`ratio` names layers {sorted(unknown)} that are not prunable hidden "
                f"Dense/Conv layers of '{network.name}'; expected some of {sorted(names)}."
            )
        for kernel in kernels:
            value = check_ratio(ratio.get(owners[id(kernel)], 0.0), f"ratio[{owners[id(kernel)]!r}]")
            if value > 0:
                mask = magnitude_masks([kernel.value], value, "global_l2_structured")[0]
                kernel.assign(kernel.value * mask)
        return copy
    value = check_ratio(ratio)
    masks = magnitude_masks([k.value for k in kernels], value, "global_l2_structured")
    for kernel, mask in zip(kernels, masks):
        kernel.assign(kernel.value * mask)
    return copy


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
