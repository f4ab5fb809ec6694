"""The few operations Keras does not abstract over backends: gradients and compiling.

Everything else in cactus_keras is `keras.ops`; this module is the one place that
knows about TensorFlow and JAX.
"""

from __future__ import annotations

import contextlib
import os

import keras

SUPPORTED_BACKENDS = ("tensorflow", "jax")


def _backend():
    name = keras.backend.backend()
    if name not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"cactus_keras supports the {' and '.join(SUPPORTED_BACKENDS)} Keras "
            f"backends; KERAS_BACKEND is '{name}'. Set KERAS_BACKEND=tensorflow or jax."
        )
    return name


def value_and_input_gradient(fn):
    """Compiles `fn(x, *args) -> per-sample values` into a function that returns the
    values and the gradient of their sum with respect to `x`."""
    if _backend() == "jax":
        import jax

        def summed(x, *args):
            values = fn(x, *args)
            return values.sum(), values

        grad_fn = jax.jit(jax.grad(summed, has_aux=True))

        def run(x, *args):
            grad, values = grad_fn(x, *args)
            return values, grad

        return run

    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            values = fn(x, *args)
        # The gradient of a non-scalar target is that of its sum.
        return values, tape.gradient(values, x)

    return run


def compile_function(fn):
    """Compiles a function of tensors with the backend's tracer."""
    if _backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, reduce_retracing=True)


@contextlib.contextmanager
def full_precision():
    """Float32 matrix products and convolutions at full float32 precision.

    GPUs multiply float32 matrices in TF32 by default (about 10 mantissa bits), so the
    network and its bounds would be computed less precisely than the float32 model they
    certify, and sampled points fall outside bounds by more than rounding. Certification
    runs inside this context; training, where a bound is only a loss, does not.
    """
    if _backend() == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
        return
    import tensorflow as tf

    was_enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(was_enabled)


def gradients(fn, values, per_replica=False):
    """Gradients of the scalar `fn(values)` with respect to the list `values`.

    Usable inside a traced training step (nested in its own gradient computation).
    In a replica of a `tf.distribute` step `fn` is this replica's share of the loss
    (see `sum_over_replicas`) and the gradients are summed over the replicas, as the
    optimizer's are, so every replica gets the gradient of the global batch: right for
    weights (AWP). `per_replica=True` keeps each replica's own gradient: right for its
    own inputs (an attack on its part of the batch).
    """
    if _backend() == "jax":
        import jax

        return jax.grad(fn)(list(values))
    import tensorflow as tf

    values = list(values)
    with tf.GradientTape() as tape:
        for v in values:
            tape.watch(v)
        loss = fn(values)
    grads = tape.gradient(loss, values)
    return grads if per_replica else [sum_over_replicas(g) for g in grads]


def _replica_context():
    """The `tf.distribute` replica context of a step over several replicas, or None
    (one device, outside a step, or JAX)."""
    if _backend() == "jax":
        # A JAX step, under `keras.distribution.DataParallel` too, is one program over
        # the whole global batch: its sums are global already.
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replica_count():
    """How many replicas add up the losses of a training step: those of the
    `tf.distribute` strategy the step runs under, else 1."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def sum_over_replicas(value):
    """`value` summed over the replicas of a `tf.distribute` step (itself elsewhere).

    Keras sums the replicas' losses and gradients without scaling a `compute_loss` of
    one's own, so a loss that is a mean must divide by the global batch's count, which
    this gives.
    """
    context = _replica_context()
    return value if context is None else context.all_reduce("sum", value)


def extremum_over_replicas(value, kind):
    """The "min" or "max" of a scalar `value` over the replicas of a `tf.distribute`
    step (itself elsewhere): statistics of the global batch, e.g. activation ranges,
    that every replica must agree on."""
    context = _replica_context()
    if context is None:
        return value
    import tensorflow as tf

    gathered = context.all_gather(tf.reshape(value, [1]), axis=0)
    return tf.reduce_min(gathered) if kind == "min" else tf.reduce_max(gathered)


# How training is spread over devices and processes (API `distribute`, CLI
# `--distribute`, TOML [experiment] `distribute`), and the backend each engine is on.
DISTRIBUTE = ("none", "mirrored", "multi-worker", "data-parallel")
_DISTRIBUTE_BACKEND = {"mirrored": "tensorflow", "multi-worker": "tensorflow",
                       "data-parallel": "jax"}
# One engine object per kind and process: TensorFlow's collectives are set up once.
_engines = {}
_active = []
_defaults = []


def check_distribute(distribute, name="distribute"):
    """`distribute` if it names an engine of the current backend; else a ValueError
    that calls the setting `name` (the API parameter, CLI flag or TOML key)."""
    if distribute not in DISTRIBUTE:
        raise ValueError(f"{name} must be one of {', '.join(DISTRIBUTE)}, got {distribute!r}.")
    needed = _DISTRIBUTE_BACKEND.get(distribute)
    current = _backend()
    if needed is not None and current != needed:
        other = "data-parallel" if current == "jax" else "mirrored or multi-worker"
        raise ValueError(
            f"{name} {distribute!r} runs on the {needed} backend, and KERAS_BACKEND is "
            f"{current!r}: set KERAS_BACKEND={needed}, or use {other} on {current}."
        )
    if distribute == "multi-worker" and not os.environ.get("TF_CONFIG"):
        raise ValueError(
            f"{name} 'multi-worker' needs TF_CONFIG, the cluster and this process's "
            'place in it, e.g. TF_CONFIG=\'{"cluster": {"worker": ["127.0.0.1:12345", '
            '"127.0.0.1:12346"]}, "task": {"type": "worker", "index": 0}}\' (README: '
            '"Several devices and machines").'
        )
    return distribute


@contextlib.contextmanager
def distribute_default(distribute):
    """Sets the `distribute` that training uses when not given one
    (`cactus_keras.experiments.train`, the experiment runner, `CactusHyperModel`); the
    CLI's `--distribute`."""
    _defaults.append(check_distribute(distribute))
    try:
        yield
    finally:
        _defaults.pop()


def resolve_distribute(distribute=None, fallback="none"):
    """`distribute` if given, else the innermost `distribute_default`, else `fallback`."""
    if distribute is not None:
        return distribute
    return _defaults[-1] if _defaults else fallback


def worker_directory(path, distribute):
    """Where this process writes what would go to `path`: `path` itself, except on the
    workers other than the chief of a multi-worker run, which each train the same
    weights and write into `path/worker<index>` instead of over the chief's files."""
    if distribute != "multi-worker":
        return path
    index, chief = worker_task()
    return path if chief else os.path.join(path, f"worker{index}")


def active_distribution():
    """The `distribute` kind of the innermost `distribution_scope`, "none" outside."""
    return _active[-1] if _active else "none"


def _engine(distribute):
    if distribute not in _engines:
        if distribute == "data-parallel":
            _engines[distribute] = keras.distribution.DataParallel()
        else:
            import tensorflow as tf

            _engines[distribute] = (tf.distribute.MirroredStrategy() if distribute == "mirrored"
                                    else tf.distribute.MultiWorkerMirroredStrategy())
    return _engines[distribute]


@contextlib.contextmanager
def distribution_scope(distribute="none"):
    """Builds, compiles and fits the models made inside over several devices or workers.

    "mirrored": `tf.distribute.MirroredStrategy` over this machine's devices;
    "multi-worker": `tf.distribute.MultiWorkerMirroredStrategy` over the processes that
    `TF_CONFIG` names (each runs the same program); "data-parallel":
    `keras.distribution.DataParallel` over the JAX devices. The batch size is the global
    one. Inside a scope of the same kind it does nothing more.

    Example:

    ```python
    with cactus_keras.backend.distribution_scope("mirrored"):
        model = cactus_keras.CactusModel(net, epsilon=0.1)
        model.compile(optimizer="adam")
        model.fit(x, y, batch_size=256)
    ```
    """
    check_distribute(distribute)
    current = active_distribution()
    if distribute in ("none", current):
        yield
        return
    if current != "none":
        raise ValueError(
            f"distribute {distribute!r} inside distribute {current!r}: pick one of them."
        )
    _active.append(distribute)
    try:
        with _engine(distribute).scope():
            yield
    finally:
        _active.pop()


def worker_task():
    """`(index, is_chief)` of this process in a multi-worker cluster (TF_CONFIG);
    `(0, True)` without one. The chief is the `chief` task, else worker 0."""
    import json

    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return index, kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def value_and_gradients(fn, values):
    """`(aux, gradients)` of `fn(values) -> (scalar, aux)` with respect to the list
    `values`: the scalar is differentiated, `aux` is returned as computed.

    Usable inside a traced function and inside a loop body (`keras.ops.fori_loop`).
    """
    if _backend() == "jax":
        import jax

        (_, aux), grads = jax.value_and_grad(fn, has_aux=True)(list(values))
        return aux, grads
    import tensorflow as tf

    values = list(values)
    with tf.GradientTape() as tape:
        for v in values:
            tape.watch(v)
        loss, aux = fn(values)
    return aux, tape.gradient(loss, values)
