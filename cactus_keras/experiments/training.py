"""Configured training runs: one `TrainConfig` in, a trained and saved model out."""

from __future__ import annotations

import dataclasses
import os

import keras

from cactus_keras import atomic_write, backend, models, validation
from cactus_keras.compression.awp import Quantization
from cactus_keras.compression.masks import check_pruning_method
from cactus_keras.compression.pruning import Pruning
from cactus_keras.training import (
    CactusModel,
    EpsilonRamp,
    StandardWeightRamp,
    check_certified_loss,
    ibp_initialize,
)

COMPRESSIONS = ("none", "prune", "quant", "prune+quant")
# Gradient clipping as in Shi et al. (2021): IBP losses have rare huge gradients.
CLIP_NORM = 10.0


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as DIR/config.json).

    The schedule: `warmup_epochs` of standard training (epsilon 0, lambda 1), then over
    `ramp_epochs` epsilon ramps to its target (smoothed ramp) while lambda moves to
    `standard_weight`, then training at the target.
    """

    dataset: str
    epsilon: float
    arch: str = "cnn3"
    batch_norm: bool = False
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    compression: str = "prune"
    prune_range: tuple = (0.25, 0.75)
    pruning_method: str = "global_l1"
    bits: int = 8
    awp_radius: float = 0.5
    awp_steps: int = 1
    standard_weight: float = 0.5
    bound: str = "ibp"
    certified_loss: str = "worst-case"
    mtl_alpha: float | None = None
    sabr_lambda: float | None = None
    attack_steps: int | None = None
    warmup_epochs: int = 1
    ramp_epochs: int | None = None
    ibp_init: bool = False
    limit: int | None = None
    validation_samples: int = 1000
    seed: int = 0

    def __post_init__(self):
        validation.check_epsilon(self.epsilon)
        if self.arch not in models.ARCHITECTURES:
            raise ValueError(
                f"Unknown arch {self.arch!r}; expected one of {', '.join(models.ARCHITECTURES)}."
            )
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"Unknown compression {self.compression!r}; expected one of "
                f"{', '.join(COMPRESSIONS)}."
            )
        check_pruning_method(self.pruning_method)
        # Building the members validates their arguments before any training.
        self.compression_members()
        for name in ("epochs", "batch_size"):
            validation.check_positive_int(getattr(self, name), name)
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} with "
                f"epochs={self.epochs}."
            )
        if self.ramp_epochs is None:
            self.ramp_epochs = default_ramp_epochs(self.epochs, self.warmup_epochs)
        if self.ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {self.ramp_epochs}.")
        if not 0.0 <= self.standard_weight <= 1.0:
            raise ValueError(f"standard_weight must be in [0, 1], got {self.standard_weight}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        check_certified_loss(self.certified_loss, **self.certified_loss_options())

    def certified_loss_options(self):
        """The options of `certified_loss` as given (None: the loss's default)."""
        return {"mtl_alpha": self.mtl_alpha, "sabr_lambda": self.sabr_lambda,
                "attack_steps": self.attack_steps}

    def compression_members(self):
        members = []
        if "prune" in self.compression:
            members.append(Pruning(ratio=tuple(self.prune_range), pruning_method=self.pruning_method))
        if "quant" in self.compression:
            members.append(Quantization(bits=self.bits, awp_radius=self.awp_radius, awp_steps=self.awp_steps))
        return members

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["prune_range"] = list(self.prune_range)
        return data


# The fields a config's [training] table (and a method's own options) may set.
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                     if f.name not in ("dataset", "epsilon", "seed"))


def build_model(config, input_shape, num_classes, input_range=(0.0, 1.0)):
    """The compiled `CactusModel` of a config (network from the model zoo)."""
    keras.utils.set_random_seed(config.seed)
    network = models.get(config.arch, input_shape, num_classes, batch_norm=config.batch_norm)
    if config.ibp_init:
        ibp_initialize(network, seed=config.seed)
    model = CactusModel(
        network,
        epsilon=config.epsilon,
        compression=config.compression_members(),
        standard_weight=config.standard_weight,
        bound=config.bound,
        input_range=input_range,
        seed=config.seed,
        certified_loss=config.certified_loss,
        **config.certified_loss_options(),
    )
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=CLIP_NORM))
    return model


def default_ramp_epochs(epochs, warmup_epochs):
    """The ramp length when none is given: half the epochs after the warm-up, at least 1."""
    return max(1, (epochs - warmup_epochs) // 2)


def ramp_callbacks(warmup_epochs, ramp_epochs):
    """The epsilon ramp (smoothed) and the lambda ramp of a run, both starting after
    `warmup_epochs` of standard training."""
    return [
        EpsilonRamp(ramp_epochs, start_epoch=warmup_epochs, shape="smooth"),
        StandardWeightRamp(ramp_epochs, start_epoch=warmup_epochs),
    ]


def schedule_callbacks(config):
    return ramp_callbacks(config.warmup_epochs, config.ramp_epochs)


def train(config, data, output_dir, verbose=2, callbacks=(), distribute=None):
    """Trains `config` on `data` (a `cactus_keras.data.Dataset`) and saves the run.

    Writes `model.keras` (the CactusModel), `network.keras` (the plain network),
    `training_log.csv` and `config.json` into `output_dir`. Returns the model.

    `distribute` ("none", "mirrored", "multi-worker" or "data-parallel"; default the
    `backend.distribute_default`, else "none") spreads each batch of
    `config.batch_size` (the global batch) over devices or workers; the model is built,
    compiled and fitted in the engine's scope. On a multi-worker run every worker runs
    this; give the workers other than the chief their own `output_dir`
    (`backend.worker_directory(output_dir, "multi-worker")`).
    """
    distribute = backend.check_distribute(backend.resolve_distribute(distribute))
    os.makedirs(output_dir, exist_ok=True)
    x, y = data.x_train, data.y_train
    if config.limit is not None:
        x, y = x[: config.limit], y[: config.limit]
    validation_data = None
    if config.validation_samples:
        n = config.validation_samples
        validation_data = (data.x_test[:n], data.y_test[:n])
    atomic_write.write_json(os.path.join(output_dir, "config.json"),
                            {**config.to_dict(), "data_source": data.source,
                             "distribute": distribute})
    with backend.distribution_scope(distribute):
        model = build_model(config, data.input_shape, data.num_classes, data.input_range)
        model.fit(
            x,
            y,
            batch_size=config.batch_size,
            epochs=config.epochs,
            validation_data=validation_data,
            callbacks=[
                *schedule_callbacks(config),
                keras.callbacks.CSVLogger(os.path.join(output_dir, "training_log.csv")),
                *callbacks,
            ],
            verbose=verbose,
        )
    model.save(os.path.join(output_dir, "model.keras"))
    model.network.save(os.path.join(output_dir, "network.keras"))
    return model
