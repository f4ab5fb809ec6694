"""alpha-CROWN: CROWN with the ReLU lower slopes optimised per sample and margin.

CROWN's ReLU relaxation may take any lower line `a * x` with `a` in [0, 1] at an
unstable neuron (l < 0 < u); CROWN picks a = 1 if u > -l else 0. Every choice gives a
sound bound, so alpha-CROWN (Xu et al. 2021) treats the slopes as variables and
maximises the margin lower bounds over them by projected gradient ascent. The slopes
are per sample, per neuron and per margin (one set for each specification row).

What this implementation optimises: the slopes of the final backward pass, the one
that bounds the margins. The intermediate boxes are CROWN's (its backward refinement),
computed once and not re-optimised; that keeps the cost at about `steps + 2` final
backward passes on top of CROWN's refinement, where full alpha-CROWN re-optimises every
intermediate bound as well.

Never looser than CROWN: the slopes start at CROWN's, the result is the best bound
seen per margin over the iterates (each sound), and CROWN's own bound is part of that
maximum.
"""

from __future__ import annotations

from keras import ops

from cactus_keras import backend
from cactus_keras.bounds.propagation import (
    affine_tail,
    backward_lower_bound,
    crown_refinement,
    interval_pass,
)

# Defaults: a few tens of Adam steps, the learning rate of the slopes in alpha-CROWN.
STEPS = 20
LEARNING_RATE = 0.1
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-8


def _optimised_nodes(graph, interval):
    """The relaxed nodes with free lower slopes, and CROWN's slopes at them."""
    found = {}
    for node in graph.nodes:
        if node.is_affine or node.inputs[0] not in interval.boxes:
            continue
        box = interval.boxes[node.inputs[0]]
        relaxation = node.rule.relaxation(box.lower, box.upper)
        if relaxation is None or node.rule.free_lower_slopes(box.lower, box.upper) is None:
            continue
        found[node.output] = relaxation.lower_slope
    return found


def alpha_crown_lower_bounds(graph, box, spec, *, steps=STEPS, learning_rate=LEARNING_RATE):
    """Lower bounds of `spec @ logits` over `box`, shape (batch, specs).

    Args:
        graph: a `BoundGraph`.
        box: the input `Box`.
        spec: (batch, specs, num_classes) rows of a linear specification of the logits.
        steps: Adam steps on the slopes (0 gives CROWN's bound).
        learning_rate: Adam's step size on the slopes (they live in [0, 1]).
    """
    tail = affine_tail(graph)
    interval = interval_pass(graph, box, skip=tail, refine=crown_refinement(graph))
    crown = backward_lower_bound(graph, graph.output, spec, interval, relax=True)
    initial = _optimised_nodes(graph, interval)
    if not initial or steps == 0:
        return crown
    keys = list(initial)
    specs = spec.shape[1]

    def per_spec(slope):
        expanded = ops.expand_dims(slope, 1)
        return ops.broadcast_to(expanded, (ops.shape(slope)[0], specs, *slope.shape[1:]))

    def bound_at(alphas):
        lower = backward_lower_bound(graph, graph.output, spec, interval, relax=True,
                                     lower_slopes=dict(zip(keys, alphas)))
        # The specifications are independent, so the gradient of the sum is each
        # bound's own gradient.
        return ops.sum(lower), lower

    def step(t, state):
        alphas, first, second, best = state
        lower, grads = backend.value_and_gradients(bound_at, alphas)
        best = ops.maximum(best, ops.stop_gradient(lower))
        t = ops.cast(t + 1, spec.dtype)
        new_alphas, new_first, new_second = [], [], []
        for alpha, m, v, g in zip(alphas, first, second, grads):
            if g is None:
                # A ReLU the final pass never reaches (behind a max pooling, bounded
                # by its box): its slopes do not matter.
                g = ops.zeros_like(alpha)
            m = _BETA1 * m + (1 - _BETA1) * g
            v = _BETA2 * v + (1 - _BETA2) * g * g
            update = (m / (1 - _BETA1 ** t)) / (ops.sqrt(v / (1 - _BETA2 ** t)) + _EPSILON)
            # Ascent on the bound, projected onto the valid slopes.
            new_alphas.append(ops.clip(alpha + learning_rate * update, 0.0, 1.0))
            new_first.append(m)
            new_second.append(v)
        return new_alphas, new_first, new_second, best

    alphas = [per_spec(initial[k]) for k in keys]
    zeros = [ops.zeros_like(a) for a in alphas]
    state = (alphas, zeros, [ops.zeros_like(a) for a in alphas], crown)
    alphas, _, _, best = ops.fori_loop(0, steps, step, state)
    # The last iterate has not been evaluated yet.
    final = backward_lower_bound(graph, graph.output, spec, interval, relax=True,
                                 lower_slopes=dict(zip(keys, alphas)))
    return ops.stop_gradient(ops.maximum(best, final))
