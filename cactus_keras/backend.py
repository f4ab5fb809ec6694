"""The few operations Keras does not abstract over backends: gradients and compiling.

Everything else in cactus_keras is `keras.ops`; this module is the one place that
knows about TensorFlow and JAX.
"""

from __future__ import annotations

import contextlib

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


def gradients(fn, values):
    """Gradients of the scalar `fn(values)` with respect to the list `values`.

    Usable inside a traced training step (nested in its own gradient computation).
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
    return tape.gradient(loss, values)


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
