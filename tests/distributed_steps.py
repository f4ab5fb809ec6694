"""Two SGD steps of a small CactusModel (a pruned and an AWP member, sample weights)
under one `distribute` kind; writes the logs and the updated weights to an .npz.

Run by tests/test_distribute.py in subprocesses, because the devices (two logical CPUs
on TensorFlow, two host devices on JAX) and the cluster (TF_CONFIG) must be set before
the backend starts:

    python tests/distributed_steps.py OUTPUT_DIR KIND [KIND ...] [--logical-cpus 2]
        [--member-batch-fraction F [--interleave R]] [--int8-file]

writes OUTPUT_DIR/KIND.npz for each KIND (none, mirrored, multi-worker or data-parallel;
one process runs several, which saves a backend start each); the backend is
KERAS_BACKEND's.

`--member-batch-fraction F` trains the members on batch slices. Under `tf.distribute`
each replica slices its own part of the batch, so `--interleave R` reorders each global
batch of the one-device run ("none") so that its slices hold the samples of the R
replicas' slices: block k of every replica's part, replica after replica.
"""

import argparse
import os
import sys

GLOBAL_BATCH = 16
SAMPLES = 2 * GLOBAL_BATCH  # two steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("distribute", nargs="+")
    parser.add_argument("--logical-cpus", type=int, default=0)
    parser.add_argument("--member-batch-fraction", type=float, default=1.0)
    parser.add_argument("--interleave", type=int, default=0)
    parser.add_argument("--int8-file", action="store_true",
                        help="add the int8_file member (tracked ranges, integer intervals)")
    args = parser.parse_args()
    if args.logical_cpus:
        import tensorflow as tf

        # Before TensorFlow initializes its devices, that is before any op.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    for distribute in args.distribute:
        _steps(distribute, os.path.join(args.output, f"{distribute}.npz"),
               args.member_batch_fraction, args.interleave if distribute == "none" else 0,
               args.int8_file)


def interleaved(replicas, fraction):
    """The order of one global batch in which one device's slices are the union of the
    replicas' slices (contiguous parts of GLOBAL_BATCH // replicas samples each)."""
    import numpy as np

    local = GLOBAL_BATCH // replicas
    size = round(fraction * local)
    assert local % size == 0 and round(fraction * GLOBAL_BATCH) == replicas * size
    return np.concatenate([np.arange(r * local + k * size, r * local + (k + 1) * size)
                           for k in range(local // size) for r in range(replicas)])


def _steps(distribute, output, fraction=1.0, interleave=0, int8_file=False):
    import keras
    import numpy as np

    import cactus_keras
    from cactus_keras import backend

    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (SAMPLES, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, SAMPLES)
    sample_weight = rng.uniform(0.2, 2.0, SAMPLES).astype("float32")
    if interleave:
        order = np.concatenate([start + interleaved(interleave, fraction)
                                for start in range(0, SAMPLES, GLOBAL_BATCH)])
        x, y, sample_weight = x[order], y[order], sample_weight[order]
    with backend.distribution_scope(distribute):
        replicas = _replicas(distribute)
        keras.utils.set_random_seed(0)
        net = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ])
        # A sampled pruning ratio: every replica draws the same one from the model's
        # seed generator, whose state they share.
        model = cactus_keras.CactusModel(
            net, epsilon=0.05, standard_weight=0.3, seed=1, member_batch_fraction=fraction,
            compression=[cactus_keras.Pruning(ratio=(0.25, 0.75)),
                         cactus_keras.AWPQuantization(bits=4, awp_radius=1.0)]
            + ([cactus_keras.Int8FileQuantization(range_momentum=0.5)] if int8_file else []))
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        history = model.fit(x, y, sample_weight=sample_weight, batch_size=GLOBAL_BATCH,
                            epochs=1, shuffle=False, verbose=0)
    logs = {f"log_{k}": np.float64(v[-1]) for k, v in history.history.items()}
    weights = {f"weight_{i}": w for i, w in enumerate(model.network.get_weights())}
    ranges = {}
    if int8_file:
        state = model.member_state("int8_file")
        ranges = {f"range_{k}": keras.ops.convert_to_numpy(state[k].value)
                  for k in ("minimum", "maximum")}
    np.savez(output, replicas=replicas, **ranges, steps=int(keras.ops.convert_to_numpy(model.train_steps.value)),
             **logs, **weights)


def _replicas(distribute):
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.device_count() if distribute == "data-parallel" else 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
