"""The certified loss family: what `L_cert` of one network of the compression set is.

`certified_loss` is one string enum, the same in `CactusModel`, `TrainConfig`, the
TOML [training] table and the CLI (`--certified-loss`):

- "worst-case" (default): the cross-entropy on the negated margin lower bounds over the
  epsilon ball, from `bound` (IBP or CROWN-IBP).
- "mtl-ibp" (De Palma et al. 2024): `mtl_alpha * L_worst-case + (1 - mtl_alpha) * L_adv`,
  `L_adv` the cross-entropy at a PGD point of the epsilon ball.
- "sabr" (Mueller et al. 2023): the worst-case loss of a small box of radius
  `sabr_lambda * epsilon` (SABR's lambda, a fraction of epsilon; not the
  `standard_weight` lambda) centred at a PGD point and kept inside the epsilon ball.

The attack runs `attack_steps` signed-gradient steps on the cross-entropy from a
random start, through the network the bounds describe (the member's weights, the
clean batch's batch-norm statistics), and its point is a constant of the loss
(`stop_gradient`): no gradient flows through the attack.

Example:

```python
model = cactus_keras.CactusModel(net, epsilon=0.1, certified_loss="mtl-ibp", mtl_alpha=0.3)
```
"""

from __future__ import annotations

from keras import ops

from cactus_keras import backend, validation
from cactus_keras.bounds.rules import Box
from cactus_keras.training import losses

CERTIFIED_LOSSES = ("worst-case", "mtl-ibp", "sabr")
# Each loss's options and their defaults (None given = the default).
DEFAULTS = {"mtl_alpha": 0.5, "sabr_lambda": 0.4, "attack_steps": 8}
OPTIONS = {"worst-case": (), "mtl-ibp": ("mtl_alpha", "attack_steps"),
           "sabr": ("sabr_lambda", "attack_steps")}


def check_certified_loss(certified_loss, *, mtl_alpha=None, sabr_lambda=None, attack_steps=None):
    """Validates the loss and its options; returns `{option: value}` of the options
    the loss uses, defaults filled in. An option set for a loss that does not use it
    is an error (it would be silently ignored)."""
    if certified_loss not in CERTIFIED_LOSSES:
        raise ValueError(
            f"Unknown `certified_loss` {certified_loss!r}; expected one of "
            f"{', '.join(CERTIFIED_LOSSES)} ('worst-case': cross-entropy on the margin "
            "lower bounds; 'mtl-ibp': mixed with the loss at a PGD point; 'sabr': bounds "
            "of a small box around a PGD point)."
        )
    given = {"mtl_alpha": mtl_alpha, "sabr_lambda": sabr_lambda, "attack_steps": attack_steps}
    used = OPTIONS[certified_loss]
    for name, value in given.items():
        if value is not None and name not in used:
            users = [loss for loss, names in OPTIONS.items() if name in names]
            raise ValueError(
                f"`{name}` is an option of certified_loss {' or '.join(map(repr, users))}, "
                f"not of {certified_loss!r}; remove it or set certified_loss accordingly."
            )
    options = {name: DEFAULTS[name] if given[name] is None else given[name] for name in used}
    if "mtl_alpha" in options:
        options["mtl_alpha"] = _fraction(options["mtl_alpha"], "mtl_alpha", closed_low=True,
                                         meaning="the weight of the worst-case loss")
    if "sabr_lambda" in options:
        options["sabr_lambda"] = _fraction(options["sabr_lambda"], "sabr_lambda", closed_low=False,
                                           meaning="the small box radius as a fraction of epsilon")
    if "attack_steps" in options:
        options["attack_steps"] = validation.check_positive_int(options["attack_steps"], "attack_steps")
    return options


def _fraction(value, name, *, closed_low, meaning):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = (0.0 <= value if closed_low else 0.0 < value) and value <= 1.0
    if not ok:
        interval = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"`{name}` ({meaning}) must be a number in {interval}, got {value!r}.")
    return value


def attack(forward, labels, lower, upper, noise, steps):
    """A PGD point of `[lower, upper]`: `steps` signed-gradient ascent steps on the
    cross-entropy of `forward(x)`, from the random start `lower + noise * (upper -
    lower)` (`noise` uniform in [0, 1]), step size 2.5 * radius / steps per element.

    The result carries no gradient. Works inside a traced training step (nested
    gradients, `backend.gradients`).
    """
    lower, upper = ops.stop_gradient(lower), ops.stop_gradient(upper)
    step_size = 2.5 * (upper - lower) / (2.0 * steps)
    x = ops.stop_gradient(lower + noise * (upper - lower))

    def objective(values):
        return ops.sum(losses.standard_loss(labels, forward(values[0])))

    for _ in range(steps):
        # Each replica attacks its own samples: no sum over replicas.
        (grad,) = backend.gradients(objective, [x], per_replica=True)
        x = ops.stop_gradient(ops.minimum(ops.maximum(x + step_size * ops.sign(grad), lower), upper))
    return x


def sabr_radius(box, epsilon, sabr_lambda):
    """Per element, the small box's radius: `sabr_lambda * epsilon`, or half the width
    of the (input-range cut) ball where that is narrower."""
    epsilon = ops.cast(epsilon, box.lower.dtype)
    return ops.minimum(sabr_lambda * epsilon, (box.upper - box.lower) / 2.0)


def sabr_box(box, radius, centre):
    """The small box of `radius` around `centre`, the centre first moved (clipped) so
    that the small box lies inside `box` (the epsilon ball cut to the input range)."""
    centre = ops.minimum(ops.maximum(centre, box.lower + radius), box.upper - radius)
    return Box(centre - radius, centre + radius)


def centre_region(box, radius):
    """Where a SABR centre may lie: `box` shrunk by `radius` on every side."""
    return box.lower + radius, box.upper - radius
