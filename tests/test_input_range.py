"""Every entry point that takes inputs refuses those outside the range it certifies in
(and NaN or infinite ones) before any work, with one line naming the range and the fix."""

import keras
import numpy as np
import pytest

import cactus_keras
from cactus_keras import cli, validation
from cactus_keras.attacks import pgd
from cactus_keras.export import to_tflite, verify_tflite
from cactus_keras.export.vnnlib import write_benchmark

OUTSIDE = "outside the data range \\[0, 1\\]"


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 4, 4, 1)).astype("uint8")
    return pixels, (pixels / 255.0).astype("float32"), rng.integers(0, 3, 12)


# ----------------------------------------------------------------------- the helper

def test_check_in_range_allows_rounding_and_refuses_the_rest():
    inside = np.array([0.0, 0.5, 1.0 + 1e-6, -1e-6], "float32")
    assert validation.check_in_range(inside, (0.0, 1.0)) is inside
    with pytest.raises(ValueError, match=r"\[0, 255\], outside the data range \[0, 1\].*x / 255"):
        validation.check_in_range(np.array([0, 255], "uint8"), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"`x` holds values in \[-0.5, 0.5\].*`input_range`"):
        validation.check_in_range(np.array([-0.5, 0.5]), (0.0, 1.0))
    # Another range, or none: the values it allows pass.
    validation.check_in_range(np.array([0, 255], "uint8"), (0.0, 255.0))
    validation.check_in_range(np.array([-3.0, 300.0]), None)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="1 NaN or infinite"):
            validation.check_in_range(np.array([0.5, bad]), None)
    message = ""
    try:
        validation.check_in_range(np.array([2.0]), (0.0, 1.0))
    except ValueError as error:
        message = str(error)
    assert "\n" not in message and "scale the inputs" in message


# ----------------------------------------------------------------------- one per entry point

def test_certify(data):
    pixels, scaled, y = data
    net = _net()
    with pytest.raises(ValueError, match=OUTSIDE):
        cactus_keras.certify(net, pixels, y, epsilon=0.1, verbose=0)
    nan = scaled.copy()
    nan[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cactus_keras.certify(net, nan, y, epsilon=0.1, input_range=None, verbose=0)
    # The same pixels in their own range, or scaled, are certified.
    assert len(cactus_keras.certify(net, pixels, y, epsilon=1.0, input_range=(0, 255),
                                    verbose=0).certified) == 12
    assert len(cactus_keras.certify(net, scaled, y, epsilon=0.1, verbose=0).certified) == 12


def test_evaluate_compressed_refuses_before_compressing(data):
    pixels, scaled, y = data
    net = _net()
    before = [w.copy() for w in net.get_weights()]
    with pytest.raises(ValueError, match=OUTSIDE):
        cactus_keras.evaluate_compressed(net, pixels, y, 0.1, ratios=[0.5])
    with pytest.raises(ValueError, match=r"`recalibrate_batchnorm` holds values in \[0, 2"):
        cactus_keras.evaluate_compressed(net, scaled, y, 0.1, ratios=[0.5],
                                         recalibrate_batchnorm=pixels)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
    table = cactus_keras.evaluate_compressed(net, scaled, y, 0.1, ratios=[0.5])
    assert len(table.rows) == 1


def test_pgd(data):
    pixels, scaled, y = data
    net = _net()
    with pytest.raises(ValueError, match=OUTSIDE):
        pgd(net, pixels, y, 0.1, steps=2, verbose=0)
    inf = scaled.copy()
    inf[0, 1, 1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        pgd(net, inf, y, 0.1, steps=2, verbose=0)
    assert pgd(net, scaled, y, 0.1, steps=2, verbose=0).x_adv.shape == scaled.shape


def _cactus(input_range=(0.0, 1.0)):
    model = cactus_keras.CactusModel(_net(), epsilon=0.05, input_range=input_range)
    model.compile(optimizer="adam")
    return model


def test_fit_and_evaluate_check_arrays(data):
    pixels, scaled, y = data
    model = _cactus()
    with pytest.raises(ValueError, match=OUTSIDE):
        model.fit(pixels, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` \(its first batch\)|" + OUTSIDE):
        model.fit(scaled, y, epochs=1, verbose=0, validation_data=(pixels, y))
    with pytest.raises(ValueError, match=OUTSIDE):
        model.evaluate(pixels, y, verbose=0)
    nan = scaled.copy()
    nan[5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.fit(nan, y, epochs=1, verbose=0)
    assert model.train_steps.numpy() == 0  # nothing ran
    model.fit(scaled, y, epochs=1, batch_size=6, verbose=0)
    assert model.train_steps.numpy() == 2
    # A model whose range is that of the pixels trains on them.
    _cactus((0.0, 255.0)).fit(pixels.astype("float32"), y, epochs=1, verbose=0)


def test_fit_checks_the_first_batch_of_a_dataset(data):
    import tensorflow as tf

    pixels, scaled, y = data
    model = _cactus()
    raw = tf.data.Dataset.from_tensor_slices((pixels.astype("float32"), y)).batch(4)
    with pytest.raises(ValueError, match=r"`x \(its first batch\)` holds values"):
        model.fit(raw, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data \(its first batch\)`"):
        model.fit(tf.data.Dataset.from_tensor_slices((scaled, y)).batch(4), epochs=1,
                  verbose=0, validation_data=raw)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return pixels[4 * index: 4 * index + 4].astype("float32"), y[4 * index: 4 * index + 4]

    with pytest.raises(ValueError, match="first batch"):
        model.evaluate(Batches(), verbose=0)
    assert model.train_steps.numpy() == 0
    model.fit(tf.data.Dataset.from_tensor_slices((scaled, y)).batch(4), epochs=1, verbose=0)
    assert model.train_steps.numpy() == 3


@pytest.fixture(scope="module")
def tflite_file(data, tmp_path_factory):
    _, scaled, _ = data
    path = tmp_path_factory.mktemp("range") / "m.tflite"
    return to_tflite(_net(), path, scaled)


def test_to_tflite_refuses_calibration_data_outside_the_range(data, tmp_path):
    import tensorflow as tf

    pixels, scaled, _ = data
    with pytest.raises(ValueError, match=r"`representative_data` holds values in \[0, 2"):
        to_tflite(_net(), tmp_path / "a.tflite", pixels)
    dataset = tf.data.Dataset.from_tensor_slices(pixels.astype("float32")).batch(4)
    with pytest.raises(ValueError, match=OUTSIDE):
        to_tflite(_net(), tmp_path / "b.tflite", dataset)
    model = cactus_keras.CactusModel(_net(), epsilon=1.0, input_range=(0.0, 255.0))
    with pytest.raises(ValueError, match=r"outside the data range \[0, 255\]"):
        to_tflite(model, tmp_path / "c.tflite", pixels * 2.0)
    assert not list(tmp_path.iterdir())  # refused before any file was written


def test_verify_tflite(data, tflite_file):
    pixels, scaled, y = data
    with pytest.raises(ValueError, match=OUTSIDE):
        verify_tflite(tflite_file, pixels, y, 0.01, verbose=0)
    nan = scaled.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        verify_tflite(tflite_file, nan, y, 0.01, verbose=0)
    assert len(verify_tflite(tflite_file, scaled, y, 0.01, verbose=0).certified) == 12


def test_write_benchmark(data, tmp_path):
    pytest.importorskip("onnx")
    pixels, _, y = data
    with pytest.raises(ValueError, match=OUTSIDE):
        write_benchmark(_net(), pixels, y, 0.1, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_shows_the_refusal_as_its_one_line_error(data, tmp_path, capsys):
    _, scaled, y = data
    net = _net()
    net.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=scaled.astype("float32"), y_train=y,
             x_test=scaled.astype("float32"), y_test=y)
    code = cli.main(["export-vnnlib", "--model", str(tmp_path / "m.keras"), "--dataset",
                     str(tmp_path / "d.npz"), "--epsilon", "0.1", "--output",
                     str(tmp_path / "b"), "--input-range", "0", "0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cactus-keras export-vnnlib: error: ") and "\n" not in err
    assert "outside the data range [0, 0.5]" in err and "--input-range" in err
    assert not (tmp_path / "b").exists()
