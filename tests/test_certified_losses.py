"""The certified loss family: MTL-IBP and SABR against independent computations of
their parts, SABR's box inside the epsilon ball, the options' errors."""

import keras
import numpy as np
import pytest
from keras import ops

import cactus_keras
from cactus_keras import backend, bounds
from cactus_keras.experiments import TrainConfig
from cactus_keras.training import certified_losses, losses

EPSILON = 0.1


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    return cactus_keras.models.cnn3((12, 12, 1), 3)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 12, 12, 1)).astype("float32")
    # Pixels at the ends of the input range: the ball is cut there.
    x[:, :2] = 0.0
    x[:, -2:] = 1.0
    return x, rng.integers(0, 3, n)


def _cross_entropy(net, y):
    def per_sample(x, labels):
        return keras.losses.sparse_categorical_crossentropy(labels, net(x), from_logits=True)

    return per_sample


def _pgd(net, x, y, lower, upper, noise, steps):
    """The attack as documented, written out with the input gradient of `attacks`."""
    value_and_grad = backend.value_and_input_gradient(_cross_entropy(net, y))
    labels = ops.convert_to_tensor(y.astype("int32"))
    step = 2.5 * (upper - lower) / (2 * steps)
    point = lower + noise * (upper - lower)
    for _ in range(steps):
        _, grad = value_and_grad(ops.convert_to_tensor(point), labels)
        point = np.clip(point + step * np.sign(ops.convert_to_numpy(grad)), lower, upper)
    return point.astype("float32")


def _noise(seed, shape):
    # The model draws the attack's random start first from its seed generator.
    return ops.convert_to_numpy(keras.random.uniform(shape, seed=keras.random.SeedGenerator(seed)))


def test_mtl_ibp_loss_is_alpha_ibp_plus_one_minus_alpha_adversarial():
    x, y = _data()
    net = _net()
    alpha, steps, weight = 0.3, 3, 0.2
    model = cactus_keras.CactusModel(net, EPSILON, certified_loss="mtl-ibp", mtl_alpha=alpha,
                                     attack_steps=steps, standard_weight=weight, seed=5)
    (result,) = model.member_results(x, y, training=False)
    box = bounds.input_box(x, EPSILON)
    lower, upper = (ops.convert_to_numpy(b) for b in box)
    point = _pgd(net, x, y, lower, upper, _noise(5, x.shape), steps)
    # The attack found something: the adversarial loss is above the clean one.
    adversarial = ops.convert_to_numpy(_cross_entropy(net, y)(point, y))
    clean = ops.convert_to_numpy(_cross_entropy(net, y)(x, y))
    assert adversarial.mean() > clean.mean()
    graph = bounds.parse_network(net)
    ibp = ops.convert_to_numpy(losses.certified_loss(y, bounds.margin_lower_bounds(graph, box, y, "ibp")))
    expected = alpha * ibp + (1 - alpha) * adversarial
    np.testing.assert_allclose(ops.convert_to_numpy(result.certified_loss), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(result.loss), weight * clean + (1 - weight) * expected,
                               rtol=1e-4, atol=1e-5)
    # The metrics certify the whole ball.
    np.testing.assert_allclose(ops.convert_to_numpy(result.margin_lower),
                               ops.convert_to_numpy(bounds.margin_lower_bounds(graph, box, y, "ibp")),
                               rtol=1e-5, atol=1e-5)


def test_sabr_loss_is_the_worst_case_loss_of_the_small_box_at_the_attack_point():
    x, y = _data()
    net = _net(1)
    lam, steps = 0.3, 2
    model = cactus_keras.CactusModel(net, EPSILON, certified_loss="sabr", sabr_lambda=lam,
                                     attack_steps=steps, seed=7)
    (result,) = model.member_results(x, y, training=False)
    box = bounds.input_box(x, EPSILON)
    lower, upper = (ops.convert_to_numpy(b) for b in box)
    radius = np.minimum(lam * EPSILON, (upper - lower) / 2)
    centre = _pgd(net, x, y, lower + radius, upper - radius, _noise(7, x.shape), steps)
    small = bounds.Box(ops.convert_to_tensor(centre - radius), ops.convert_to_tensor(centre + radius))
    graph = bounds.parse_network(net)
    expected = losses.certified_loss(y, bounds.margin_lower_bounds(graph, small, y, "ibp"))
    np.testing.assert_allclose(ops.convert_to_numpy(result.certified_loss),
                               ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-5)
    # The small box is easier than the ball, and the metrics use the ball.
    ball = bounds.margin_lower_bounds(graph, box, y, "ibp")
    assert np.all(ops.convert_to_numpy(result.certified_loss)
                  <= ops.convert_to_numpy(losses.certified_loss(y, ball)) + 1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(result.margin_lower), ops.convert_to_numpy(ball),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [0.2, 0.7, 1.0])
def test_sabr_box_lies_inside_the_ball_and_its_bounds_hold_on_it(lam):
    x, y = _data(8, seed=int(lam * 10))
    rng = np.random.default_rng(3)
    box = bounds.input_box(x, EPSILON)
    radius = certified_losses.sabr_radius(box, EPSILON, lam)
    # Any proposed centre, even far outside the ball, gives a box inside it.
    centre = ops.convert_to_tensor(rng.uniform(-0.5, 1.5, x.shape).astype("float32"))
    small = certified_losses.sabr_box(box, radius, centre)
    lower, upper = ops.convert_to_numpy(small.lower), ops.convert_to_numpy(small.upper)
    ball_lower, ball_upper = ops.convert_to_numpy(box.lower), ops.convert_to_numpy(box.upper)
    width = np.minimum(2 * lam * EPSILON, ball_upper - ball_lower)
    np.testing.assert_allclose(upper - lower, width, atol=1e-6)
    count = 32
    u = rng.uniform(0, 1, (count, *x.shape)).astype("float32")
    u[:2] = rng.integers(0, 2, (2, *x.shape))  # corners too
    points = lower + u * (upper - lower)
    assert np.all(points >= x - EPSILON - 1e-6) and np.all(points <= x + EPSILON + 1e-6)
    assert np.all(points >= 0.0) and np.all(points <= 1.0)
    net = _net(2)
    graph = bounds.parse_network(net)
    margin_lower = ops.convert_to_numpy(bounds.margin_lower_bounds(graph, small, y, "ibp"))
    logits = net.predict(points.reshape(-1, *x.shape[1:]), verbose=0).reshape(count, len(x), -1)
    margins = logits[:, np.arange(len(y)), y][..., None] - logits
    assert np.all(margins.min(axis=0) >= margin_lower - 1e-4 * (1 + np.abs(margin_lower)))


@pytest.mark.parametrize("name", ["mtl-ibp", "sabr"])
def test_at_epsilon_zero_the_losses_are_the_clean_cross_entropy(name):
    # The ramp sets the epsilon variable; the attack and SABR's box follow it.
    x, y = _data()
    model = cactus_keras.CactusModel(_net(), EPSILON, certified_loss=name, attack_steps=2)
    model.epsilon.assign(0.0)
    (result,) = model.member_results(x, y, training=False)
    np.testing.assert_allclose(ops.convert_to_numpy(result.certified_loss),
                               ops.convert_to_numpy(result.standard_loss), rtol=1e-4, atol=1e-5)


def test_a_pruned_members_attack_attacks_the_pruned_network():
    x, y = _data()
    net = _net(3)
    model = cactus_keras.CactusModel(net, EPSILON, compression=[cactus_keras.FixedMaskPruning(0.6)],
                                     include_full_network=False, certified_loss="mtl-ibp",
                                     mtl_alpha=0.0, attack_steps=2, seed=11)
    (result,) = model.member_results(x, y, training=False)
    box = bounds.input_box(x, EPSILON)
    lower, upper = (ops.convert_to_numpy(b) for b in box)
    noise = _noise(11, x.shape)
    unpruned = ops.convert_to_numpy(_cross_entropy(net, y)(_pgd(net, x, y, lower, upper, noise, 2), y))
    pruned = model.apply_compression()  # the pruned kernels, written into `net`
    point = _pgd(pruned, x, y, lower, upper, noise, 2)
    expected = ops.convert_to_numpy(_cross_entropy(pruned, y)(point, y))
    np.testing.assert_allclose(ops.convert_to_numpy(result.certified_loss), expected,
                               rtol=1e-4, atol=1e-5)
    assert np.abs(expected - unpruned).max() > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    (dict(certified_loss="trades"), "Unknown `certified_loss`"),
    (dict(certified_loss="mtl-ibp", mtl_alpha=1.5), "`mtl_alpha`"),
    (dict(certified_loss="sabr", sabr_lambda=0.0), "`sabr_lambda`"),
    (dict(certified_loss="sabr", attack_steps=0), "attack_steps"),
    (dict(certified_loss="worst-case", mtl_alpha=0.5), "option of certified_loss 'mtl-ibp'"),
    (dict(certified_loss="mtl-ibp", sabr_lambda=0.5), "option of certified_loss 'sabr'"),
])
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cactus_keras.CactusModel(_net(), EPSILON, **kwargs)
    with pytest.raises(ValueError, match=message):
        TrainConfig(dataset="mnist", epsilon=EPSILON, **kwargs)


def test_options_round_trip_through_the_config():
    model = cactus_keras.CactusModel(_net(), EPSILON, certified_loss="sabr", sabr_lambda=0.25)
    again = cactus_keras.CactusModel.from_config(model.get_config())
    assert again.certified_loss == "sabr"
    assert again.loss_options == {"sabr_lambda": 0.25, "attack_steps": 8}


def test_the_training_bound_refuses_alpha_crown():
    with pytest.raises(ValueError, match="bound"):
        cactus_keras.CactusModel(_net(), EPSILON, bound="alpha-crown")
