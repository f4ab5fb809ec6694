"""`Int8FileQuantization`: the member whose network is the int8 `.tflite` file's arithmetic.

The other quantization members change kernels only (AWP, straight-through fake
quantization). The int8 file also quantizes every activation: this member's network is
the file as the exporter writes it (`cactus_keras.export.to_tflite` with the member's
ranges):

* the input quantizer: q = clip(round(x / s_0) + zp_0, -128, 127);
* per-channel symmetric int8 kernels, w_q = clip(round(w / s_w), -127, 127) with
  s_w = max |w| / 127 per output channel, and int32 biases round(b / (s_in s_w));
* exact integer accumulators acc = W_q (q_in - zp_in) + b_q;
* requantization r = round(acc * s_in s_w / s_out) + zp_out, clamped to
  [act_min, 127]; a fused ReLU is the clamp at the zero point (act_min = zp_out);
* per-tensor asymmetric int8 activations: (s, zp) from the ranges the member tracks
  (moving min/max of its own clean activations, saved with the model), as TFLite's
  calibration turns a range into a scale and zero point.

Its certified loss propagates interval bounds of the int8 codes through that arithmetic,
each rounding widened as the rounding model (`cactus_keras.int8.rounding`) widens it
("nearest": by the kernels' largest error, "floor_ceil": to floor/ceil), so its
certificate is one the verifier also gives the exported file. Gradients pass the
roundings straight through and stop at the clamps (a clipped straight-through
estimator). Supported networks: chains of Dense/Conv layers (ReLU fused or as its own
layer), Flatten/Reshape and inference-identity layers.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cactus_keras import backend
from cactus_keras.bounds.affine import ConvRule, DenseRule, IdentityRule, ReshapeRule
from cactus_keras.bounds.graph import parse_network
from cactus_keras.bounds.nonlinear import is_relu
from cactus_keras.compression.member import CompressionMember, register_member
from cactus_keras.int8.rounding import DEFAULT_ROUNDING, RELATIVE_TOLERANCE, check_rounding

INT8_MIN, INT8_MAX = -128.0, 127.0
WEIGHT_LEVELS = 127.0
# Candidate (low, high) factors of the output tensor's tracked range for
# `select_output_range`, widest first (a tie keeps the wider range). The logits' min/max
# range is wide (e.g. [-52, 16] for a Fashion-MNIST cnn3), so a code of the output is
# coarse (0.27 logits) while only the top of the range decides a certificate: logits
# clamped at -128 or 127 lose nothing where the others stay apart.
OUTPUT_RANGE_CANDIDATES = tuple((low, high) for low in (1.0, 0.5, 0.25, 0.1, 0.05, 0.02)
                                for high in (1.0, 0.7, 0.5, 0.35, 0.25))


def _straight_through(value, rounded):
    """`rounded` in the forward pass, the gradient of `value` in the backward pass."""
    return value + ops.stop_gradient(rounded - value)


def range_quantization(minimum, maximum):
    """TFLite's calibration: a real range -> (scale, zero point) of an int8 tensor.

    The range is widened to contain 0; scale = (max - min) / 255 and the zero point
    round(-128 - min / scale), clamped to int8. Works on tensors and NumPy values."""
    minimum = ops.minimum(minimum, 0.0)
    maximum = ops.maximum(maximum, 0.0)
    scale = ops.maximum((maximum - minimum) / 255.0, 1e-8)
    zero_point = ops.clip(ops.round(INT8_MIN - minimum / scale), INT8_MIN, INT8_MAX)
    return scale, zero_point


def kernel_scale(kernel):
    """Per-output-channel symmetric int8 scale max |w| / 127 (1 for a zero channel)."""
    axes = tuple(range(len(kernel.shape) - 1))
    largest = ops.max(ops.abs(kernel), axis=axes)
    return ops.where(largest > 0, largest / WEIGHT_LEVELS, ops.ones_like(largest))


def round_interval(lower, upper, rounding, error):
    """Integer bounds of every rounding r of v in [lower, upper] under the rounding
    model, with straight-through gradients: "nearest": [ceil(l - e - t),
    floor(u + e + t)] (e = `error`, t relative), "floor_ceil": [floor(l), ceil(u)]."""
    if rounding == "nearest":
        low = ops.ceil(lower - error - RELATIVE_TOLERANCE * ops.abs(lower))
        high = ops.floor(upper + error + RELATIVE_TOLERANCE * ops.abs(upper))
    else:
        low, high = ops.floor(lower), ops.ceil(upper)
    return _straight_through(lower, low), _straight_through(upper, high)


def requantization_error(multiplier):
    """The "nearest" model's error of a requantization with real multiplier M:
    0.5 + 2**(shift - 1) when TFLite's fixed-point form has a right shift (M < 0.5),
    else 0.5 (`cactus_keras.int8.fixed_point.fixed_point_error`)."""
    shift = ops.floor(ops.log2(ops.maximum(multiplier, 1e-30))) + 1.0
    return 0.5 + ops.where(shift < 0, 0.5 * ops.power(2.0, ops.minimum(shift, 0.0)), 0.0)


def _check_output_range(value):
    """`(low, high)` factors in (0, 1] as floats, else a ValueError naming the fix."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
        raise ValueError(f"`output_range` must be two factors (low, high) in (0, 1] that scale "
                         f"the output tensor's tracked range, e.g. (1.0, 1.0), got {value!r}.")
    return (low, high)


class _Step:
    """One op of the int8 file: an affine layer with its fused clamp, or a reshape."""

    def __init__(self, kind, layer, rule, inputs, output, relu=False, tensor=None):
        self.kind, self.layer, self.rule = kind, layer, rule
        self.inputs, self.output, self.relu, self.tensor = inputs, output, relu, tensor


def int8_program(network):
    """The network as the int8 file's ops: `(steps, input key, output key, quantized
    tensor count)`. A ReLU after an affine layer is fused into it (its clamp)."""
    graph = parse_network(network)
    consumers = graph.consumers()
    steps, alias, tensors = [], {}, 1  # tensor 0: the input

    def key(k):
        return alias.get(k, k)

    fused = set()
    for node in graph.nodes:
        rule = node.rule
        if node.output in fused:
            continue
        if isinstance(rule, (DenseRule, ConvRule)):
            users = consumers.get(node.output, [])
            relu = len(users) == 1 and is_relu(users[0].rule) and node.output != graph.output
            output = users[0].output if relu else node.output
            if relu:
                fused.add(users[0].output)
            steps.append(_Step("affine", rule.layer, rule, [key(node.inputs[0])], output,
                               relu=relu, tensor=tensors))
            tensors += 1
        elif isinstance(rule, ReshapeRule):
            steps.append(_Step("reshape", rule.layer, rule, [key(node.inputs[0])], node.output))
        elif isinstance(rule, IdentityRule):
            alias[node.output] = key(node.inputs[0])
        else:
            raise ValueError(
                f"The int8_file member models Dense/Conv layers (ReLU fused or after them), "
                f"Flatten/Reshape and identity layers; layer '{rule.layer.name}' "
                f"({type(rule.layer).__name__}) is none of these. Use a network of those "
                "layers, or the `quantization` (AWP) member."
            )
    return steps, graph.input, key(graph.output), tensors


@register_member("int8_file")
class Int8FileQuantization(CompressionMember):
    """The compressed network is the int8 `.tflite` file's integer arithmetic.

    See the module docstring for the arithmetic. `rounding` is the rounding model its
    certified loss assumes (the verifier's default, "nearest", unless given): train
    and verify with the same model. `range_momentum` is the momentum of the moving
    min/max of each activation tensor (the first training step sets them).

    Export with `cactus_keras.export.to_tflite(model, path, representative_data)`
    where `model` is the `CactusModel`: the file gets the member's activation scales
    and zero points, so the file is the network the member trained.

    Args:
        rounding: "nearest" or "floor_ceil" (`cactus_keras.int8.rounding`).
        range_momentum: in [0, 1).
        output_range: (low, high) factors in (0, 1] of the output tensor's range.
        name: member name in metrics (`certified_accuracy_<name>`).

    Example:

    ```python
    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[
        cactus_keras.Pruning((0.25, 0.75)), cactus_keras.Int8FileQuantization()])
    model.compile(optimizer="adam")
    model.fit(x_train, y_train, epochs=2)
    cactus_keras.export.to_tflite(model, "model.tflite", x_train[:500])
    ```
    """

    own_network = True

    def __init__(self, rounding=DEFAULT_ROUNDING, range_momentum=0.99, output_range=(1.0, 1.0),
                 name="int8_file"):
        super().__init__(exclude_output=False, name=name)
        self.rounding = check_rounding(rounding)
        self.output_range = _check_output_range(output_range)
        try:
            momentum = float(range_momentum)
        except (TypeError, ValueError):
            raise TypeError(f"`range_momentum` must be a number in [0, 1), got "
                            f"{range_momentum!r}.") from None
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`range_momentum` must be in [0, 1), got {range_momentum!r}.")
        self.range_momentum = momentum
        self._program = None
        self._fold = None

    def get_config(self):
        config = {"rounding": self.rounding, "range_momentum": self.range_momentum,
                  "name": self.name}
        if self.output_range != (1.0, 1.0):
            # Left out at its default: run specs and saved models written before
            # `select_output_range` existed stay the same settings.
            config["output_range"] = list(self.output_range)
        return config

    def select_kernels(self, network):
        self._program = int8_program(network)
        return self._kernels_of_program()

    def build(self, kernels, add_variable):
        count = self._program[3]
        zeros = keras.initializers.Zeros()
        return {"minimum": add_variable((count,), zeros, "range_min"),
                "maximum": add_variable((count,), zeros, "range_max"),
                "updates": add_variable((), zeros, "range_updates")}

    def compress(self, kernels, context):
        # The kernels of the file (per-channel int8), as float values: what
        # `apply_compression` writes, and the certificate of the network alone.
        return [_straight_through(k, ops.clip(ops.round(k / kernel_scale(k)), -WEIGHT_LEVELS,
                                              WEIGHT_LEVELS) * kernel_scale(k))
                for k in kernels]

    # ----- the file's quantization parameters

    def quantization(self, state):
        """`(scales, zero points)` of the quantized tensors (input, then each affine
        layer's output), from the tracked ranges; the output tensor's range scaled by
        `output_range` (low factor, high factor)."""
        count = self._program[3]
        low, high = self.output_range
        factors_low = np.ones(count, np.float32)
        factors_high = np.ones(count, np.float32)
        factors_low[-1], factors_high[-1] = low, high
        return range_quantization(state["minimum"].value * factors_low,
                                  state["maximum"].value * factors_high)

    def calibrate_ranges(self, model, x):
        """Sets every tracked range from the clean int8 pass over `x` (as the first
        training step does): the ranges of a network trained without the member."""
        state = model.member_state(self.name)
        state["updates"].assign(0.0)
        values = [k.value for k in self._kernels_of_program()]
        steps, input_key, output_key, _ = self._program
        self._track_ranges(steps, input_key, output_key, values,
                           ops.convert_to_tensor(np.asarray(x, np.float32)), state)

    def select_output_range(self, model, x, y, epsilon, input_range=(0.0, 1.0),
                            candidates=OUTPUT_RANGE_CANDIDATES):
        """Sets `output_range` to the candidate (low, high) factors of the output
        tensor's tracked range under which the member certifies most of (x, y) (its
        certificate is the file's: `certified`); returns {candidate: certified
        fraction}. Choose on training or validation data, never the test set."""
        found = {}
        original = self.output_range
        try:
            for candidate in candidates:
                self.output_range = _check_output_range(candidate)
                found[self.output_range] = float(
                    np.mean(self.certified(model, x, y, epsilon, input_range)))
        finally:
            self.output_range = original
        self.output_range = max(found, key=lambda c: (found[c], -list(found).index(c)))
        return found

    def tensor_quantization(self, model):
        """The file's activation quantization as NumPy: a list of `(scale, zero_point)`
        (float32, int) for the input and each affine layer's output, in op order;
        `model` is the `CactusModel` holding this member."""
        state = model.member_state(self.name)
        scales, zero_points = self.quantization(state)
        scales = np.asarray(ops.convert_to_numpy(scales), np.float32)
        zero_points = np.asarray(ops.convert_to_numpy(zero_points)).astype(int)
        return [(float(s), int(z)) for s, z in zip(scales, zero_points)]

    def program(self):
        """`(steps, input key, output key, tensor count)` of `int8_program`."""
        return self._program

    def file_bounds(self, model, lower, upper=None):
        """Bounds of the int8 output codes over the float input box [lower, upper]
        (`upper` None: the clean int8 outputs), NumPy, with the tracked ranges and
        the current kernels of `model` (the `CactusModel` holding the member)."""
        steps, input_key, output_key, _ = self._program
        state = model.member_state(self.name)
        scales, zero_points = self.quantization(state)
        values = [k.value for k in self._kernels_of_program()]
        lower = ops.convert_to_tensor(np.asarray(lower, np.float32))
        if upper is None:
            steps_out = self._run(steps, input_key, output_key, values, lower, lower, scales,
                                  zero_points, point=True)[0]
            t = self._program[3] - 1
            codes = ops.round(steps_out / scales[t] + zero_points[t])
            codes = ops.convert_to_numpy(codes).astype(np.int64)
            return codes, codes
        upper = ops.convert_to_tensor(np.asarray(upper, np.float32))
        low, high = self._run(steps, input_key, output_key, values, lower, upper, scales,
                              zero_points, point=False)
        return (ops.convert_to_numpy(low).astype(np.int64),
                ops.convert_to_numpy(high).astype(np.int64))

    def certified(self, model, x, y, epsilon, input_range=(0.0, 1.0)):
        """The member's certificate of the file per sample (NumPy bool): its margins
        over the epsilon box are all positive (never more than `verify_tflite` under
        the same rounding model certifies)."""
        from cactus_keras.bounds.margins import input_box

        steps, input_key, output_key, _ = self._program
        state = model.member_state(self.name)
        scales, zero_points = self.quantization(state)
        values = [k.value for k in self._kernels_of_program()]
        x = ops.convert_to_tensor(np.asarray(x, np.float32))
        labels = ops.convert_to_tensor(np.asarray(y).reshape(-1).astype("int32"))
        box = input_box(x, epsilon, input_range)
        margins = self._margins(steps, input_key, output_key, values, box, labels, scales,
                                zero_points)
        margins = ops.convert_to_numpy(margins)
        own = np.eye(margins.shape[-1], dtype=bool)[np.asarray(y).reshape(-1)]
        return np.all((margins > 0) | own, axis=-1)

    # ----- the member's own network

    def network_terms(self, kernel_values, box, labels, x, context):
        """`(margin lower bounds, clean logits)` of the int8 file's arithmetic at the
        kernel values, over the input box; updates the tracked ranges in training."""
        steps, input_key, output_key, count = self._program
        state = context.state
        if context.training:
            # The clean pass that updates the ranges is the member's clean pass.
            logits = self._track_ranges(steps, input_key, output_key, kernel_values, x, state)
        scales, zero_points = self.quantization(state)
        if not context.training:
            logits = self._run(steps, input_key, output_key, kernel_values, x, x, scales,
                               zero_points, point=True)[0]
        return self._margins(steps, input_key, output_key, kernel_values, box, labels,
                             scales, zero_points), logits

    def _margins(self, steps, input_key, output_key, kernel_values, box, labels, scales,
                 zero_points):
        count = self._program[3]
        self._fold = None
        lower, upper = self._run(steps, input_key, output_key, kernel_values, box.lower,
                                 box.upper, scales, zero_points, point=False)
        s_out = scales[count - 1]
        num_classes = ops.shape(lower)[-1]
        own = ops.one_hot(labels, num_classes, dtype=lower.dtype)
        low_y = ops.sum(lower * own, axis=-1, keepdims=True)
        # Certified when q_y > q_j (j < y) and q_y >= q_j (j > y), the first maximum
        # being the file's arg-max: a margin > 0 exactly there (codes are integers).
        earlier = ops.cast(ops.expand_dims(ops.arange(num_classes), 0)
                           < ops.expand_dims(labels, 1), lower.dtype)
        margins = low_y - upper - earlier + 0.5
        if self._fold is not None:
            margins = ops.maximum(margins, self._folded_margins(labels, own, earlier, low_y,
                                                                upper))
        self._fold = None
        return margins * (1.0 - own) * s_out

    def _folded_margins(self, labels, own, earlier, low_y, upper):
        """Margins (code units, > 0 where certified) with the last layer folded in,
        as the verifier folds it: r_y - r_j >= D - e_y - e_j - t ("nearest"; floor(D) -
        1 for "floor_ceil") where D = M_y acc_y - M_j acc_j is affine in the layer's
        input and bounded exactly. The clamp keeps q_y >= q_j; a strict q_y > q_j
        (j < y) also needs q_j below 127 and q_y above -128."""
        f = self._fold
        scaled = f["w_q"] * f["multiplier"]                      # (in, K)
        bias = f["bias"] * f["multiplier"]                       # (batch, K)
        own_column = ops.matmul(own, ops.transpose(scaled))     # (batch, in): M_y w_y
        difference = ops.expand_dims(own_column, -1) - ops.expand_dims(scaled, 0)
        centre = ops.einsum("bi,bik->bk", f["centre_in"], difference)
        radius = ops.einsum("bi,bik->bk", f["radius_in"], ops.abs(difference))
        bias_y = ops.sum(bias * own, axis=-1, keepdims=True)
        low = centre - radius + bias_y - bias
        if self.rounding == "nearest":
            error_y = ops.sum(f["error"] * own, axis=-1, keepdims=True)
            magnitude_y = ops.sum(f["magnitude"] * own, axis=-1, keepdims=True)
            slack = error_y + f["error"] + RELATIVE_TOLERANCE * (magnitude_y + f["magnitude"])
            bound = _straight_through(low, ops.ceil(low - slack))
        else:
            bound = _straight_through(low, ops.floor(low) - 1.0)
        folded = bound - earlier + 0.5
        # j < y: q_j <= 126 and q_y >= -127, else the clamp may merge them.
        big = 1e4
        folded = ops.minimum(folded, ops.where(earlier > 0, 126.5 - upper, big))
        folded = ops.minimum(folded, ops.where(earlier > 0, low_y + 127.5, big))
        return folded

    def _kernel_values(self, kernel_values):
        return {id(k): v for k, v in zip(self._kernels_of_program(), kernel_values)}

    def _kernels_of_program(self):
        kernels = []
        for step in self._program[0]:
            if step.kind == "affine" and all(step.layer.kernel is not k for k in kernels):
                kernels.append(step.layer.kernel)
        return kernels

    def _track_ranges(self, steps, input_key, output_key, kernel_values, x, state):
        # The ranges come from the member's clean int8 pass (real values before each
        # requantization), like quantization-aware training. Each tensor is quantized
        # in that pass with its updated range, so the first step (no range yet) sets
        # every range from the batch through a consistently quantized network.
        first = state["updates"].value < 0.5
        m = self.range_momentum
        lows, highs = [], []

        def observe(t, real):
            # Over the global batch: replicas of a distributed step keep one range.
            low = backend.extremum_over_replicas(ops.stop_gradient(ops.min(real)), "min")
            high = backend.extremum_over_replicas(ops.stop_gradient(ops.max(real)), "max")
            low = ops.where(first, low, m * state["minimum"].value[t] + (1 - m) * low)
            high = ops.where(first, high, m * state["maximum"].value[t] + (1 - m) * high)
            lows.append(low)
            highs.append(high)
            return range_quantization(low, high)

        scales, zero_points = self.quantization(state)
        logits = self._run(steps, input_key, output_key, kernel_values, x, x, scales,
                           zero_points, point=True, observe=observe)[0]
        state["minimum"].assign(ops.stack(lows))
        state["maximum"].assign(ops.stack(highs))
        state["updates"].assign(state["updates"].value + 1.0)
        return logits

    def _run(self, steps, input_key, output_key, kernel_values, lower, upper, scales,
             zero_points, point, observe=None):
        """Code bounds (lower, upper) of the output (dequantized for `point`). With
        `observe(tensor index, real values) -> (scale, zero point)` (a clean pass),
        each tensor is quantized with the scale `observe` returns for its values."""
        kernels = self._kernel_values(kernel_values)
        s0, z0 = scales[0], zero_points[0]
        if observe is not None:
            s0, z0 = observe(0, lower)
        if point:
            q = ops.clip(_straight_through(lower / s0, ops.round(lower / s0)) + z0, INT8_MIN, INT8_MAX)
            codes = {input_key: (q, q)}
        else:
            lo, hi = round_interval(lower / s0, upper / s0, self.rounding, 0.5)
            codes = {input_key: (ops.clip(lo + z0, INT8_MIN, INT8_MAX),
                                 ops.clip(hi + z0, INT8_MIN, INT8_MAX))}
        tensor_of = {input_key: 0}
        used = {0: (s0, z0)}
        for step in steps:
            lo, hi = codes[step.inputs[0]]
            if step.kind == "reshape":
                codes[step.output] = (step.rule.linear([lo], None), step.rule.linear([hi], None))
                tensor_of[step.output] = tensor_of[step.inputs[0]]
                continue
            t_in = tensor_of[step.inputs[0]]
            s_in, z_in = used[t_in] if observe is not None else (scales[t_in], zero_points[t_in])
            s_out, z_out = scales[step.tensor], zero_points[step.tensor]
            kernel = kernels[id(step.layer.kernel)]
            s_w = ops.stop_gradient(kernel_scale(kernel))
            w_q = ops.clip(_straight_through(kernel / s_w, ops.round(kernel / s_w)),
                           -WEIGHT_LEVELS, WEIGHT_LEVELS)
            bias = step.layer.bias
            params = (w_q, None)
            centre = step.rule.linear([(lo + hi) / 2 - z_in], params)
            if bias is not None:
                bias_scale = ops.stop_gradient(s_in * s_w)
                b_q = _straight_through(bias / bias_scale, ops.round(bias / bias_scale))
                centre = centre + b_q
            if observe is not None:
                real = centre * s_in * s_w
                s_out, z_out = observe(step.tensor, ops.maximum(real, 0.0) if step.relu else real)
                used[step.tensor] = (s_out, z_out)
            multiplier = s_in * s_w / s_out
            act_min = z_out if step.relu else INT8_MIN
            if point:
                v = centre * multiplier
                r = ops.clip(_straight_through(v, ops.round(v)) + z_out, act_min, INT8_MAX)
                codes[step.output] = (r, r)
            else:
                radius = step.rule.linear([(hi - lo) / 2], (ops.abs(w_q), None))
                error = requantization_error(ops.stop_gradient(multiplier))
                if (step.output == output_key and isinstance(step.rule, DenseRule)
                        and len(lo.shape) == 2):
                    # The last layer, folded into the margins (`_folded_margins`).
                    self._fold = dict(centre_in=(lo + hi) / 2 - z_in, radius_in=(hi - lo) / 2,
                                      w_q=w_q, bias=centre - step.rule.linear(
                                          [(lo + hi) / 2 - z_in], params),
                                      multiplier=multiplier, error=error,
                                      magnitude=ops.abs(centre * multiplier)
                                      + radius * multiplier)
                r_lo, r_hi = round_interval((centre - radius) * multiplier,
                                            (centre + radius) * multiplier, self.rounding, error)
                codes[step.output] = (ops.clip(r_lo + z_out, act_min, INT8_MAX),
                                      ops.clip(r_hi + z_out, act_min, INT8_MAX))
            tensor_of[step.output] = step.tensor
        lo, hi = codes[output_key]
        if point:
            t = tensor_of[output_key]
            s_t, z_t = used[t] if observe is not None else (scales[t], zero_points[t])
            return (lo - z_t) * s_t, None
        return lo, hi


def int8_file_members(model):
    """The `Int8FileQuantization` members of a `CactusModel` (none for anything else)."""
    return [m for m in getattr(model, "compression", None) or ()
            if isinstance(m, Int8FileQuantization)]


def int8_file_member(model):
    """The member whose ranges an exported file gets by default: the model's one
    `Int8FileQuantization` member, or None (no member, or several to choose from)."""
    members = int8_file_members(model)
    return members[0] if len(members) == 1 else None
