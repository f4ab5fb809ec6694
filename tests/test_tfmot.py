"""TF-MOT baselines: tf_keras twins, TF-MOT pruning and QAT int8 export."""

import keras
import numpy as np
import pytest
from keras import layers

import cactus_keras
from cactus_keras import models
from cactus_keras.interop import tf_keras_twins, tfmot
from cactus_keras.export import load_integer_graph, verify_tflite


def quadrant_data(samples, size=8, seed=0):
    """Images in [0, 1] whose label is the brightest quadrant (4 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, samples)
    x = rng.uniform(0.0, 0.6, (samples, size, size, 1)).astype("float32")
    h = size // 2
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, r * h:(r + 1) * h, c * h:(c + 1) * h] += 0.4
    return x, y.astype("int64")


def every_layer_network():
    """A Sequential chain with every supported layer type, non-trivial BN statistics."""
    network = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Rescaling(2.0, offset=-1.0),
        layers.ZeroPadding2D(1),
        layers.Conv2D(4, 3, activation="relu", padding="valid"),
        layers.BatchNormalization(),
        layers.ReLU(max_value=6.0),
        layers.MaxPooling2D(),
        layers.AveragePooling2D(1),
        layers.Dropout(0.2),
        layers.Flatten(),
        layers.Reshape((4, 16)),
        layers.Conv1D(3, 2, activation="relu"),
        layers.Flatten(),
        layers.Dense(8),
        layers.Activation("relu"),
        layers.Dense(4),
    ], name="every_layer")
    rng = np.random.default_rng(1)
    bn = next(l for l in network.layers if isinstance(l, layers.BatchNormalization))
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(size=beta.shape),
                    rng.normal(size=gamma.shape), rng.uniform(0.5, 2.0, gamma.shape)])
    for layer in network.layers:
        if isinstance(layer, (layers.Dense, layers.Conv1D, layers.Conv2D)):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(scale=0.1, size=bias.shape)])
    return network


def kernel_layers(network):
    return [l for l in network.layers if isinstance(l, (layers.Dense, layers.Conv2D))]


def test_twin_computes_what_the_network_computes():
    x, _ = quadrant_data(32)
    for network in (every_layer_network(),
                    models.cnn3((12, 12, 1), 4, batch_norm=True),
                    models.mlp((8, 8, 1), 3, hidden=(16,), batch_norm=True)):
        inputs = x if network.inputs[0].shape[1] == 8 else np.pad(
            x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        twin = tf_keras_twins.tf_keras_twin(network)
        assert type(twin).__module__.startswith("tf_keras")
        assert [l.name for l in twin.layers] == [
            l.name for l in network.layers if not isinstance(l, layers.InputLayer)]
        expected = keras.ops.convert_to_numpy(network(inputs, training=False))
        np.testing.assert_allclose(twin(inputs, training=False).numpy(), expected,
                                   rtol=1e-5, atol=1e-5)
        for a, b in zip(twin.get_weights(), network.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_twin_refuses_what_it_cannot_copy():
    inputs = keras.Input((8,))
    hidden = layers.Dense(4, name="first")(inputs)
    outputs = layers.Add(name="skip")([hidden, layers.Dense(4)(hidden)])
    with pytest.raises(ValueError, match="'skip' .*Add.*Supported layer types: InputLayer"):
        tf_keras_twins.tf_keras_twin(keras.Model(inputs, outputs))

    branch = layers.Dense(8, name="shared")
    x = branch(inputs)
    with pytest.raises(ValueError, match="'shared'.*linear chains"):
        tf_keras_twins.tf_keras_twin(keras.Model(inputs, layers.Dense(2)(branch(x))))

    normed = keras.Sequential([keras.Input((8,)), layers.LayerNormalization(name="ln")])
    with pytest.raises(ValueError, match="'ln' .*LayerNormalization"):
        tf_keras_twins.tf_keras_twin(normed)

    with pytest.raises(TypeError, match="Keras 3 model"):
        tf_keras_twins.tf_keras_twin("model.keras")


def test_copy_twin_weights_round_trip_and_shape_check():
    network = models.cnn3((12, 12, 1), 4)
    before = network.get_weights()
    twin = tf_keras_twins.tf_keras_twin(network)
    twin.set_weights([2.0 * w + 1.0 for w in twin.get_weights()])
    assert tf_keras_twins.copy_twin_weights(twin, network) is network
    for new, old in zip(network.get_weights(), before):
        np.testing.assert_allclose(new, 2.0 * old + 1.0, rtol=1e-6)

    other = tf_keras_twins.tf_keras_twin(models.cnn3((16, 16, 1), 4))
    with pytest.raises(ValueError, match="'logits'.*weight shapes"):
        tf_keras_twins.copy_twin_weights(other, network)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_tfmot_prune_reaches_the_ratio_per_layer(ratio, tmp_path):
    x, y = quadrant_data(64)
    network = every_layer_network()
    before = [w.copy() for w in network.get_weights()]
    old_kernel = keras.ops.convert_to_numpy(network.layers[-1].kernel).copy()
    pruned = tfmot.tfmot_prune(network, x, y, ratio, epochs=1, batch_size=16)

    assert pruned is not network and isinstance(pruned, keras.Model)
    for w, old in zip(network.get_weights(), before):  # the input is not modified
        np.testing.assert_array_equal(w, old)
    kernels = [l.kernel for l in pruned.layers
               if isinstance(l, (layers.Dense, layers.Conv1D, layers.Conv2D))]
    assert len(kernels) == 4
    for kernel in kernels:
        k = keras.ops.convert_to_numpy(kernel)
        # TF-MOT keeps round(size * (1 - ratio)) entries (ties at the threshold keep more).
        kept = int(round(k.size * (1 - ratio)))
        assert (k != 0).sum() == kept, (kernel.path, (k == 0).mean())
    # Fine-tuned: the surviving weights moved; biases are not pruned.
    new_kernel = keras.ops.convert_to_numpy(pruned.layers[-1].kernel)
    survivors = new_kernel != 0
    assert not np.allclose(new_kernel[survivors], old_kernel[survivors])
    assert np.all(keras.ops.convert_to_numpy(pruned.layers[-1].bias) != 0)
    # The result is an ordinary Keras 3 network that our bounds certify.
    result = cactus_keras.certify(pruned, x[:8], y[:8], epsilon=0.0, verbose=0)
    logits = keras.ops.convert_to_numpy(pruned(x[:8], training=False))
    np.testing.assert_array_equal(result.certified, logits.argmax(1) == y[:8])
    # ...and saves as one (TF-MOT's tf_keras import leaves Keras 3 alone).
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x[:8], training=False)),
                               logits, rtol=1e-6, atol=1e-6)


def test_tfmot_prune_with_learning_rate_zero_only_masks():
    """learning_rate=0 is TF-MOT's magnitude pruning of the weights as they are: every
    kept weight is the original one, and what is dropped are each kernel's smallest."""
    x, y = quadrant_data(64)
    network = models.mlp((8, 8, 1), 4, hidden=(16,))
    pruned = tfmot.tfmot_prune(network, x, y, 0.5, learning_rate=0.0, batch_size=16)
    for old_layer, new_layer in zip(kernel_layers(network), kernel_layers(pruned)):
        old = keras.ops.convert_to_numpy(old_layer.kernel)
        new = keras.ops.convert_to_numpy(new_layer.kernel)
        kept = new != 0
        np.testing.assert_array_equal(new[kept], old[kept])
        assert kept.sum() == int(round(old.size * 0.5))
        assert np.abs(old[~kept]).max() <= np.abs(old[kept]).min()
    with pytest.raises(ValueError, match="learning_rate"):
        tfmot.tfmot_prune(network, x, y, 0.5, learning_rate=-1.0)


def test_tfmot_prune_ratio_zero_and_bad_arguments(tmp_path):
    x, y = quadrant_data(16)
    network = models.mlp((8, 8, 1), 4, hidden=(8,))
    clone = tfmot.tfmot_prune(network, x, y, 0.0)
    assert clone is not network
    for a, b in zip(clone.get_weights(), network.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"`ratio` must be in \[0, 1\)"):
        tfmot.tfmot_prune(network, x, y, 1.0)
    softmax = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(),
                                layers.Dense(4, activation="softmax", name="probs")])
    with pytest.raises(ValueError, match="'probs'.*logits"):
        tfmot.tfmot_prune(softmax, x, y, 0.5)
    with pytest.raises(ValueError, match="shape"):
        tfmot.tfmot_prune(network, x[:, :4], y, 0.5)


@pytest.mark.slow
def test_tfmot_qat_tflite_is_certified_by_our_verifier(tmp_path):
    x, y = quadrant_data(320, seed=2)
    x_train, y_train, x_test, y_test = x[:256], y[:256], x[256:], y[256:]
    network = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.Flatten(),
        layers.Dense(16, activation="relu"),
        layers.Dense(4),
    ])
    network.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    before = [w.copy() for w in network.get_weights()]
    keras_predicted = keras.ops.convert_to_numpy(network(x_test, training=False)).argmax(1)
    keras_accuracy = float(np.mean(keras_predicted == y_test))
    assert keras_accuracy >= 0.8  # the task is learnable; otherwise the test says little

    path = tmp_path / "sub" / "qat.tflite"
    returned = tfmot.tfmot_quantize_to_tflite(
        network, x_train, y_train, path, epochs=1, batch_size=32, representative_samples=64)
    assert returned == str(path)
    for w, old in zip(network.get_weights(), before):
        np.testing.assert_array_equal(w, old)

    graph = load_integer_graph(path)
    assert graph.input_tensor.type == "INT8" and not graph.float_input
    assert graph.tensors[graph.output].type == "INT8"
    assert set(graph.op_names()) <= {"CONV_2D", "FULLY_CONNECTED", "RESHAPE"}
    result = verify_tflite(path, x_test, y_test, epsilon=0.01)
    assert result.simulation_agreement == 1.0
    assert abs(result.clean_accuracy - keras_accuracy) <= 0.1
    assert np.mean(result.predicted == keras_predicted) >= 0.85
    assert 0.0 < result.certified_accuracy <= result.clean_accuracy
    reference = verify_tflite(path, x_test[:16], y_test[:16], 0.01, kernels="reference")
    assert reference.simulation_agreement == 1.0


def test_tfmot_qat_names_the_layer_it_cannot_quantize(tmp_path):
    x, y = quadrant_data(16)
    network = keras.Sequential([keras.Input((8, 8, 1)), layers.Rescaling(0.5, name="scale"),
                                layers.Flatten(), layers.Dense(4)])
    with pytest.raises(ValueError, match="'scale' \\(Rescaling\\).*data pipeline"):
        tfmot.tfmot_quantize_to_tflite(network, x, y, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()
