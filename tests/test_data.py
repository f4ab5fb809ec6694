"""Tests for cactus_keras.data: offline, tiny synthetic files in tmp_path."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from cactus_keras import data
from cactus_keras.data import datasets as datasets_module
from cactus_keras.data import Dataset
from cactus_keras.data import DatasetFormatError
from cactus_keras.data import DatasetNotFoundError
from cactus_keras.data import load
from cactus_keras.data import load_idx

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array, code=0x08):
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path, array, *, gz=False, code=0x08):
    payload = idx_bytes(array, code)
    if gz:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_arrays(n_train=12, n_test=5, hw=(28, 28), seed=0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, *hw), dtype=np.uint8)
    x_train[0, 0, 0], x_train[0, 0, 1] = 0, 255  # pin the range ends
    return {
        "x_train": x_train,
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }


def write_idx_dir(directory, arrays, *, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    for key, base in IDX_NAMES.items():
        write_idx(directory / (base + (".gz" if gz else "")), arrays[key],
                  gz=gz)
    return directory


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Points every default look-up place at empty temporary directories."""
    debian = tmp_path / "debian-empty"
    keras_home = tmp_path / "keras-home"
    debian.mkdir()
    keras_home.mkdir()
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR",
                        str(debian))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    return debian, keras_home


# ---------------------------------------------------------------------------
# IDX parsing


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_roundtrip(tmp_path, gz):
    images = make_arrays()["x_train"]
    path = write_idx(tmp_path / ("img.gz" if gz else "img"), images, gz=gz)
    loaded = load_idx(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)
    loaded[0, 0, 0] = 7  # result must be writable


def test_load_idx_big_endian_int32_and_float(tmp_path):
    ints = np.array([[1, -2, 70000]], dtype=np.int32)
    floats = np.array([0.5, -1.25], dtype=np.float32)
    got_ints = load_idx(write_idx(tmp_path / "i", ints, code=0x0C))
    got_floats = load_idx(write_idx(tmp_path / "f", floats, code=0x0D))
    np.testing.assert_array_equal(got_ints, ints)
    np.testing.assert_array_equal(got_floats, floats)
    assert got_ints.dtype.isnative and got_floats.dtype == np.float32


def test_load_idx_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34" + idx_bytes(np.zeros(3, np.uint8))[2:])
    with pytest.raises(DatasetFormatError, match=r"bad magic number") as e:
        load_idx(path)
    assert str(path) in str(e.value)


def test_load_idx_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad"
    raw = bytearray(idx_bytes(np.zeros(3, np.uint8)))
    raw[2] = 0x42
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match=r"unknown dtype code 0x42"):
        load_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_truncated(tmp_path, gz):
    payload = idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7]
    path = tmp_path / ("short.gz" if gz else "short")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DatasetFormatError, match=r"truncated") as e:
        load_idx(path)
    assert str(path) in str(e.value)
    assert "(4, 5, 5)" in str(e.value)


def test_load_idx_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DatasetFormatError, match=r"truncated"):
        load_idx(path)


def test_load_idx_trailing_bytes(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"\x00")
    with pytest.raises(DatasetFormatError, match=r"trailing bytes"):
        load_idx(path)


def test_load_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(make_arrays()["x_train"]))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    flip = tmp_path / "flip.gz"
    flip.write_bytes(bytes(flipped))
    not_gz = tmp_path / "plain-bytes.gz"
    not_gz.write_bytes(b"this is not gzip")
    for path in (cut, flip, not_gz):
        with pytest.raises(DatasetFormatError, match=r"[Cc]orrupt gzip") as e:
            load_idx(path)
        assert str(path) in str(e.value)


# ---------------------------------------------------------------------------
# Loading from a user path


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_directory(tmp_path, gz):
    arrays = make_arrays()
    directory = write_idx_dir(tmp_path / "digits", arrays, gz=gz)
    ds = load(directory)
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (12, 28, 28, 1)
    assert ds.x_test.shape == (5, 28, 28, 1)
    assert ds.input_shape == (28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.y_train.dtype == np.int64 and ds.y_train.shape == (12,)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"])
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["x_test"] / 255.0,
                               rtol=1e-6)
    assert ds.num_classes == 10  # labels go up to 9
    assert ds.name == "digits"
    assert str(directory) in ds.source


def test_load_string_path_and_num_classes_inferred(tmp_path):
    arrays = make_arrays()
    arrays["y_train"] = np.zeros(12, np.uint8)
    arrays["y_test"] = np.zeros(5, np.uint8)
    directory = write_idx_dir(tmp_path / "ones", arrays)
    ds = load(str(directory))
    # All-zero labels still make a 2-class problem.
    assert ds.num_classes == 2


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_load_npz_uint8(tmp_path, channels):
    arrays = make_arrays(hw=(8, 8))
    if channels:
        for k in ("x_train", "x_test"):
            arrays[k] = np.repeat(arrays[k][..., None], channels, axis=-1)
    arrays["y_train"] = (np.arange(12) % 4).astype(np.int32)
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    ds = load(path)
    assert ds.x_train.shape == (12, 8, 8, channels or 1)
    assert ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.num_classes == 5  # train labels reach 3, test labels 4
    assert ds.name == "mine"
    assert ds.source == str(path)


def test_load_npz_float_kept_as_is(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((6, 4, 4, 2)).astype(np.float64)
    y = np.array([0, 1, 2, 0, 1, 2])
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    ds = load(path)
    assert ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train, x, rtol=1e-6)
    assert ds.num_classes == 3


def test_load_npz_float_out_of_range(tmp_path):
    x = np.full((2, 4, 4), 255.0)
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, y_train=[0, 1], x_test=x, y_test=[0, 1])
    with pytest.raises(DatasetFormatError, match=r"\[0, 1\]") as e:
        load(path)
    assert "x_train" in str(e.value)


def test_a_training_label_outside_the_test_splits_classes_is_refused(tmp_path):
    # One stray label 10 in a 10-class set: without the check, an 11-class model.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 4, 4), dtype=np.uint8)
    y = np.arange(200) % 10
    bad = y.copy()
    bad[17] = 10
    path = tmp_path / "stray.npz"
    np.savez(path, x_train=x, y_train=bad, x_test=x[:50], y_test=y[:50])
    with pytest.raises(DatasetFormatError) as e:
        load(path)
    message = str(e.value)
    assert "1 labels in" in message and "y_train] (first at index 17: 10)" in message
    assert "0..9, 10 classes" in message and "num_classes=K" in message
    assert "\n" not in message
    # A label far beyond, leaving classes that no sample has (255 for "unknown").
    bad[17] = 255
    bad[:100:10] = 255
    np.savez(path, x_train=x, y_train=bad, x_test=x[:50], y_test=y[:50])
    with pytest.raises(DatasetFormatError, match=r"11 labels in .*first at index 0: 255"):
        load(path)
    # Declared, the count is what the labels are checked against...
    np.savez(path, x_train=x, y_train=bad, x_test=x, y_test=y, num_classes=10)
    with pytest.raises(DatasetFormatError, match=r"must be in \[0, 10\); 11 are not"):
        load(path)
    np.savez(path, x_train=x, y_train=bad, x_test=x, y_test=y, num_classes=256)
    assert load(path).num_classes == 256
    # ...and a small test split that lacks common classes needs no declaration.
    np.savez(path, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    assert load(path).num_classes == 10
    for declared in (1, 2.5, [10, 10]):
        np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, num_classes=declared)
        with pytest.raises(DatasetFormatError, match=r"num_classes\] must be one integer"):
            load(path)


def test_load_npz_missing_key(tmp_path):
    arrays = make_arrays()
    del arrays["y_test"]
    arrays["labels_test"] = np.zeros(5, np.uint8)
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetFormatError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "missing arrays y_test" in msg
    assert "Expected keys x_train, y_train, x_test, y_test" in msg
    assert "found labels_test, x_test, x_train, y_train" in msg


def test_load_npz_not_a_zip(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DatasetFormatError, match=r"not a readable \.npz"):
        load(path)


def test_load_wrong_image_rank(tmp_path):
    arrays = make_arrays()
    arrays["x_train"] = arrays["x_train"].reshape(12, -1)
    path = tmp_path / "flat.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetFormatError, match=r"rank 3") as e:
        load(path)
    assert "(12, 784)" in str(e.value) and "x_train" in str(e.value)


def test_mismatched_counts(tmp_path):
    arrays = make_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    directory = write_idx_dir(tmp_path / "d", arrays, gz=True)
    with pytest.raises(DatasetFormatError) as e:
        load(directory)
    msg = str(e.value)
    assert "12 images" in msg and "11 labels" in msg
    assert "train-labels-idx1-ubyte.gz" in msg


def test_bad_label_for_named_dataset(tmp_path, isolated):
    arrays = make_arrays()
    arrays["y_test"][3] = 10  # Fashion-MNIST has classes 0..9
    directory = write_idx_dir(tmp_path / "fm", arrays)
    with pytest.raises(DatasetFormatError) as e:
        load("fashion_mnist", data_dir=directory, download=False)
    msg = str(e.value)
    assert "[0, 10)" in msg and "index 3" in msg
    assert "t10k-labels-idx1-ubyte" in msg


def test_negative_label_in_user_npz(tmp_path):
    arrays = make_arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.int64)
    arrays["y_train"][0] = -1
    path = tmp_path / "neg.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetFormatError, match=r"y_train.*\[0, 10\)"):
        load(path)


def test_partial_idx_directory_is_an_error(tmp_path):
    directory = write_idx_dir(tmp_path / "d", make_arrays())
    os.remove(directory / IDX_NAMES["x_test"])
    with pytest.raises(DatasetFormatError,
                       match=r"missing t10k-images-idx3-ubyte"):
        load(directory)


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"No such file"):
        load(tmp_path / "nope.npz")
    with pytest.raises(ValueError) as e:
        load("imagenet")
    msg = str(e.value)
    for name in ("mnist", "fashion_mnist", "cifar10", "IDX", ".npz"):
        assert name in msg


def test_data_dir_with_path_is_rejected(tmp_path):
    directory = write_idx_dir(tmp_path / "d", make_arrays())
    with pytest.raises(ValueError, match=r"data_dir"):
        load(directory, data_dir=tmp_path)


# ---------------------------------------------------------------------------
# Named datasets: look-up order and not-found message


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion-mnist"])
def test_not_found_lists_every_place(tmp_path, isolated, name):
    debian, keras_home = isolated
    data_dir = tmp_path / "my-data"
    with pytest.raises(DatasetNotFoundError) as e:
        load(name, data_dir=data_dir, download=False)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    places = [
        str(data_dir),
        str(data_dir / "fashion_mnist.npz"),
        str(debian),
        str(keras_home / "datasets" / "fashion-mnist"),
        "TensorFlow Datasets 'fashion_mnist'",
    ]
    positions = [msg.find(p) for p in places]
    assert all(p >= 0 for p in positions), msg
    assert positions == sorted(positions), msg
    assert "download=False" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert ".npz" in msg and "internet" in msg


def test_not_found_cifar10(isolated):
    _, keras_home = isolated
    with pytest.raises(DatasetNotFoundError) as e:
        load("cifar10", download=False)
    msg = str(e.value)
    assert str(keras_home / "datasets" / "cifar-10-batches-py") in msg
    assert "apt-get" not in msg  # no Debian package for CIFAR-10


def test_keras_cache_mnist_npz(isolated):
    _, keras_home = isolated
    (keras_home / "datasets").mkdir()
    arrays = make_arrays()
    np.savez(keras_home / "datasets" / "mnist.npz", **arrays)
    ds = load("mnist", download=False)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (12, 28, 28, 1)
    assert "Keras cache" in ds.source and "mnist.npz" in ds.source


def test_debian_dir_comes_before_keras_cache(tmp_path, isolated):
    debian, keras_home = isolated
    write_idx_dir(debian, make_arrays(seed=1), gz=True)
    write_idx_dir(keras_home / "datasets" / "fashion-mnist",
                  make_arrays(n_train=3, seed=2), gz=True)
    ds = load("fashion-mnist", download=False)
    assert ds.name == "fashion_mnist"
    assert len(ds.x_train) == 12
    assert "dataset-fashion-mnist" in ds.source and str(debian) in ds.source


def test_data_dir_comes_first_and_checks_shape(tmp_path, isolated):
    debian, _ = isolated
    write_idx_dir(debian, make_arrays(seed=1))
    mine = write_idx_dir(tmp_path / "mine", make_arrays(n_train=4))
    ds = load("fashion_mnist", data_dir=mine, download=False)
    assert len(ds.x_train) == 4 and "data_dir" in ds.source
    # MNIST-shaped files are not CIFAR-10.
    with pytest.raises(DatasetFormatError, match=r"\(32, 32, 3\)"):
        load("cifar10", data_dir=mine, download=False)


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    # The official files store each row channel-major: R plane, G, B.
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    with open(path, "wb") as f:
        pickle.dump({b"data": rows, b"labels": labels,
                     b"batch_label": b"x"}, f)
    return images, np.array(labels)


@pytest.mark.parametrize(
    "subdir",
    [("cifar-10-batches-py",),
     ("cifar-10-batches-py-target", "cifar-10-batches-py")],
)
def test_keras_cache_cifar10_pickles(isolated, subdir):
    _, keras_home = isolated
    directory = keras_home.joinpath("datasets", *subdir)
    directory.mkdir(parents=True)
    train = [_write_cifar_batch(directory / f"data_batch_{i}", 2, i)
             for i in range(1, 6)]
    x_test, y_test = _write_cifar_batch(directory / "test_batch", 3, 99)
    ds = load("cifar10", download=False)
    assert ds.x_train.shape == (10, 32, 32, 3)
    assert ds.x_test.shape == (3, 32, 32, 3)
    assert ds.input_shape == (32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[2:4], train[1][0] / 255.0,
                               rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, x_test / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, y_test)
    np.testing.assert_array_equal(
        ds.y_train, np.concatenate([y for _, y in train]))
    assert "Keras cache" in ds.source and str(directory) in ds.source


def test_cifar_bad_batch(isolated):
    _, keras_home = isolated
    directory = keras_home / "datasets" / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for i in range(1, 6):
        _write_cifar_batch(directory / f"data_batch_{i}", 2, i)
    (directory / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetFormatError, match=r"test_batch"):
        load("cifar10", download=False)


def test_tfds_failure_is_reported(isolated, monkeypatch):
    def offline(name):
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setattr(datasets_module, "_read_tfds", offline)
    with pytest.raises(DatasetNotFoundError) as e:
        load("mnist", download=True)
    msg = str(e.value)
    assert "TensorFlow Datasets 'mnist': failed" in msg
    assert "ConnectionError: no route to host" in msg
    assert "second line" not in msg


def test_tfds_result_is_converted(isolated, monkeypatch):
    arrays = make_arrays()
    calls = []

    def fake_tfds(name):
        calls.append(name)
        return {
            "x_train": (arrays["x_train"][..., None], "tfds train"),
            "y_train": (arrays["y_train"].astype(np.int64), "tfds train"),
            "x_test": (arrays["x_test"][..., None], "tfds test"),
            "y_test": (arrays["y_test"].astype(np.int64), "tfds test"),
        }

    monkeypatch.setattr(datasets_module, "_read_tfds", fake_tfds)
    with pytest.raises(DatasetNotFoundError):
        load("mnist", download=False)
    assert calls == []  # download=False must never reach TFDS
    ds = load("mnist")
    assert calls == ["mnist"]
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_train.max() == 1.0
    assert ds.source == "TensorFlow Datasets 'mnist'"


def test_public_exports():
    assert data.load is load and data.load_idx is load_idx
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(DatasetFormatError, ValueError)
    ds = Dataset(np.zeros((1, 2, 2, 1), np.float32), np.zeros(1, np.int64),
                 np.zeros((1, 2, 2, 1), np.float32), np.zeros(1, np.int64),
                 name="t", source="s", num_classes=2)
    with pytest.raises(AttributeError):
        ds.name = "other"  # frozen
    assert "(1, 2, 2, 1)" in repr(ds)


# ---------------------------------------------------------------------------
# The real thing, when the Debian package is installed


@pytest.mark.skipif(
    not os.path.isdir(datasets_module.DEBIAN_FASHION_MNIST_DIR),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    ds = load("fashion_mnist", download=False)
    assert ds.x_train.shape == (60000, 28, 28, 1)
    assert ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.input_shape == (28, 28, 1)
    assert ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.y_train.dtype == np.int64 and ds.y_test.shape == (10000,)
    assert ds.num_classes == 10
    assert set(np.unique(ds.y_train)) == set(range(10))
    # Fashion-MNIST is balanced: 6000 training images per class.
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    assert "dataset-fashion-mnist" in ds.source


def test_digits_are_scikit_learns_with_a_fixed_split():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    ds = load("digits")
    again = load("DIGITS")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    assert len(ds.x_test) == 360 and len(ds.x_train) == 1797 - 360
    np.testing.assert_array_equal(ds.x_train, again.x_train)   # the split is fixed
    assert ds.x_train.dtype == np.float32 and ds.x_train.min() == 0 and ds.x_train.max() == 1
    assert set(ds.y_test.tolist()) == set(range(10))
    # Every image is one of scikit-learn's, pixel values 0..16 scaled by 1/16.
    original = {img.tobytes(): int(t) for img, t in zip(
        (load_digits().images / 16.0).astype(np.float32), load_digits().target)}
    for x, y in zip(np.concatenate([ds.x_train, ds.x_test])[::97],
                    np.concatenate([ds.y_train, ds.y_test])[::97]):
        assert original[x[..., 0].tobytes()] == y
