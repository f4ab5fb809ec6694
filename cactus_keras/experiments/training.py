"""Configured training runs: one `TrainConfig` in, a trained and saved model out."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import threading

import keras
import numpy as np

from cactus_keras import atomic_write, backend, keras_internals, models, validation, vocabulary
from cactus_keras.compression.awp import AWPQuantization
from cactus_keras.data.digest import data_digest
from cactus_keras.experiments.progress import EpochLine
from cactus_keras.run_lock import folder_lock
from cactus_keras.compression.masks import check_pruning_method
from cactus_keras.compression.member_tables import member_table, members_from_tables
from cactus_keras.compression.pruning import Pruning
from cactus_keras.training import (
    CactusModel,
    EpochLearningRate,
    EpsilonRamp,
    MemberWeightRamp,
    StandardWeightRamp,
    check_certified_loss,
    check_lr_schedule,
    check_regularization,
    ibp_initialize,
)
from cactus_keras.training.batch_slices import check_member_batch_fraction
from cactus_keras.training.model import check_member_weight

# The short forms of `compression`; a list of member tables gives any set.
COMPRESSIONS = vocabulary.TRAIN_COMPRESSIONS
# "epsilon": the members' weight follows the epsilon ramp (MemberWeightRamp).
MEMBER_WEIGHT_RAMPS = ("none", "epsilon")
# Gradient clipping as in Shi et al. (2021): IBP losses have rare huge gradients.
CLIP_NORM = 10.0


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as DIR/config.json).

    The schedule: `warmup_epochs` of standard training (epsilon 0, lambda 1; default 1,
    or 0 when `epochs` is 1), then over `ramp_epochs` (default: half the remaining
    epochs, at least 1) epsilon ramps to its target (smoothed ramp) while lambda moves
    to `standard_weight`, then training at the target. The ramp must end within
    `epochs`, so that the last epochs train at the target epsilon.

    The learning rate follows `lr_schedule`: "constant" (default), "step" (multiplied
    by `lr_decay_factor`, default 0.2, after each of `lr_decay_epochs`, default about
    70% and 85% of `epochs`, as Shi et al. 2021 and CTBench) or "cosine"
    (`training.EpochLearningRate`). `ibp_regularization` (Shi et al.'s regularisers
    during the ramp) and `l1_regularization` are `CactusModel`'s options.
    The compression set: `compression` is a short form ("none", "pruning",
    "awp_quantization", "pruning+awp_quantization", set by the members' own settings
    `ratio`, `pruning_method`, `bits`, `awp_radius`,
    `awp_steps`), or a list of member tables, each `{"kind": KIND, **settings}` with its
    own settings (`cactus_keras.compression.members_from_tables`, which names the
    unnamed members); the short-form fields are then unused. A list is stored with
    every setting and name filled in, so config.json says exactly which set trained.
    `member_weight` is the weight of each compressed network relative to the full
    network, `member_weight_ramp` "epsilon" makes it follow the epsilon ramp, and
    `member_batch_fraction` < 1 trains each compressed network on a slice of each batch
    (see `CactusModel`).

    Example:

    ```python
    from cactus_keras.experiments import TrainConfig

    TrainConfig(dataset="fashion_mnist", epsilon=0.1, compression=[
        {"kind": "pruning", "ratio": [0.5, 0.95], "pruning_method": "global_l1"},
        {"kind": "pruning", "ratio": [0.1, 0.6], "pruning_method": "global_l2_structured"},
        {"kind": "awp_quantization", "bits": 8}, {"kind": "awp_quantization", "bits": 4}],
        member_weight=1.0, member_weight_ramp="epsilon", member_batch_fraction=0.25)
    ```
    """

    dataset: str
    epsilon: float
    arch: str = "cnn3"
    batch_norm: bool = False
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    lr_decay_epochs: tuple | None = None
    lr_decay_factor: float | None = None
    compression: str | list = "pruning"
    ratio: tuple = (0.25, 0.75)
    pruning_method: str = "global_l1"
    bits: int = 8
    awp_radius: float = 0.5
    awp_steps: int = 1
    member_weight: float = 1.0
    member_weight_ramp: str = "none"
    member_batch_fraction: float = 1.0
    standard_weight: float = 0.5
    bound: str = "ibp"
    certified_loss: str = "worst-case"
    mtl_alpha: float | None = None
    sabr_lambda: float | None = None
    attack_steps: int | None = None
    warmup_epochs: int | None = None
    ramp_epochs: int | None = None
    ibp_init: bool = False
    ibp_regularization: float = 0.0
    l1_regularization: float = 0.0
    limit: int | None = None
    validation_samples: int = 1000
    seed: int = 0

    def __post_init__(self):
        _check_field_types(self)
        validation.check_epsilon(self.epsilon)
        validation.check_epsilon_range(self.epsilon, (0.0, 1.0))
        if self.arch not in models.ARCHITECTURES:
            raise ValueError(
                f"Unknown arch {self.arch!r}; expected one of {', '.join(models.ARCHITECTURES)}."
            )
        if isinstance(self.compression, str) and self.compression not in COMPRESSIONS:
            raise ValueError(
                f"Unknown compression {self.compression!r}; expected one of "
                f"{', '.join(COMPRESSIONS)}, or a list of member tables such as "
                '[{kind = "pruning", ratio = [0.5, 0.95]}, {kind = "awp_quantization", bits = 4}].'
            )
        check_pruning_method(self.pruning_method)
        self.ratio = tuple(self.ratio)
        # Building the members validates their arguments before any training.
        members = self.compression_members()
        if not isinstance(self.compression, str):
            self.compression = [member_table(m) for m in members]
        check_member_weight(self.member_weight)
        if self.member_weight_ramp not in MEMBER_WEIGHT_RAMPS:
            raise ValueError(
                f"Unknown `member_weight_ramp` {self.member_weight_ramp!r}; expected one of "
                f"{', '.join(MEMBER_WEIGHT_RAMPS)} (epsilon: the members' weight follows "
                "the epsilon ramp)."
            )
        check_member_batch_fraction(self.member_batch_fraction)
        for name in ("epochs", "batch_size"):
            validation.check_positive_int(getattr(self, name), name)
        if self.warmup_epochs is None:
            self.warmup_epochs = 1 if self.epochs > 1 else 0
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"`warmup_epochs` (epochs of standard training first) must be in [0, "
                f"`epochs`), got {self.warmup_epochs} with `epochs` {self.epochs}: give "
                f"more `epochs` or fewer `warmup_epochs` (0 trains with epsilon from the start)."
            )
        if self.ramp_epochs is None:
            self.ramp_epochs = default_ramp_epochs(self.epochs, self.warmup_epochs)
        if self.ramp_epochs < 0:
            raise ValueError(f"`ramp_epochs` must be >= 0, got {self.ramp_epochs}.")
        if self.warmup_epochs + self.ramp_epochs > self.epochs:
            raise ValueError(
                f"The epsilon ramp would end after training: `warmup_epochs` "
                f"{self.warmup_epochs} + `ramp_epochs` {self.ramp_epochs} > `epochs` "
                f"{self.epochs}, so epsilon would never reach its target. Use `ramp_epochs` "
                f"<= {self.epochs - self.warmup_epochs} or more `epochs`."
            )
        if not 0.0 <= self.standard_weight <= 1.0:
            raise ValueError(f"`standard_weight` (lambda) must be in [0, 1], got {self.standard_weight}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}.")
        # The step schedule's default epochs are resolved here, so config.json says
        # which epochs the rate decayed at.
        decay_epochs, decay_factor = check_lr_schedule(
            self.lr_schedule, self.epochs, self.lr_decay_epochs, self.lr_decay_factor)
        if self.lr_schedule == "step":
            self.lr_decay_epochs, self.lr_decay_factor = decay_epochs, decay_factor
        check_regularization(self.ibp_regularization, "ibp_regularization",
                             "the weight of Shi et al.'s IBP regularisers")
        check_regularization(self.l1_regularization, "l1_regularization",
                             "the weight of the kernels' L1 norm")
        if self.ibp_regularization and self.ramp_epochs == 0:
            raise ValueError(
                "`ibp_regularization` acts only while epsilon ramps up, and `ramp_epochs` "
                "is 0: give `ramp_epochs` >= 1 or set `ibp_regularization` to 0."
            )
        if self.limit is not None:
            validation.check_positive_int(self.limit, "limit")
        if self.validation_samples < 0:
            raise ValueError(f"`validation_samples` must be >= 0, got {self.validation_samples}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {self.seed!r}.")
        check_certified_loss(self.certified_loss, **self.certified_loss_options())

    def certified_loss_options(self):
        """The options of `certified_loss` as given (None: the loss's default)."""
        return {"mtl_alpha": self.mtl_alpha, "sabr_lambda": self.sabr_lambda,
                "attack_steps": self.attack_steps}

    def compression_members(self):
        """The members of the set (new objects each call)."""
        if not isinstance(self.compression, str):
            return members_from_tables(self.compression, key="compression")
        members = []
        kinds = self.compression.split("+")
        if vocabulary.PRUNING in kinds:
            members.append(Pruning(ratio=tuple(self.ratio), pruning_method=self.pruning_method))
        if vocabulary.AWP_QUANTIZATION in kinds:
            members.append(AWPQuantization(bits=self.bits, awp_radius=self.awp_radius, awp_steps=self.awp_steps))
        return members

    def compression_names(self):
        """The short form, or the names of the members (for logs)."""
        if isinstance(self.compression, str):
            return self.compression
        return ", ".join(n for m in self.compression_members() for n in m.names()) or "no"

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["ratio"] = list(self.ratio)
        if self.lr_decay_epochs is not None:
            data["lr_decay_epochs"] = list(self.lr_decay_epochs)
        return data


# The type each field takes (None is allowed where the default is None).
_FIELD_TYPES = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,),
                "tuple": (tuple, list), "list": (list, tuple)}


def _check_field_types(config):
    """A string "0.1" for a number (as TOML or JSON can give) is refused, not converted."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kinds = [k.strip() for k in str(field.type).split("|")]
        kind = kinds[0]
        if value is None and "None" in kinds:
            continue
        if any(k not in _FIELD_TYPES for k in kinds if k != "None"):
            continue
        expected = tuple(t for k in kinds if k != "None" for t in _FIELD_TYPES[k])
        if kind == "str" and "list" in kinds:
            kind = "str or list"
        wrong = isinstance(value, bool) and kind != "bool"
        if wrong or not isinstance(value, expected):
            raise TypeError(
                f"`{field.name}` must be {'a number' if kind == 'float' else 'an integer' if kind == 'int' else 'a ' + kind}"
                f", got {value!r} ({type(value).__name__})."
            )


# The fields a config's [training] table (and a method's own options) may set.
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                     if f.name not in ("dataset", "epsilon", "seed"))


def build_model(config, input_shape, num_classes, input_range=(0.0, 1.0)):
    """The compiled `CactusModel` of a config (network from the model zoo).

    Example:

    ```python
    from cactus_keras.experiments import TrainConfig, build_model

    config = TrainConfig(dataset="fashion_mnist", epsilon=0.1, arch="cnn3",
                         compression=[{"kind": "pruning", "ratio": [0.25, 0.75]}])
    model = build_model(config, input_shape=(28, 28, 1), num_classes=10)   # compiled
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    ```
    """
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
        ibp_regularization=config.ibp_regularization,
        l1_regularization=config.l1_regularization,
        member_weight=config.member_weight,
        member_batch_fraction=config.member_batch_fraction,
    )
    # The learning rate of each epoch is set by `schedule_callbacks`.
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


def epsilon_reached(config, steps_per_epoch):
    """The epsilon the last batch of `config`'s training trains at, with
    `steps_per_epoch` batches per epoch: `config.epsilon` unless the ramp ends with
    training (see `EpsilonRamp.final_value`)."""
    ramp = EpsilonRamp(config.ramp_epochs, start_epoch=config.warmup_epochs, shape="smooth",
                       end=config.epsilon)
    return ramp.final_value(config.epochs, steps_per_epoch)


def schedule_callbacks(config):
    """The run's ramps (epsilon, lambda, and the members' weight when it follows
    epsilon), and its learning-rate schedule unless it is constant."""
    callbacks = ramp_callbacks(config.warmup_epochs, config.ramp_epochs)
    if config.lr_schedule != "constant":
        callbacks.append(EpochLearningRate(
            config.lr_schedule, config.epochs, config.learning_rate,
            config.lr_decay_epochs, config.lr_decay_factor))
    if config.member_weight_ramp == "epsilon":
        # The epsilon ramp's epochs and shape: the weight is proportional to epsilon.
        callbacks.append(MemberWeightRamp(config.ramp_epochs, start_epoch=config.warmup_epochs,
                                          shape="smooth"))
    return callbacks


RUN_FILES = ("config.json", "model.keras", "network.keras", "training_log.csv", "backup")
BACKUP = "backup"


class RunExistsError(ValueError):
    """The output directory holds a training run that this call would overwrite."""


def run_state(output_dir):
    """None (no run in `output_dir`), "finished" or "unfinished"."""
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(output_dir, n))]
    if not present:
        return None
    finished = all(os.path.exists(os.path.join(output_dir, n)) for n in ("model.keras", "network.keras"))
    if finished and not os.path.exists(os.path.join(output_dir, BACKUP)):
        return "finished"
    return "unfinished"


def resumed_epoch(output_dir):
    """Epochs finished and backed up in an unfinished run (0 if none)."""
    path = os.path.join(output_dir, BACKUP, "training_metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _saved_settings(config, data):
    return json.loads(json.dumps({**config.to_dict(), "data_source": data.source,
                                  "data_digest": data_digest(data)}))


# Where the data came from: compared only for a run saved without a digest of its data.
_DATA_PLACES = ("dataset", "data_source")


def _differences(saved, settings):
    """The settings that differ from the saved run's, as lines. The data is compared
    by its digest (the same data under another path resumes; other data under the
    same path does not); runs saved before digests compare the path."""
    digests = saved.get("data_digest") is not None
    lines = []
    for key, value in settings.items():
        if key == "data_digest":
            if digests and saved[key] != value:
                lines.append(f"data: other arrays than the run's (saved from "
                             f"{saved.get('data_source')!r}, now {settings['data_source']!r})")
        elif (not digests or key not in _DATA_PLACES) and saved.get(key) != value:
            lines.append(f"{key}: saved {saved.get(key)!r}, now {value!r}")
    return lines


class BackupDamagedError(ValueError):
    """A file of an interrupted run's backup cannot be read."""


def _backup_problem(backup_dir):
    """(file, reason) of the first unreadable backup file, or None. Keras falls back
    to the previous weights (`.bkp`) by itself, so the weights are damaged only when
    both are."""
    import h5py

    def h5_error(path):
        try:
            with h5py.File(path, "r"):
                return None
        except Exception as exc:  # h5py raises OSError and others for damaged files
            return _first_line(exc)

    weights = os.path.join(backup_dir, "latest.weights.h5")
    if os.path.exists(weights):
        error = h5_error(weights)
        previous = f"{weights}.bkp"
        if error and (not os.path.exists(previous) or h5_error(previous)):
            return weights, error
    metadata = os.path.join(backup_dir, "training_metadata.json")
    if os.path.exists(metadata):
        try:
            with open(metadata) as f:
                int(json.load(f)["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return metadata, _first_line(exc) or "not the JSON Keras writes"
    states = os.path.join(backup_dir, "non_trainable.npz")
    if os.path.exists(states):
        try:
            with np.load(states) as saved:
                [saved[name] for name in saved.files]
        except Exception as exc:  # zipfile, pickle and OS errors alike
            return states, _first_line(exc)
    return None


def _first_line(exc):
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def check_backup(output_dir):
    """Raises `BackupDamagedError` naming the backup file of `output_dir` that cannot be
    read, and what to do."""
    backup_dir = os.path.join(output_dir, BACKUP)
    problem = _backup_problem(backup_dir) if os.path.isdir(backup_dir) else None
    if problem:
        path, reason = problem
        raise BackupDamagedError(
            f"The backup of the interrupted run in {output_dir} is damaged: '{path}' cannot "
            f"be read ({reason}). Delete the folder {backup_dir} and run again with "
            "`resume=True` to train from epoch 1 with the same settings (the finished "
            "epochs are lost), or pass `overwrite=True` to start a new run."
        )


def check_existing(output_dir, config, data, *, resume=False, overwrite=False):
    """Checks what `train(config, data, output_dir, resume=..., overwrite=...)` would
    do with a run already in `output_dir`: a RunExistsError if it would overwrite it;
    else the state of the run it continues (None: it starts afresh)."""
    return _check_existing(output_dir, _saved_settings(config, data), resume, overwrite)


def _check_existing(output_dir, settings, resume, overwrite):
    """Returns the state of the run in `output_dir` this call continues (None: start)."""
    state = run_state(output_dir)
    if state is None:
        return None
    if overwrite:
        atomic_write.remove_outputs(output_dir, RUN_FILES)
        return None
    saved = None
    try:
        with open(os.path.join(output_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        pass
    differ = [] if saved is None else _differences(saved, settings)
    if not resume:
        what = f"a {state} training run"
        if differ:
            what += f" made with other settings ({'; '.join(differ)})"
        hint = ("pass `resume=True` to continue it, " if state == "unfinished" and not differ
                else "")
        raise RunExistsError(
            f"{output_dir} holds {what}; {hint}pass `overwrite=True` to replace it, or "
            "choose another output directory."
        )
    if saved is None:
        raise RunExistsError(
            f"{output_dir} holds run files but no readable config.json, so it cannot be "
            "resumed; pass `overwrite=True` to replace it, or choose another output directory."
        )
    if differ:
        raise RunExistsError(
            f"{output_dir} holds a run made with other settings ({'; '.join(differ)}); "
            "resuming needs the same settings. Pass `overwrite=True` to replace it, or "
            "choose another output directory."
        )
    if state == "unfinished":
        check_backup(output_dir)
    return state


def check_data(config, data):
    """What `train` needs of `data` beyond the arrays' shapes, checked before its
    output directory is made (so a corrected call is not blocked by an empty run)."""
    if config.validation_samples and len(data.x_test) == 0:
        raise ValueError(
            f"The test split of {data.name} is empty, and `validation_samples` is "
            f"{config.validation_samples}: the first test samples validate each epoch. "
            "Set `validation_samples` to 0 (no validation), or give data with test samples."
        )


class ShuffledBatches(keras.utils.PyDataset):
    """Batches of `(x, y)` in an order that depends only on `(seed, epoch)`, so that a
    run resumed at epoch E sees the same batches as an uninterrupted one.
    `EpochOfBatches` tells it the epoch. Each batch is sorted by sample index.

    On TensorFlow, `as_tf_dataset()` gives the very same batches as a `tf.data`
    pipeline: Keras feeds a PyDataset through `tf.data.Dataset.from_generator`, which
    costs 2-5x an IBP step of cnn3 in system time (`tools/bench_fit_input.py`)."""

    def __init__(self, x, y, batch_size, seed):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self._order_epoch, self._order = None, None

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def order(self, epoch):
        """The sample indices of `epoch`'s batches, one batch after the other."""
        if self._order_epoch != epoch:
            permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))
            self._order = np.concatenate([
                np.sort(permutation[start: start + self.batch_size])
                for start in range(0, len(self.x), self.batch_size)]).astype(np.int64)
            self._order_epoch = epoch
        return self._order

    def __getitem__(self, index):
        chosen = self.order(self.epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[chosen], self.y[chosen]

    def as_tf_dataset(self):
        """The batches as a `tf.data.Dataset` of known length. The epoch's order is read
        when each epoch's iteration begins (after `EpochOfBatches` set the epoch), the
        samples are gathered from the arrays as they are (no copy into the graph)."""
        import tensorflow as tf

        x, y = self.x, self.y

        def order():
            return self.order(self.epoch)

        def gather(indices):
            return x[indices], y[indices]

        def shaped(batch_x, batch_y):
            batch_x.set_shape((None,) + x.shape[1:])
            batch_y.set_shape((None,) + y.shape[1:])
            return batch_x, batch_y

        indices = tf.data.Dataset.from_tensors(0).flat_map(
            lambda _: tf.data.Dataset.from_tensor_slices(tf.numpy_function(order, [], tf.int64)))
        dataset = indices.batch(self.batch_size).map(
            lambda i: tf.numpy_function(gather, [i], (tf.as_dtype(x.dtype), tf.as_dtype(y.dtype))))
        dataset = dataset.map(shaped).prefetch(2)
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self)))


class EpochOfBatches(keras.callbacks.Callback):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.epoch = epoch


class InterruptSafeBackup(keras_internals.WrapsBackupWrite, keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore` (at each epoch's end, kept after training), with
    Ctrl-C held back while a backup is written, so that it is never left half-written.

    The non-trainable variables are backed up too: Keras's weights file leaves out the
    state of seed generators (the ratio sampling), without which a resumed run would
    draw other pruning ratios than an uninterrupted one.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=True,
                         delete_checkpoint=False)
        self._states_path = os.path.join(backup_dir, "non_trainable.npz")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if os.path.exists(self._states_path):
            with np.load(self._states_path) as saved:
                values = [saved[f"v{i}"] for i in range(len(saved.files))]
            variables = self.model.non_trainable_variables
            if len(values) == len(variables) and all(
                    tuple(v.shape) == a.shape for v, a in zip(variables, values)):
                for variable, value in zip(variables, values):
                    variable.assign(value)

    def write_backup(self, save):
        if threading.current_thread() is not threading.main_thread():
            return self._save_all(save)
        pending = []
        previous = signal.signal(signal.SIGINT, lambda *_: pending.append(True))
        try:
            self._save_all(save)
        finally:
            signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt

    def _save_all(self, save):
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **{f"v{i}": keras.ops.convert_to_numpy(v.value)
                            for i, v in enumerate(self.model.non_trainable_variables)})
        save()
        atomic_write.write_bytes(self._states_path, buffer.getvalue())


def _keep_log_rows(path, epochs):
    """Keeps the header and the rows of the first `epochs` epochs of a CSV log: the
    epochs a resumed run does not train again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    keep = lines[:1]
    for line in lines[1:]:
        try:
            if int(line.split(",", 1)[0]) < epochs:
                keep.append(line)
        except ValueError:
            pass
    atomic_write.write_text(path, "\n".join(keep) + "\n" if len(keep) > 1 else "")


def train(config, data, output_dir, verbose=2, callbacks=(), *, resume=False, overwrite=False,
          distribute=None):
    """Trains `config` on `data` (a `cactus_keras.data.Dataset`) and saves the run.

    Writes `config.json` first, `training_log.csv` and a backup (`backup/`) at the end
    of each epoch, and at the end `model.keras` (the CactusModel) and `network.keras`
    (the plain network) into `output_dir`. Returns the model.

    A directory that holds a run is not overwritten: `resume=True` continues an
    interrupted run with the same settings from its last finished epoch (the batches
    of each epoch depend only on the seed and the epoch, so the result is that of an
    uninterrupted run), or returns a finished one; `overwrite=True` replaces it.

    `distribute` ("none", "mirrored", "multi-worker" or "data-parallel"; default the
    `backend.distribute_default`, else "none") spreads each batch of
    `config.batch_size` (the global batch) over devices or workers; the model is built,
    compiled and fitted in the engine's scope. On a multi-worker run every worker runs
    this; give the workers other than the chief their own `output_dir`
    (`backend.worker_directory(output_dir, "multi-worker")`).

    Example:

    ```python
    import os
    from cactus_keras.experiments import TrainConfig, train

    config = TrainConfig(dataset="fashion_mnist", epsilon=0.01, arch="cnn3", epochs=1,
                         batch_size=64, validation_samples=0,
                         compression=[{"kind": "pruning", "ratio": [0.25, 0.75]}])
    model = train(config, data, "runs/one", verbose=0)   # data: a cactus_keras.data.Dataset
    print(sorted(os.listdir("runs/one")))   # config.json, model.keras, network.keras, ...
    ```
    """
    distribute = backend.check_distribute(backend.resolve_distribute(distribute))
    if resume and overwrite:
        raise ValueError("Pass `resume=True` or `overwrite=True`, not both.")
    check_data(config, data)
    # One writer at a time: a second process (even with `overwrite=True`) is refused.
    with folder_lock(output_dir, "The output directory",
                     "wait for it to finish, or choose another output directory"):
        return _train(config, data, output_dir, verbose, callbacks, resume, overwrite,
                      distribute)


def _train(config, data, output_dir, verbose, callbacks, resume, overwrite, distribute):
    settings = _saved_settings(config, data)
    state = _check_existing(output_dir, settings, resume, overwrite)
    if state == "finished":
        return keras.saving.load_model(os.path.join(output_dir, "model.keras"), compile=False)
    os.makedirs(output_dir, exist_ok=True)
    x, y = data.x_train, data.y_train
    if config.limit is not None:
        x, y = x[: config.limit], y[: config.limit]
    validation_data = None
    if config.validation_samples:
        n = config.validation_samples
        validation_data = (data.x_test[:n], data.y_test[:n])
    log_path = os.path.join(output_dir, "training_log.csv")
    # The epsilon the last batch trains at (below the target when the ramp ends with
    # training): recorded beside the settings, and said at the start by EpsilonRamp.
    steps = -(-len(x) // config.batch_size)
    reached = epsilon_reached(config, steps)
    if state == "unfinished":
        _keep_log_rows(log_path, resumed_epoch(output_dir))
    else:
        atomic_write.write_json(os.path.join(output_dir, "config.json"),
                                {**settings, "distribute": distribute,
                                 "epsilon_reached": reached})
    with backend.distribution_scope(distribute):
        model = build_model(config, data.input_shape, data.num_classes, data.input_range)
        x, y = validation.check_data(model.network, x, y, data.num_classes, data.input_range)
        batches = ShuffledBatches(x, y, config.batch_size, config.seed)
        # On one TensorFlow device the same batches go through tf.data (see
        # ShuffledBatches); distributed runs and JAX keep Keras's PyDataset path.
        fed = batches
        if keras.backend.backend() == "tensorflow" and distribute == "none":
            fed = batches.as_tf_dataset()
        model.fit(
            fed,
            epochs=config.epochs,
            shuffle=False,  # the batches shuffle themselves, from (seed, epoch)
            validation_data=validation_data,
            callbacks=[
                EpochOfBatches(batches),
                *schedule_callbacks(config),
                InterruptSafeBackup(os.path.join(output_dir, BACKUP)),
                keras.callbacks.CSVLogger(log_path, append=state == "unfinished"),
                # Keras's verbose=2 line holds every member's metrics: one short line
                # instead, the members' in the CSV log and a table at the end.
                *([EpochLine(config.epochs)] if verbose == 2 else []),
                *callbacks,
            ],
            verbose=0 if verbose == 2 else verbose,
        )
    model.save(os.path.join(output_dir, "model.keras"))
    model.network.save(os.path.join(output_dir, "network.keras"))
    shutil.rmtree(os.path.join(output_dir, BACKUP), ignore_errors=True)
    return model
