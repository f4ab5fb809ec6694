"""`CactusHyperModel`: a KerasTuner HyperModel that builds and trains a CactusModel."""

from __future__ import annotations

import inspect
import math

import keras
import keras_tuner

from cactus_keras import backend, validation, vocabulary
from cactus_keras.compression.awp import AWPQuantization
from cactus_keras.compression.masks import check_pruning_method
from cactus_keras.compression.pruning import Pruning
from cactus_keras.compression.quantization import check_bits
from cactus_keras.experiments.training import (
    CLIP_NORM,
    COMPRESSIONS,
    default_ramp_epochs,
    ramp_callbacks,
)
from cactus_keras.training import CactusModel, check_certified_loss, ibp_initialize
from cactus_keras.tuning.objectives import (
    CompressedCertification,
    full_epsilon_history,
    parse_targets,
)


# Default search spaces: (low, high) is a range, a list a choice, a number a fixed value.
DEFAULT_STANDARD_WEIGHT = (0.0, 0.9)        # lambda, linear
DEFAULT_AWP_RADIUS = (0.25, 4.0)            # eta in quantization steps, log
DEFAULT_MTL_ALPHA = (0.05, 0.95)            # MTL-IBP's alpha, linear (certified_loss="mtl-ibp")
DEFAULT_LEARNING_RATE = 1e-3                # fixed unless asked: (1e-4, 1e-2), log
DEFAULT_RATIO_LOW = 0.25              # fixed unless asked: (0.0, 0.5)
DEFAULT_RATIO_HIGH = 0.75             # fixed unless asked: (0.5, 0.95)
SEARCH_LEARNING_RATE = (1e-4, 1e-2)
SEARCH_RATIO_LOW = (0.0, 0.5)
SEARCH_RATIO_HIGH = (0.5, 0.95)

# name: (lowest, highest, log sampling) of each hyperparameter.
_BOUNDS = {
    "standard_weight": (0.0, 1.0, False),
    "awp_radius": (0.0, math.inf, True),
    "mtl_alpha": (0.0, 1.0, False),
    "learning_rate": (0.0, math.inf, True),
    "ratio_low": (0.0, 0.99, False),
    "ratio_high": (0.0, 0.99, False),
}


def check_space(name, space):
    """Checks a search space: a number (fixed), a (low, high) tuple (a range) or a list
    (a choice). Returns it normalized (floats, tuple or list)."""
    lowest, highest, _ = _BOUNDS[name]

    def number(value):
        value = validation.as_number(value, name, "a number (each value it may take)")
        if not (lowest <= value <= highest) or (name == "learning_rate" and value <= 0):
            raise ValueError(
                f"`{name}` must lie in [{lowest:g}, {highest:g}]"
                + (" and be > 0" if name == "learning_rate" else "")
                + f", got {value!r}."
            )
        return value

    if isinstance(space, tuple):
        if len(space) != 2:
            raise ValueError(f"A `{name}` range must be (low, high), got {space!r}.")
        low, high = number(space[0]), number(space[1])
        if not low < high:
            raise ValueError(
                f"A `{name}` range must have low < high, got {space!r}; give a single number "
                "to fix the value."
            )
        if _BOUNDS[name][2] and low <= 0:
            raise ValueError(f"A `{name}` range is sampled on a log scale: low must be > 0, got {low!r}.")
        return (low, high)
    if isinstance(space, list):
        if not space:
            raise ValueError(f"A `{name}` choice must not be empty.")
        values = [number(v) for v in space]
        if len(set(values)) != len(values):
            raise ValueError(f"A `{name}` choice has repeated values: {space!r}.")
        return values
    return number(space)


def _declare(hp, name, space, log):
    if isinstance(space, tuple):
        return hp.Float(name, space[0], space[1], sampling="log" if log else "linear")
    if isinstance(space, list):
        return hp.Choice(name, space)
    return hp.Fixed(name, space)


def _call_builder(build_network, hp):
    try:
        parameters = inspect.signature(build_network).parameters
    except (TypeError, ValueError):
        parameters = {"hp": None}
    return build_network(hp) if parameters else build_network()


class CactusHyperModel(keras_tuner.HyperModel):
    """Builds and trains a `CactusModel` with searched lambda and eta.

    Searched hyperparameters (a `(low, high)` tuple is a range, a list a choice, a number
    a fixed value; the defaults are the documented search space):

    - `standard_weight` (lambda): default range (0.0, 0.9), linear.
    - `awp_radius` (eta, AWP radius in quantization steps): default (0.25, 4.0), log;
      only when the training set has a quantization member.
    - `mtl_alpha` (MTL-IBP's alpha): default range (0.05, 0.95), linear; only when
      `certified_loss="mtl-ibp"`.
    - `learning_rate`: fixed 1e-3 by default; `search_learning_rate=True` searches
      (1e-4, 1e-2) on a log scale.
    - `ratio_low`, `ratio_high` (the range pruning ratios are sampled from
      in training): fixed (0.25, 0.75) by default; `search_ratio_range=True` searches
      (0.0, 0.5) and (0.5, 0.95). Only with a pruning member.

    Each trial trains with the epsilon and lambda ramps (`warmup_epochs` of standard
    training, then `ramp_epochs` of ramp), and at the end of every epoch certifies the
    network, and the network compressed to each of `targets`, at the target epsilon:
    the metrics `val_certified_accuracy`, `val_certified_accuracy_compressed` and
    `val_certified_accuracy_mean` that the objectives of `cactus_keras.tuning` name.
    They are read only in epochs at full epsilon (after the ramp): `fit` returns the
    history of those epochs, so the tuner's best epoch (and its saved weights) is never
    a warm-up or ramp epoch.

    Args:
        build_network: a function returning a fresh Keras network (logits); it may take
            the `hp` argument to tune the architecture too.
        epsilon: certification (and training) radius.
        targets: compressions the network must stay certified under, e.g.
            `"prune:0.7,quantize:8"` or `["prune:0.7", "quantize:8"]`.
        compression: members of the training set: "none", "pruning",
            "awp_quantization" or "pruning+awp_quantization"; default: pruning if a
            target prunes, AWP quantization if a target quantizes.
        epochs: epochs of each trial, for the ramps (`search(epochs=...)` if None; for
            Hyperband, its `max_epochs`).
        bits: bit width of the quantization member (default: the quantization target's,
            else 8).
        pruning_method: pruning method of the pruning member (default: the pruning
            target's, else "global_l1").
        awp_steps: AWP ascent steps.
        bound: bound method of the certified loss, "ibp" or "crown-ibp".
        certified_loss: "worst-case", "mtl-ibp" or "sabr" (as in `CactusModel`);
            `sabr_lambda` and `attack_steps` are fixed options of it.
        objective_bound: bound method of the objective certificates.
        ibp_init: apply IBP initialization (Shi et al. 2021) to each new network.
        certify_samples: certify only the first N validation samples (None: all).
        seed: seed set before each network is built, so trials differ by their
            hyperparameters only.
        distribute: "none", "mirrored", "multi-worker" or "data-parallel": each trial
            is built, compiled and trained over devices or workers (default: the
            `backend.distribute_default`, the CLI's `--distribute`, else "none").

    Example:

    ```python
    import cactus_keras
    from cactus_keras.tuning import CactusHyperModel, make_tuner

    hypermodel = CactusHyperModel(
        lambda: cactus_keras.models.cnn3((28, 28, 1), 10), epsilon=0.01,
        targets="prune:0.7,quantize:8", epochs=1)      # a real search: epochs=6
    tuner = make_tuner(hypermodel, "random", objective="mean", max_trials=1,
                       directory="runs/tune")          # a real one: "bayesian", 20 trials
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), batch_size=128,
                 verbose=0)
    print(tuner.get_best_hyperparameters()[0].values)
    ```
    """

    def __init__(
        self,
        build_network,
        epsilon,
        targets="prune:0.7",
        *,
        compression=None,
        epochs=None,
        standard_weight=DEFAULT_STANDARD_WEIGHT,
        awp_radius=DEFAULT_AWP_RADIUS,
        mtl_alpha=DEFAULT_MTL_ALPHA,
        learning_rate=DEFAULT_LEARNING_RATE,
        ratio_low=DEFAULT_RATIO_LOW,
        ratio_high=DEFAULT_RATIO_HIGH,
        search_learning_rate=False,
        search_ratio_range=False,
        bits=None,
        pruning_method=None,
        awp_steps=1,
        bound="ibp",
        certified_loss="worst-case",
        sabr_lambda=None,
        attack_steps=None,
        objective_bound="ibp",
        warmup_epochs=None,
        ramp_epochs=None,
        ibp_init=False,
        certify_samples=None,
        seed=0,
        distribute=None,
        name=None,
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        self.distribute = None if distribute is None else backend.check_distribute(distribute)
        if not callable(build_network):
            raise TypeError(
                f"`build_network` must be a function returning a Keras network, got {build_network!r}."
            )
        self.build_network = build_network
        self.epsilon = validation.check_epsilon(epsilon)
        self.targets = parse_targets(targets)
        if compression is None:
            kinds = {t.form for t in self.targets}
            parts = [member for member, form in ((vocabulary.PRUNING, vocabulary.PRUNE),
                                                  (vocabulary.AWP_QUANTIZATION, vocabulary.QUANTIZE))
                     if form in kinds]
            compression = "+".join(parts) or "none"
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"Unknown compression {compression!r}; expected one of "
                f"{', '.join(COMPRESSIONS)}."
            )
        self.compression = compression
        self.epochs = None if epochs is None else validation.check_positive_int(epochs, "epochs")
        if search_learning_rate and learning_rate == DEFAULT_LEARNING_RATE:
            learning_rate = SEARCH_LEARNING_RATE
        if search_ratio_range:
            if ratio_low == DEFAULT_RATIO_LOW:
                ratio_low = SEARCH_RATIO_LOW
            if ratio_high == DEFAULT_RATIO_HIGH:
                ratio_high = SEARCH_RATIO_HIGH
        self.spaces = {
            "standard_weight": check_space("standard_weight", standard_weight),
            "awp_radius": check_space("awp_radius", awp_radius),
            "mtl_alpha": check_space("mtl_alpha", mtl_alpha),
            "learning_rate": check_space("learning_rate", learning_rate),
            "ratio_low": check_space("ratio_low", ratio_low),
            "ratio_high": check_space("ratio_high", ratio_high),
        }
        low, high = self.spaces["ratio_low"], self.spaces["ratio_high"]
        if _max(low) > _min(high):
            raise ValueError(
                f"Every ratio_low must be <= every ratio_high, got {low!r} and "
                f"{high!r}: let the ranges meet at most at one value (e.g. (0.0, 0.5) and "
                "(0.5, 0.95))."
            )
        quant_targets = [t.bits for t in self.targets if t.form == vocabulary.QUANTIZE]
        prune_targets = [t.pruning_method for t in self.targets if t.form == vocabulary.PRUNE]
        self.bits = check_bits(bits if bits is not None else (quant_targets[0] if quant_targets else 8))
        self.pruning_method = check_pruning_method(
            pruning_method if pruning_method is not None else (prune_targets[0] if prune_targets else "global_l1")
        )
        self.awp_steps = validation.check_positive_int(awp_steps, "awp_steps")
        self.bound = bound
        # The alpha of MTL-IBP is searched (its space checked above), the rest fixed.
        check_certified_loss(certified_loss, sabr_lambda=sabr_lambda, attack_steps=attack_steps)
        self.certified_loss = certified_loss
        self.loss_options = {"sabr_lambda": sabr_lambda, "attack_steps": attack_steps}
        self.objective_bound = objective_bound
        self.warmup_epochs = warmup_epochs
        self.ramp_epochs = ramp_epochs
        self.ibp_init = bool(ibp_init)
        self.certify_samples = (
            None if certify_samples is None else validation.check_positive_int(certify_samples, "certify_samples")
        )
        self.seed = seed
        self.build_count = 0

    # The searched names, for reports and checks.
    def searched(self):
        """Names of the hyperparameters this hypermodel declares."""
        names = ["standard_weight", "learning_rate"]
        if vocabulary.AWP_QUANTIZATION in self.compression.split("+"):
            names.insert(1, "awp_radius")
        if self.certified_loss == "mtl-ibp":
            names.insert(1, "mtl_alpha")
        if vocabulary.PRUNING in self.compression.split("+"):
            names += ["ratio_low", "ratio_high"]
        return names

    def search_space(self):
        """{name: space} of the declared hyperparameters (as given, normalized)."""
        return {name: self.spaces[name] for name in self.searched()}

    def declare(self, hp):
        """Declares the hyperparameters on `hp`; returns {name: value}."""
        return {name: _declare(hp, name, self.spaces[name], _BOUNDS[name][2]) for name in self.searched()}

    def _scope(self):
        return backend.distribution_scope(backend.resolve_distribute(self.distribute))

    def build(self, hp):
        with self._scope():
            return self._build_model(hp)

    def _build_model(self, hp):
        self.build_count += 1
        values = self.declare(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        network = _call_builder(self.build_network, hp)
        if not isinstance(network, keras.Model):
            raise TypeError(
                f"`build_network` must return a Keras model, got {type(network).__name__}."
            )
        if self.ibp_init:
            ibp_initialize(network, seed=self.seed)
        members = []
        if vocabulary.PRUNING in self.compression.split("+"):
            low, high = values["ratio_low"], values["ratio_high"]
            ratio = (low, high) if low < high else low
            members.append(Pruning(ratio=ratio, pruning_method=self.pruning_method))
        if vocabulary.AWP_QUANTIZATION in self.compression.split("+"):
            members.append(
                AWPQuantization(bits=self.bits, awp_radius=values["awp_radius"], awp_steps=self.awp_steps)
            )
        model = CactusModel(
            network,
            epsilon=self.epsilon,
            compression=members,
            standard_weight=values["standard_weight"],
            bound=self.bound,
            seed=self.seed,
            certified_loss=self.certified_loss,
            mtl_alpha=values.get("mtl_alpha"),
            **self.loss_options,
        )
        model.compile(optimizer=keras.optimizers.Adam(values["learning_rate"], clipnorm=CLIP_NORM))
        return model

    def schedule(self, epochs):
        """(warmup_epochs, ramp_epochs) of a run of `epochs` epochs: one warm-up epoch
        when there are 3 or more, then a ramp over half the rest (at least one)."""
        warmup = self.warmup_epochs
        if warmup is None:
            warmup = 1 if epochs >= 3 else 0
        ramp = self.ramp_epochs
        if ramp is None:
            ramp = default_ramp_epochs(epochs, warmup)
        return warmup, ramp

    def callbacks(self, validation_data, epochs):
        """The ramps and the objective callback of a trial."""
        warmup, ramp = self.schedule(epochs)
        if self.certify_samples is not None:
            validation_data = tuple(v[: self.certify_samples] for v in validation_data[:2])
        return [
            *ramp_callbacks(warmup, ramp),
            CompressedCertification(validation_data, self.targets, epsilon=self.epsilon,
                                    bound=self.objective_bound),
        ]

    def fit(self, hp, model, *args, **kwargs):
        validation_data = kwargs.get("validation_data")
        if validation_data is None:
            raise ValueError(
                "CactusHyperModel needs `validation_data=(x_val, y_val)` in `search()`: the "
                "objectives are certified accuracies on it."
            )
        if not isinstance(validation_data, (tuple, list)):
            raise TypeError(
                "`validation_data` must be a tuple (x_val, y_val) of arrays for the "
                "certified-accuracy objectives."
            )
        epochs = self.epochs or kwargs.get("epochs", 1)
        # Ours first, so KerasTuner's callbacks (which read the objective) see our metrics.
        ours = self.callbacks(validation_data, epochs)
        kwargs["callbacks"] = [*ours, *kwargs.get("callbacks", [])]
        with self._scope():
            model.fit(*args, **kwargs)
        # The tuner picks the best epoch among those at full epsilon only.
        return full_epsilon_history(ours[-1].records)


def _min(space):
    return min(space) if isinstance(space, (tuple, list)) else space


def _max(space):
    return max(space) if isinstance(space, (tuple, list)) else space
