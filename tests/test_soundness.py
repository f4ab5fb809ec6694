"""Bounds hold at sampled points and at PGD's worst points, for every method and layer."""

import numpy as np
import pytest
from keras import ops

import cactus_keras
from cactus_keras import attacks, backend, bounds
from cactus_keras.bounds.propagation import crown_refinement, interval_pass

from random_models import BUILDERS

SEEDS = [0, 1]


def _tolerance(values):
    # Bounds are computed in float32, like the network itself.
    return 1e-4 * (1.0 + np.abs(values))


def _setup(name, seed):
    net = BUILDERS[name](seed)
    graph = bounds.parse_network(net)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (6, *graph.input_shape)).astype("float32")
    y = rng.integers(0, graph.num_classes, len(x))
    epsilon = float(rng.uniform(0.01, 0.1))
    return net, graph, x, y, epsilon


def _sample_points(box, count, rng):
    """Uniform points and box corners, `count` per sample, flattened into the batch."""
    lower = np.repeat(ops.convert_to_numpy(box.lower), count, axis=0)
    upper = np.repeat(ops.convert_to_numpy(box.upper), count, axis=0)
    u = rng.uniform(0, 1, lower.shape)
    corners = rng.integers(0, 2, lower.shape)
    u = np.where(np.arange(len(u)).reshape(-1, *[1] * (u.ndim - 1)) % 2 == 0, u, corners)
    points = lower + u * (upper - lower)
    return points.astype("float32"), lower, upper


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("refine", [False, True], ids=["ibp", "crown"])
def test_intermediate_boxes_contain_sampled_activations(name, seed, refine):
    net, graph, x, y, epsilon = _setup(name, seed)
    rng = np.random.default_rng(seed + 10)
    count = 16
    box = bounds.input_box(x, epsilon)
    points, _, _ = _sample_points(box, count, rng)
    repeated = bounds.Box(
        ops.repeat(box.lower, count, axis=0), ops.repeat(box.upper, count, axis=0)
    )
    refine_fn = crown_refinement(graph) if refine else None
    result = interval_pass(graph, repeated, clean=points, refine=refine_fn)
    checked = 0
    for key, value in result.clean.items():
        if key not in result.boxes:
            continue
        value = ops.convert_to_numpy(value)
        lower = ops.convert_to_numpy(result.boxes[key].lower)
        upper = ops.convert_to_numpy(result.boxes[key].upper)
        tol = _tolerance(value)
        assert np.all(value >= lower - tol), key
        assert np.all(value <= upper + tol), key
        assert np.all(lower <= upper + 1e-6)
        checked += 1
    assert checked >= len(graph.nodes) - 1
    # The clean pass is the model's own forward pass.
    np.testing.assert_allclose(
        ops.convert_to_numpy(result.clean[graph.output]).argmax(-1),
        net.predict(points, verbose=0).argmax(-1),
    )


def _margins(logits, y):
    true = logits[np.arange(len(y)), y][:, None]
    return true - logits


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_margin_bounds_hold_at_samples_and_pgd_points(name, seed):
    net, graph, x, y, epsilon = _setup(name, seed)
    box = bounds.input_box(x, epsilon)
    lower_by_method = {
        m: ops.convert_to_numpy(bounds.margin_lower_bounds(graph, box, y, m))
        for m in bounds.BOUNDS
    }
    # Samples and corners.
    rng = np.random.default_rng(seed + 20)
    count = 64
    points, _, _ = _sample_points(box, count, rng)
    labels = np.repeat(y, count)
    logits_graph = interval_pass(
        graph,
        bounds.Box(ops.repeat(box.lower, count, 0), ops.repeat(box.upper, count, 0)),
        clean=points,
    ).clean[graph.output]
    sampled = _margins(ops.convert_to_numpy(logits_graph), labels).reshape(len(x), count, -1)
    worst_sampled = sampled.min(axis=1)
    # PGD on each margin separately: the attack's best point for that margin.
    def margin_j(v, labels, j):
        out = interval_pass(graph, bounds.Box(v, v), clean=v).clean[graph.output]
        return ops.take_along_axis(out, labels[:, None], 1)[:, 0] - ops.take_along_axis(out, j[:, None], 1)[:, 0]

    value_and_grad = backend.value_and_input_gradient(margin_j)
    worst_pgd = np.zeros_like(worst_sampled)
    for j in range(graph.num_classes):
        _, best = attacks.minimize_in_box(
            value_and_grad,
            ops.convert_to_numpy(box.lower),
            ops.convert_to_numpy(box.upper),
            x,
            args=(ops.convert_to_tensor(y.astype("int32")), ops.convert_to_tensor(np.full(len(y), j, "int32"))),
            steps=15,
            restarts=2,
            step_size=epsilon / 5,
            seed=seed,
        )
        worst_pgd[:, j] = best
    for method, lower in lower_by_method.items():
        for worst in (worst_sampled, worst_pgd):
            assert np.all(worst >= lower - _tolerance(worst)), method
        own = np.eye(graph.num_classes, dtype=bool)[y]
        np.testing.assert_allclose(lower[own], 0.0, atol=1e-6)
    # alpha-CROWN keeps CROWN's bound in its maximum: never looser, exactly.
    assert np.all(lower_by_method["alpha-crown"] >= lower_by_method["crown"])
    best = lower_by_method["best"]
    assert np.all(best >= lower_by_method["ibp"] - 1e-6)
    assert np.all(best >= lower_by_method["crown"] - 1e-6)
    np.testing.assert_allclose(best, np.maximum(lower_by_method["ibp"], lower_by_method["alpha-crown"]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("method", bounds.BOUNDS)
def test_certified_samples_are_never_attacked(name, method):
    net = BUILDERS[name](3)
    graph = bounds.parse_network(net)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (40, *graph.input_shape)).astype("float32")
    # Labels the network predicts, so that some samples can be certified.
    y = net.predict(x, verbose=0).argmax(-1)
    epsilon = 0.002
    result = cactus_keras.certify(net, x, y, epsilon, bound=method, verbose=0)
    attack = attacks.pgd(net, x, y, epsilon, steps=20, restarts=2, verbose=0)
    assert not np.any(result.certified & attack.attacked)
    assert attack.robust_accuracy >= result.certified_accuracy
    # A test that could not fail would certify nothing, or everything.
    assert 0 < result.certified.sum()


# The mlp has dropout, which a training pass applies to the clean values only.
@pytest.mark.parametrize("name", ["cnn"])
def test_training_pass_bounds_the_network_with_clean_batch_statistics(name):
    """A training pass must bound the network whose batch norm uses the clean batch's
    statistics: the same as inference on a copy whose moving statistics are those."""
    import keras

    from cactus_keras.certification import set_batchnorm_statistics

    net, graph, x, y, epsilon = _setup(name, 5)
    x = np.random.default_rng(5).uniform(0, 1, (64, *graph.input_shape)).astype("float32")
    y = np.random.default_rng(6).integers(0, graph.num_classes, len(x))
    copy = keras.models.clone_model(net)
    copy.set_weights(net.get_weights())
    assert set_batchnorm_statistics(copy, x)
    box = bounds.input_box(x, epsilon)
    for method in ("ibp", "crown-ibp"):
        trained, logits = bounds.margin_lower_bounds(graph, box, y, method, clean=x, training=True)
        inference = bounds.margin_lower_bounds(bounds.parse_network(copy), box, y, method)
        np.testing.assert_allclose(ops.convert_to_numpy(trained), ops.convert_to_numpy(inference), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ops.convert_to_numpy(logits), copy.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "residual"])
def test_alpha_crown_optimises_beyond_crown_and_zero_steps_is_crown(name):
    from cactus_keras.bounds.alpha_crown import alpha_crown_lower_bounds

    net, graph, x, y, _ = _setup(name, 0)
    box = bounds.input_box(x, 0.1)
    spec = bounds.margin_specification(y, graph.num_classes)
    crown = ops.convert_to_numpy(bounds.margin_lower_bounds(graph, box, y, "crown"))
    zero = ops.convert_to_numpy(alpha_crown_lower_bounds(graph, box, spec, steps=0))
    np.testing.assert_array_equal(zero, crown)
    optimised = ops.convert_to_numpy(alpha_crown_lower_bounds(graph, box, spec, steps=10))
    assert np.all(optimised >= crown)
    # The optimisation must do something on these unstable networks.
    assert (optimised - crown).max() > 1e-3


def test_alpha_crown_slopes_outside_zero_one_are_clipped_to_a_sound_relaxation():
    from cactus_keras.bounds.propagation import affine_tail, backward_lower_bound

    net, graph, x, y, epsilon = _setup("mlp", 1)
    box = bounds.input_box(x, epsilon)
    spec = bounds.margin_specification(y, graph.num_classes)
    interval = interval_pass(graph, box, skip=affine_tail(graph), refine=crown_refinement(graph))
    relu = [n for n in graph.nodes if not n.is_affine
            and n.rule.free_lower_slopes(interval.boxes[n.inputs[0]].lower,
                                         interval.boxes[n.inputs[0]].upper) is not None]
    assert relu
    shape = interval.boxes[relu[0].inputs[0]].lower.shape
    wild = {relu[0].output: ops.full((shape[0], graph.num_classes, *shape[1:]), 5.0)}
    clipped = {relu[0].output: ops.ones((shape[0], graph.num_classes, *shape[1:]))}
    np.testing.assert_allclose(
        ops.convert_to_numpy(backward_lower_bound(graph, graph.output, spec, interval, lower_slopes=wild)),
        ops.convert_to_numpy(backward_lower_bound(graph, graph.output, spec, interval, lower_slopes=clipped)))
