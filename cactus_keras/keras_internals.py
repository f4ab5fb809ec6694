"""Every use of a private Keras or KerasTuner API, in one place.

Keras has no public way to read a functional model's graph (its nodes by depth), to
update the metrics passed to `compile` from an overridden `compute_metrics`, to list a
layer's own variables in the order its weights file stores them, to build a
distributed model on one replica's batch, to wrap what `BackupAndRestore` writes, or to
ask KerasTuner whether this process is the chief of a distributed search. When a Keras
release changes one of these, this module is the only one to mend
(tests/test_layers.py fails on a private Keras name used anywhere else).
"""

from __future__ import annotations


def nodes_by_depth(functional):
    """`{depth: [Node]}` of a functional model, or None for other models."""
    return getattr(functional, "_nodes_by_depth", None)


def sequential_functional(model):
    """The functional model a built Sequential model wraps (None before it is built)."""
    return getattr(model, "_functional", None)


def compiled_metrics(model):
    """The `CompileMetrics` container of the metrics given to `compile`, or None."""
    return getattr(model, "_compile_metrics", None)


def own_variables(layer):
    """The variables `layer` itself created (not its sublayers'), in the order
    `Layer.save_own_variables` stores them (keys "0", "1", ...)."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


class BuildsOnOneReplica:
    """Mixin for a `keras.Model` subclass: the TensorFlow trainer's symbolic build uses
    one replica's first batch (see `symbolic_build`). List it before `keras.Model`."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return symbolic_build(self, super()._maybe_symbolic_build, iterator, data_batch)


class WrapsBackupWrite:
    """Mixin for a `keras.callbacks.BackupAndRestore` subclass: every backup it writes
    goes through `write_backup(save)`, where `save()` writes Keras's own backup. List it
    before `BackupAndRestore`."""

    def _save_model(self):
        self.write_backup(super()._save_model)

    def write_backup(self, save):
        save()


def tuner_has_chief():
    """True when KerasTuner runs distributed (a chief oracle is configured)."""
    from keras_tuner.src.distribute import utils

    return utils.has_chief_oracle()


def tuner_is_chief():
    """True in the chief process of a distributed KerasTuner search."""
    from keras_tuner.src.distribute import utils

    return utils.is_chief_oracle()


def symbolic_build(model, parent_build, iterator=None, data_batch=None):
    """Keras's `_maybe_symbolic_build` (TensorFlow trainer), fed one replica's batch.

    Keras builds the optimizer and metrics on the first batch of a distributed dataset,
    reduced with `strategy.reduce` over the whole (x, y, sample_weight) structure,
    which `MultiWorkerMirroredStrategy` refuses (it reduces single tensors only). The
    build needs shapes, not values: one replica's batch has them.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if iterator is None or strategy is None:
        return parent_build(iterator=iterator, data_batch=data_batch)
    import tensorflow as tf
    from keras import tree

    for _, _, batches in iterator:
        batch = next(batches)
        break
    else:
        return parent_build(iterator=None, data_batch=data_batch)

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return parent_build(iterator=None, data_batch=tree.map_structure(local, batch))


def step_logs(logs):
    """The logs a train or test step returns, shaped for Keras's reduction over replicas.

    Under `MultiWorkerMirroredStrategy` Keras 3 averages every log over the workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars
    (tensorflow/tensorflow#72388): there each log is returned as a vector of one value,
    which that reduction turns back into a scalar. Epoch logs are read from the metrics
    themselves, summed over the workers.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: tf.reshape(value, (1,)) for name, value in logs.items()}
