"""L-infinity PGD attacks: the empirical counterpart of a certificate.

For every sample, a certificate means PGD finds nothing, so the accuracy under attack is
an upper bound of the certified accuracy (and a lower bound of true robustness).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from cactus_keras import backend, validation
from cactus_keras.bounds.margins import input_box
from cactus_keras.quiet import progress_verbosity

# The public names; `minimize_in_box` and `margin_objective` are what `pgd` runs.
__all__ = ["AttackResult", "pgd"]


@dataclasses.dataclass
class AttackResult:
    """Outcome of `pgd`.

    Attributes:
        x_adv: the worst point found per sample (lowest margin).
        margin: min over j != y of z_y - z_j at `x_adv` (<= 0 means attacked).
        attacked: True where the prediction at `x_adv` is not the label.
        robust_accuracy: fraction of samples not attacked.

    Example:

    ```python
    result = cactus_keras.attacks.pgd(net, x_test, y_test, epsilon=0.05, steps=5)
    print(result.robust_accuracy, result.attacked[:10], result.margin[:10])
    assert result.x_adv.shape == x_test.shape
    ```
    """

    x_adv: np.ndarray
    margin: np.ndarray
    attacked: np.ndarray
    robust_accuracy: float
    epsilon: float
    steps: int
    restarts: int


def minimize_in_box(value_and_grad, lower, upper, start, *, args=(), steps, restarts, step_size, seed=0):
    """Minimizes a per-sample objective over the box by signed-gradient descent.

    `value_and_grad(x, *args)` returns the objective per sample and its input gradient
    (see `backend.value_and_input_gradient`). Restart 0 starts at `start`, the others
    at uniform random points of the box. Every iterate counts; returns the best point
    and value per sample.
    """
    rng = np.random.default_rng(seed)
    lower = np.asarray(lower, "float32")
    upper = np.asarray(upper, "float32")
    best_x = np.asarray(start, "float32").copy()
    best = np.full(len(best_x), np.inf, "float32")
    for restart in range(restarts):
        x = best_x.copy() if restart == 0 else rng.uniform(lower, upper).astype("float32")
        for _ in range(steps + 1):
            values, grad = value_and_grad(ops.convert_to_tensor(x), *args)
            values = ops.convert_to_numpy(values)
            improved = values < best
            best_x[improved] = x[improved]
            best = np.where(improved, values, best)
            x = np.clip(x - step_size * np.sign(ops.convert_to_numpy(grad)), lower, upper)
    return best_x, best


def margin_objective(model):
    """fn(x, labels) -> min over j != y of z_y - z_j, per sample."""

    def objective(x, labels):
        logits = model(x, training=False)
        num_classes = logits.shape[-1]
        one_hot = ops.one_hot(labels, num_classes, dtype=logits.dtype)
        true = ops.sum(logits * one_hot, axis=-1)
        others = ops.max(logits - one_hot * 1e9, axis=-1)
        return true - others

    return objective


def pgd(
    model,
    x,
    y,
    epsilon,
    *,
    steps=20,
    restarts=1,
    step_size=None,
    input_range=(0.0, 1.0),
    batch_size=256,
    seed=0,
    verbose="auto",
):
    """Projected gradient descent on the logit margin within the epsilon ball.

    Args:
        model: a Keras model returning logits (or probabilities: the margin sign is the
            same).
        x: inputs.
        y: their integer labels.
        epsilon: L-infinity radius, in the units of `x`.
        steps: gradient steps per restart.
        restarts: restart 0 starts at `x`, the others at random points of the ball.
        step_size: defaults to 2.5 * epsilon / steps (Madry et al.).
        input_range: valid data range the ball is cut to, or None.

    Returns:
        An `AttackResult`.

    Example:

    ```python
    result = cactus_keras.attacks.pgd(net, x_test, y_test, epsilon=0.1, steps=10)
    print(result.robust_accuracy)
    ```
    """
    epsilon = validation.check_epsilon(epsilon)
    steps = validation.check_positive_int(steps, "steps")
    restarts = validation.check_positive_int(restarts, "restarts")
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    input_range = validation.check_input_range(input_range)
    num_classes = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    x, y = validation.check_data(model, x, y, num_classes, input_range)
    if step_size is None:
        step_size = 2.5 * epsilon / steps
    value_and_grad = backend.value_and_input_gradient(margin_objective(model))
    x_adv = np.empty_like(x)
    margin = np.empty(len(x), "float32")
    if verbose == "auto":
        verbose = progress_verbosity() if len(x) > batch_size else 0
    elif verbose is True:
        verbose = progress_verbosity()
    progress = (keras.utils.Progbar(len(x), unit_name="sample", verbose=int(verbose))
                if verbose in (1, 2) else None)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        box = input_box(xb, epsilon, input_range)
        labels = ops.convert_to_tensor(yb.astype("int32"))
        best_x, best = minimize_in_box(
            value_and_grad,
            ops.convert_to_numpy(box.lower),
            ops.convert_to_numpy(box.upper),
            xb,
            args=(labels,),
            steps=steps,
            restarts=restarts,
            step_size=step_size,
            seed=seed + start,
        )
        x_adv[start : start + len(xb)] = best_x
        margin[start : start + len(xb)] = best
        if progress is not None:
            progress.add(len(xb))
    # Recompute predictions so `attacked` agrees with the model's own arg-max.
    predicted = np.argmax(model.predict(x_adv, batch_size=batch_size, verbose=0), axis=-1)
    attacked = predicted != y
    return AttackResult(
        x_adv=x_adv,
        margin=margin,
        attacked=attacked,
        robust_accuracy=float(1.0 - attacked.mean()),
        epsilon=epsilon,
        steps=steps,
        restarts=restarts,
    )
