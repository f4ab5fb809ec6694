"""Interval bound propagation (forward) and linear bound propagation (backward, CROWN)."""

from __future__ import annotations

import dataclasses
import math

from keras import ops

from cactus_keras.bounds.rules import Box


@dataclasses.dataclass
class IntervalPass:
    """Result of one forward pass: a box per value, the rules' parameters per node,
    and the clean values when the pass was given a clean input."""

    boxes: dict
    params: dict
    clean: dict | None


def interval_pass(graph, box, *, clean=None, training=False, skip=frozenset(), refine=None):
    """Propagates `box` (the input box) through `graph` with interval arithmetic.

    Args:
        graph: a `BoundGraph`.
        box: `Box` of the model input, shape (batch, *input_shape).
        clean: optional clean input; its forward pass is computed alongside (it is the
            model's ordinary output), and training-mode batch norm takes its statistics
            from it.
        training: whether layers run in training mode.
        skip: outputs of nodes not to bound (values only a later backward pass reads).
        refine: optional callback `refine(node, boxes, params) -> None` run before each
            non-affine node, which may tighten the boxes of its inputs (CROWN uses it).
    """
    boxes = {graph.input: box}
    params = {}
    cleans = None if clean is None else {graph.input: clean}
    for node in graph.nodes:
        clean_in = None if cleans is None else [cleans[k] for k in node.inputs]
        p = node.rule.parameters(clean_in, training)
        params[node.output] = p
        if cleans is not None:
            cleans[node.output] = node.rule.forward(clean_in, p, training)
        if node.output in skip:
            continue
        if refine is not None and not node.is_affine:
            refine(node, boxes, params)
        boxes[node.output] = node.rule.interval([boxes[k] for k in node.inputs], p)
    return IntervalPass(boxes, params, cleans)


def affine_tail(graph):
    """Outputs of the affine nodes that only feed the output through affine nodes.

    Folding these into the specification (rather than bounding their outputs) is what
    makes the margin bounds tighter than subtracting logit intervals.
    """
    consumers = graph.consumers()
    tail = set()
    for node in reversed(graph.nodes):
        if not node.is_affine:
            continue
        users = consumers.get(node.output, [])
        if node.output == graph.output and not users:
            tail.add(node.output)
        elif users and node.output != graph.output and all(u.output in tail for u in users):
            tail.add(node.output)
    return frozenset(tail)


def concretize(coefficients, box):
    """min over x in box of sum(A * x), per (batch, spec)."""
    center = ops.expand_dims((box.upper + box.lower) / 2, 1)
    radius = ops.expand_dims((box.upper - box.lower) / 2, 1)
    axes = tuple(range(2, len(coefficients.shape)))
    return ops.sum(coefficients * center - ops.abs(coefficients) * radius, axis=axes)


def _dot(coefficients, value):
    """sum(A * value) per (batch, spec) for a value of shape (batch, *shape)."""
    axes = tuple(range(2, len(coefficients.shape)))
    return ops.sum(coefficients * ops.expand_dims(value, 1), axis=axes)


def backward_lower_bound(graph, start, coefficients, interval, *, relax=True, stop=frozenset(),
                         lower_slopes=None):
    """Lower bound of `sum(A * v)` where `v` is the value `start` of the graph.

    Walks the graph backwards from `start`, mapping the coefficients through each
    affine rule's adjoint. At a monotone node it applies the rule's linear relaxation
    (when `relax` and the rule has one), or else bounds that node's output with its box.
    Values in `stop` are bounded with their boxes directly.

    Args:
        coefficients: tensor of shape (batch, specs, *shape of start).
        interval: the `IntervalPass` whose boxes and parameters are used.
        lower_slopes: optional `{node output: slopes}` with slopes of shape
            (batch, specs, *node input shape) in [0, 1], one per specification: they
            replace the relaxation's lower slopes where the rule's `free_lower_slopes`
            allows it (alpha-CROWN), and are ignored elsewhere.

    Returns:
        Tensor of shape (batch, specs).
    """
    boxes, params = interval.boxes, interval.params
    pending = {start: coefficients}
    bound = None

    def add(term):
        nonlocal bound
        bound = term if bound is None else bound + term

    def accumulate(key, a):
        pending[key] = a if key not in pending else pending[key] + a

    for node in reversed(graph.nodes):
        a = pending.pop(node.output, None)
        if a is None:
            continue
        if node.output in stop:
            add(concretize(a, boxes[node.output]))
            continue
        rule = node.rule
        if node.is_affine:
            offset = rule.offset(params[node.output])
            if offset is not None:
                add(_offset_term(a, offset))
            for key, a_in in zip(node.inputs, rule.transpose(a, params[node.output])):
                accumulate(key, a_in)
            continue
        relaxation = None
        if relax:
            in_box = boxes[node.inputs[0]]
            relaxation = rule.relaxation(in_box.lower, in_box.upper)
        if relaxation is None:
            add(concretize(a, boxes[node.output]))
            continue
        positive, negative = ops.maximum(a, 0.0), ops.minimum(a, 0.0)
        add(_dot(positive, relaxation.lower_intercept) + _dot(negative, relaxation.upper_intercept))
        lower_slope = ops.expand_dims(relaxation.lower_slope, 1)
        if lower_slopes is not None and node.output in lower_slopes:
            free = rule.free_lower_slopes(in_box.lower, in_box.upper)
            if free is not None:
                # Clipped again so that no caller can pass an invalid slope.
                alpha = ops.clip(lower_slopes[node.output], 0.0, 1.0)
                lower_slope = ops.where(ops.expand_dims(free, 1) > 0, alpha, lower_slope)
        accumulate(
            node.inputs[0],
            positive * lower_slope + negative * ops.expand_dims(relaxation.upper_slope, 1),
        )
    for key, a in pending.items():
        add(concretize(a, boxes[key]))
    return bound


def _offset_term(coefficients, offset):
    """sum(A * offset) with the offset broadcast to the node's output shape."""
    out_rank = len(coefficients.shape) - 2
    offset_rank = len(offset.shape)
    if offset_rank < out_rank:
        # A per-channel bias (channels last) broadcasts over the leading axes.
        axes = tuple(range(2, 2 + out_rank - offset_rank))
        return ops.sum(ops.sum(coefficients, axis=axes) * offset, axis=tuple(range(2, 2 + offset_rank)))
    # Offsets given with a leading batch axis of size 1.
    offset = ops.reshape(offset, offset.shape[1:]) if offset_rank == out_rank + 1 else offset
    reduce_axes = [i + 2 for i, n in enumerate(offset.shape) if n == 1]
    summed = ops.sum(coefficients, axis=reduce_axes, keepdims=True) if reduce_axes else coefficients
    return ops.sum(summed * offset, axis=tuple(range(2, 2 + out_rank)))


def identity_coefficients(box):
    """Coefficients [I; -I] over the flattened features of a (batch, *shape) value.

    Lower bounds for them give the value's lower bounds and minus its upper bounds.
    """
    shape = box.lower.shape[1:]
    size = 1
    for n in shape:
        size *= int(n)
    eye = ops.eye(size, dtype=box.lower.dtype)
    both = ops.concatenate([eye, -eye], axis=0)
    both = ops.reshape(both, (1, 2 * size, *shape))
    return ops.broadcast_to(both, (ops.shape(box.lower)[0], 2 * size, *shape)), size


def crown_refined_values(graph):
    """Values whose boxes CROWN tightens: inputs of relaxed non-affine nodes that an
    affine node computes from something other than the model input (one affine map of
    the input box already has an exact interval)."""
    producers = graph.producers()
    refined = []
    for node in graph.nodes:
        if node.is_affine or len(node.inputs) != 1:
            continue
        producer = producers.get(node.inputs[0])
        if producer is None or not producer.is_affine or producer.inputs == (graph.input,):
            continue
        if node.inputs[0] not in refined:
            refined.append(node.inputs[0])
    return refined


def crown_bytes_per_sample(graph):
    """Largest coefficient tensor CROWN builds for one sample, in bytes (float32).

    Refining a value of n elements carries 2n coefficient rows back through every
    value computed before it.
    """
    sizes = {graph.input: math.prod(graph.input_shape)}
    for node in graph.nodes:
        for key, shape in zip(node.inputs, node.rule.input_shapes):
            sizes[key] = math.prod(shape)
    largest = 0
    seen = [sizes[graph.input]]
    refined = set(crown_refined_values(graph))
    for node in graph.nodes:
        key = node.inputs[0]
        if key in refined and not node.is_affine:
            largest = max(largest, 2 * sizes[key] * max(seen))
        seen.extend(sizes[k] for k in node.inputs)
    largest = max(largest, graph.num_classes * max(seen))
    return 4 * largest


def crown_refinement(graph):
    """A `refine` callback for `interval_pass` that tightens the boxes of
    `crown_refined_values` with a backward CROWN pass each (keeping the intersection
    with the interval box)."""
    pending = set(crown_refined_values(graph))

    def refine(node, boxes, params):
        key = node.inputs[0]
        if key not in pending:
            return
        pending.discard(key)
        box = boxes[key]
        coefficients, size = identity_coefficients(box)
        partial = IntervalPass(boxes, params, None)
        bound = backward_lower_bound(graph, key, coefficients, partial, relax=True)
        shape = (-1, *box.lower.shape[1:])
        lower = ops.reshape(bound[:, :size], shape)
        upper = -ops.reshape(bound[:, size:], shape)
        boxes[key] = Box(ops.maximum(box.lower, lower), ops.minimum(box.upper, upper))

    return refine


def forward_pass(graph, x, *, params=None, training=False):
    """The graph's output at `x`, and the rules' parameters of the pass.

    With `params` None they are computed from `x` (training-mode batch norm takes its
    statistics from it); given (those of a clean pass), the network is evaluated at
    `x` with them, so that an attack point is run through the network the bounds
    describe, with the clean batch's statistics. Affine nodes are evaluated by their
    rules (as the interval pass evaluates centres): no moving statistics are updated
    and dropout is the identity, as in the bounds.
    """
    values = {graph.input: x}
    computed = {} if params is None else params
    for node in graph.nodes:
        inputs = [values[k] for k in node.inputs]
        if params is None:
            computed[node.output] = node.rule.parameters(inputs, training)
        p = computed[node.output]
        if node.is_affine:
            values[node.output] = node.rule.affine(inputs, p)
        else:
            values[node.output] = node.rule.forward(inputs, p, False)
    return values[graph.output], computed
