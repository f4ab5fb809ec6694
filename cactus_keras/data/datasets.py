"""Offline-first loading of MNIST, Fashion-MNIST, CIFAR-10 and scikit-learn's digits.

`load()` looks in local places first (a path you give, `data_dir=`, the
Debian `dataset-fashion-mnist` package, the Keras download cache) and only
then, if allowed, asks TensorFlow Datasets to download. Every array is
validated, so a corrupt or half-copied file fails loudly with its name
instead of training on garbage.
"""

import dataclasses
import functools
import os
import pickle
import zipfile

import numpy as np

from cactus_keras.data.idx import DatasetFormatError
from cactus_keras.data.idx import load_idx

# Module-level so tests (and unusual installs) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

NUM_CLASSES = 10

# The four files of the original MNIST / Fashion-MNIST distribution.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# An optional scalar in an .npz: the number of classes, when the test split may lack one.
NUM_CLASSES_KEY = "num_classes"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"

_ALIASES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "digits": "digits",
}
_IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "digits": (8, 8, 1),
}
# scikit-learn's bundled digits (1,797 8x8 images, pixel values 0..16) have no split of
# their own: a fixed shuffle (seed 0) holds out this many as the test split.
DIGITS_TEST_SAMPLES = 360
_TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
}


class DatasetNotFoundError(FileNotFoundError):
    """No local copy was found and downloading was disabled or failed."""


class _NotHere(Exception):
    """Internal: a place holds no copy of the dataset (not an error)."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Train/test split as NumPy arrays.

    Images are float32 in [0, 1] with shape `(N, H, W, C)` (grayscale has
    `C=1`); labels are int64 with shape `(N,)`.

    Example:

    ```python
    ds = cactus_keras.data.Dataset(x_train, y_train, x_test, y_test, name="mine",
                                   source="in memory", num_classes=10)
    print(ds.input_shape)                           # (28, 28, 1)
    # ds = cactus_keras.data.load("fashion_mnist")  # what `load` returns
    ```
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str
    num_classes: int

    @property
    def input_shape(self):
        """Shape of one image, `(H, W, C)`, e.g. for `keras.Input`."""
        return tuple(self.x_train.shape[1:])

    @property
    def input_range(self):
        """The valid range of the inputs, which epsilon balls are cut to."""
        return (0.0, 1.0)

    def __repr__(self):
        # Arrays are far too large to print; shapes are what people check.
        return (
            f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
            f"x_train={self.x_train.shape}, x_test={self.x_test.shape}, "
            f"source={self.source!r})"
        )


def load(name_or_path, *, data_dir=None, download=True):
    """Loads a dataset by name, or from a directory / `.npz` file.

    Names are `"mnist"`, `"fashion_mnist"` (or `"fashion-mnist"`), `"cifar10"` and
    `"digits"`: scikit-learn's bundled handwritten digits (1,797 8x8 images, offline,
    pixel values 0..16 scaled to [0, 1]; `DIGITS_TEST_SAMPLES` of them, after a fixed
    shuffle, are the test split), which needs scikit-learn. Other names are looked
    up, in order, in:

    1. `data_dir` if given: the four IDX files (optionally `.gz`) or the
       CIFAR-10 python batches directly in it, then `<data_dir>/<name>.npz`.
    2. For Fashion-MNIST, the Debian package `dataset-fashion-mnist`
       (`/usr/share/datasets/fashion-mnist`).
    3. The Keras download cache (`$KERAS_HOME` or `~/.keras`, `datasets/`).
       This never downloads.
    4. TensorFlow Datasets, which may download; only if `download=True`.

    A path is loaded as-is: a directory of the four IDX files (or CIFAR-10
    python batches), or an `.npz` with `x_train, y_train, x_test, y_test` and
    optionally `num_classes` (one integer). Without it the class count is the largest
    label + 1, and a training label above every test label whose class is a stray
    (far rarer in training than the test split's classes) is refused as a wrong label.
    Known names win over a same-named directory; write `"./mnist"` to mean
    the directory.

    Example:

    ```python
    from cactus_keras.data import load

    # ds = load("fashion_mnist", download=False)   # a named dataset, from a local copy
    as_bytes = lambda images: (images[..., 0] * 255).astype("uint8")
    np.savez("my_digits.npz", x_train=as_bytes(x_train), y_train=y_train,
             x_test=as_bytes(x_test), y_test=y_test, num_classes=10)
    ds = load("my_digits.npz")  # uint8 scaled to [0, 1]; 10 classes declared
    model = keras.Sequential([keras.Input(ds.input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(ds.num_classes)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds.x_train, ds.y_train, validation_data=(ds.x_test, ds.y_test), verbose=0)
    ```

    Args:
        name_or_path: Dataset name, or path to a directory or `.npz` file.
        data_dir: Extra directory to search for a named dataset.
        download: Whether TensorFlow Datasets may be used as a last resort.

    Returns:
        A `Dataset`; its `source` says where the data came from.

    Raises:
        ValueError: unknown name that is not an existing path.
        DatasetNotFoundError: no copy found; the message lists where it
            looked and how to get the data.
        DatasetFormatError: a copy was found but is corrupt or malformed.
    """
    kind, value = _resolve(name_or_path)
    if kind == "path":
        if data_dir is not None:
            raise ValueError(
                "data_dir= only applies when loading a dataset by name; "
                f"got a path {value!r} and data_dir={data_dir!r}."
            )
        return _load_path(value)
    return _load_named(value, data_dir=data_dir, download=download)


def _resolve(name_or_path):
    if isinstance(name_or_path, str) and name_or_path.lower() in _ALIASES:
        return "name", _ALIASES[name_or_path.lower()]
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "Expected a dataset name or a path, got "
            f"{type(name_or_path).__name__}: {name_or_path!r}"
        )
    path = os.fspath(name_or_path)
    looks_like_path = (
        isinstance(name_or_path, os.PathLike)
        or os.sep in path
        or (os.altsep is not None and os.altsep in path)
        or path.endswith(".npz")
    )
    if os.path.exists(path) or looks_like_path:
        return "path", path
    names = ", ".join(repr(n) for n in _ALIASES)
    raise ValueError(
        f"Unknown dataset {name_or_path!r}. Valid names are {names}. "
        "A path to a directory holding the four IDX files "
        f"({', '.join(IDX_FILES.values())}, optionally .gz) or to an .npz "
        "file with arrays x_train, y_train, x_test, y_test also works."
    )


# ---------------------------------------------------------------------------
# Look-up


def _load_path(path):
    if os.path.isdir(path):
        try:
            raw, what = _read_dir(path)
        except _NotHere as e:
            raise DatasetNotFoundError(
                f"{path} is a directory but {e}. Expected the four IDX files "
                f"{', '.join(IDX_FILES.values())} (each optionally .gz), or "
                "the CIFAR-10 python batches "
                f"{', '.join(CIFAR_TRAIN_BATCHES)}, {CIFAR_TEST_BATCH}."
            ) from None
    elif os.path.isfile(path):
        if not (path.endswith(".npz") or zipfile.is_zipfile(path)):
            raise DatasetFormatError(
                f"{path} is a file but not an .npz archive. Pass a directory "
                "holding the four IDX files, or an .npz file with arrays "
                "x_train, y_train, x_test, y_test."
            )
        raw, what = _read_npz(path)
    else:
        raise DatasetNotFoundError(f"No such file or directory: {path}")
    name = os.path.basename(os.path.normpath(path))
    if name.endswith(".npz"):
        name = name[: -len(".npz")]
    return _build(raw, name=name, source=what, num_classes=None,
                  image_shape=None)


def _load_digits():
    """scikit-learn's digits, split by a fixed shuffle (seed 0)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFoundError(
            "The 'digits' dataset is scikit-learn's: install it with "
            "`pip install scikit-learn` (or `bash tools/setup.sh tune`)."
        ) from None
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = (digits.images / 16.0).astype(np.float32)[order]
    labels = digits.target.astype(np.int64)[order]
    n = len(labels) - DIGITS_TEST_SAMPLES
    what = "sklearn.datasets.load_digits"
    raw = {"x_train": (images[:n], what), "y_train": (labels[:n], what),
           "x_test": (images[n:], what), "y_test": (labels[n:], what)}
    return _build(raw, name="digits", source=f"{what} (scikit-learn {_sklearn_version()}, "
                  f"{n} train / {DIGITS_TEST_SAMPLES} test after a seed-0 shuffle)",
                  num_classes=NUM_CLASSES, image_shape=_IMAGE_SHAPES["digits"])


def _sklearn_version():
    import sklearn

    return sklearn.__version__


def _load_named(name, *, data_dir, download):
    if name == "digits":
        return _load_digits()
    tried = []
    for where, tag, reader in _named_places(name, data_dir):
        try:
            raw, what = reader()
        except _NotHere as e:
            tried.append(f"{where} ({tag}): {e}")
            continue
        return _build(raw, name=name, source=f"{what} ({tag})",
                      num_classes=NUM_CLASSES, image_shape=_IMAGE_SHAPES[name])

    tfds_name = _TFDS_NAMES[name]
    where = f"TensorFlow Datasets {tfds_name!r}"
    if not download:
        tried.append(f"{where}: skipped because download=False")
    else:
        try:
            raw = _read_tfds(tfds_name)
        except Exception as e:  # noqa: BLE001 - offline fails in many ways
            tried.append(f"{where}: failed ({_one_line(e)})")
        else:
            return _build(raw, name=name, source=where,
                          num_classes=NUM_CLASSES,
                          image_shape=_IMAGE_SHAPES[name])
    raise DatasetNotFoundError(_not_found_message(name, tried))


def _named_places(name, data_dir):
    """Returns `(where, tag, reader)` triples in look-up order."""
    # functools.partial, not lambdas: readers run after the loop variables
    # and locals here have been rebound.
    places = []
    if data_dir is not None:
        d = os.fspath(data_dir)
        npz = os.path.join(d, f"{name}.npz")
        places.append((d, "data_dir", functools.partial(_read_dir, d)))
        places.append(
            (npz, "data_dir", functools.partial(_read_npz_if_any, npz))
        )
    if name == "fashion_mnist":
        # Read the global at call time so monkeypatching it works.
        debian = DEBIAN_FASHION_MNIST_DIR
        places.append(
            (debian, "Debian package dataset-fashion-mnist",
             functools.partial(_read_idx_dir, debian))
        )
    cache = os.path.join(_keras_home(), "datasets")
    if name == "mnist":
        npz = os.path.join(cache, "mnist.npz")
        places.append(
            (npz, "Keras cache", functools.partial(_read_npz_if_any, npz))
        )
    elif name == "fashion_mnist":
        fm = os.path.join(cache, "fashion-mnist")
        places.append(
            (fm, "Keras cache", functools.partial(_read_idx_dir, fm))
        )
    elif name == "cifar10":
        # Keras 3 extracts into `<fname>/`; Keras 2 used the bare folder.
        for cifar in (
            os.path.join(cache, "cifar-10-batches-py-target",
                         "cifar-10-batches-py"),
            os.path.join(cache, "cifar-10-batches-py"),
        ):
            places.append(
                (cifar, "Keras cache",
                 functools.partial(_read_cifar_dir, cifar))
            )
    return places


def _keras_home():
    # Same rule as Keras itself, but read at call time, not import time.
    return os.path.expanduser(
        os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    )


def _not_found_message(name, tried):
    lines = [f"Could not find the {name!r} dataset. Looked in, in order:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(tried, 1)]
    lines.append("To get it, do one of:")
    if name == "fashion_mnist":
        lines.append(
            "  - sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu; "
            f"installs {DEBIAN_FASHION_MNIST_DIR})"
        )
    lines.append(
        "  - pass a directory holding the four IDX files ("
        + ", ".join(IDX_FILES.values())
        + ", optionally .gz)"
        + (" or the CIFAR-10 python batches" if name == "cifar10" else "")
        + ", or an .npz with x_train, y_train, x_test, y_test: "
        "load('/path/to/dir_or.npz') or load(name, data_dir=...)"
    )
    lines.append(
        "  - run once with internet access and download=True so TensorFlow "
        "Datasets downloads and caches it"
    )
    return "\n".join(lines)


def _one_line(exc):
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


# ---------------------------------------------------------------------------
# Readers. Each returns `(raw, what)`, where `raw` maps NPZ_KEYS to
# `(array, origin)` so that validation errors can name the file at fault,
# or raises `_NotHere` when the place simply has no copy.


def _read_dir(directory):
    """Reads IDX files or, failing that, CIFAR-10 batches from a directory."""
    _require_dir(directory)
    try:
        return _read_idx_dir(directory)
    except _NotHere:
        pass
    try:
        return _read_cifar_dir(directory)
    except _NotHere:
        raise _NotHere("no IDX files or CIFAR-10 batches in it") from None


def _read_idx_dir(directory):
    _require_dir(directory)
    paths = {}
    for key, base in IDX_FILES.items():
        for candidate in (base, base + ".gz"):
            if os.path.isfile(os.path.join(directory, candidate)):
                paths[key] = os.path.join(directory, candidate)
                break
    if not paths:
        raise _NotHere("no IDX files in it")
    _require_all(directory, IDX_FILES, paths, "IDX files (each may be .gz)")
    raw = {key: (load_idx(p), p) for key, p in paths.items()}
    return raw, f"IDX files in {directory}"


def _read_cifar_dir(directory):
    _require_dir(directory)
    names = CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,)
    present = {
        n: os.path.join(directory, n)
        for n in names
        if os.path.isfile(os.path.join(directory, n))
    }
    if not present:
        raise _NotHere("no CIFAR-10 batches in it")
    _require_all(directory, names, present, "CIFAR-10 python batches")
    train = [_read_cifar_batch(present[n]) for n in CIFAR_TRAIN_BATCHES]
    x_test, y_test = _read_cifar_batch(present[CIFAR_TEST_BATCH])
    origin = os.path.join(directory, "data_batch_{1..5}")
    raw = {
        "x_train": (np.concatenate([x for x, _ in train]), origin),
        "y_train": (np.concatenate([y for _, y in train]), origin),
        "x_test": (x_test, present[CIFAR_TEST_BATCH]),
        "y_test": (y_test, present[CIFAR_TEST_BATCH]),
    }
    return raw, f"CIFAR-10 python batches in {directory}"


def _read_cifar_batch(path):
    # The official CIFAR-10 release is a Python pickle; like Keras, we only
    # unpickle files from the local cache or a path the user chose.
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways
        raise DatasetFormatError(
            f"CIFAR-10 batch {path} could not be unpickled: {_one_line(e)}"
        ) from e
    if not isinstance(batch, dict):
        raise DatasetFormatError(
            f"CIFAR-10 batch {path} should hold a dict, got "
            f"{type(batch).__name__}."
        )
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetFormatError(
            f"CIFAR-10 batch {path} should have keys b'data' and b'labels'; "
            f"found {sorted(map(repr, batch))}."
        )
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"CIFAR-10 batch {path}: b'data' should have shape (N, 3072), "
            f"got {data.shape}."
        )
    # Rows are channel-major (1024 red, 1024 green, 1024 blue).
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(labels)


def _read_npz_if_any(path):
    if not os.path.exists(path):
        raise _NotHere("does not exist")
    return _read_npz(path)


def _read_npz(path):
    try:
        # allow_pickle=False: an .npz must never be able to run code.
        with np.load(path, allow_pickle=False) as f:
            found = sorted(f.files)
            missing = [k for k in NPZ_KEYS if k not in found]
            if missing:
                raise DatasetFormatError(
                    f"{path} is missing arrays {', '.join(missing)}. "
                    f"Expected keys {', '.join(NPZ_KEYS)}; found "
                    f"{', '.join(found) or 'none'}."
                )
            raw = {k: (f[k], f"{path}[{k}]") for k in NPZ_KEYS}
            if NUM_CLASSES_KEY in found:
                raw[NUM_CLASSES_KEY] = (f[NUM_CLASSES_KEY], f"{path}[{NUM_CLASSES_KEY}]")
    except DatasetFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetFormatError(
            f"{path} is not a readable .npz archive: {_one_line(e)}"
        ) from e
    return raw, str(path)


# Where TensorFlow Datasets downloads from; probed first, so that an offline machine
# fails in seconds instead of after minutes of download retries.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
PROBE_SECONDS = 5.0


def _can_reach(host):
    import socket

    try:
        socket.create_connection(host, timeout=PROBE_SECONDS).close()
        return True
    except OSError:
        return False


def _tfds_prepared(tfds_name):
    """Whether TensorFlow Datasets has the dataset on disk already (no download)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(tfds_name).is_prepared()
    except Exception:  # noqa: BLE001 - then let tfds.load say what is wrong
        return False


def _read_tfds(tfds_name):
    # Imported lazily: it pulls in TensorFlow and is only a last resort.
    from cactus_keras import extras

    extras.require("tensorflow_datasets", f"Loading {tfds_name!r} from TensorFlow Datasets")
    import tensorflow_datasets as tfds

    if not _tfds_prepared(tfds_name) and not _can_reach(DOWNLOAD_HOST):
        raise ConnectionError(
            f"no network: {DOWNLOAD_HOST[0]} cannot be reached (offline?), so "
            "nothing was downloaded"
        )
    splits = tfds.load(
        tfds_name,
        split=["train", "test"],
        batch_size=-1,
        as_supervised=True,
    )
    (x_train, y_train), (x_test, y_test) = (tfds.as_numpy(s) for s in splits)
    origin = f"TensorFlow Datasets {tfds_name!r}"
    return {
        "x_train": (x_train, f"{origin} train"),
        "y_train": (y_train, f"{origin} train"),
        "x_test": (x_test, f"{origin} test"),
        "y_test": (y_test, f"{origin} test"),
    }


def _require_dir(directory):
    if not os.path.exists(directory):
        raise _NotHere("does not exist")
    if not os.path.isdir(directory):
        raise _NotHere("not a directory")


def _require_all(directory, expected, present, what):
    # A partial copy is an error, not "absent": falling through to another
    # source would hide a broken install.
    missing = [n for n in expected if n not in present]
    if missing:
        names = [expected[n] for n in missing] if isinstance(
            expected, dict) else missing
        raise DatasetFormatError(
            f"{directory} holds only some of the {what}: missing "
            f"{', '.join(names)}."
        )


# ---------------------------------------------------------------------------
# Validation and conversion


def _build(raw, *, name, source, num_classes, image_shape):
    x_train = _as_images(*raw["x_train"])
    x_test = _as_images(*raw["x_test"])
    y_train = _as_labels(*raw["y_train"])
    y_test = _as_labels(*raw["y_test"])

    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DatasetFormatError(
                f"{split} split has {len(x)} images ({raw['x_' + split][1]}) "
                f"but {len(y)} labels ({raw['y_' + split][1]})."
            )
    if len(x_train) == 0:
        raise DatasetFormatError(f"{raw['x_train'][1]} holds no images.")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetFormatError(
            f"train images {x_train.shape[1:]} ({raw['x_train'][1]}) and "
            f"test images {x_test.shape[1:]} ({raw['x_test'][1]}) differ "
            "in shape."
        )
    if image_shape is not None and x_train.shape[1:] != image_shape:
        raise DatasetFormatError(
            f"{name} images should have shape {image_shape}, got "
            f"{x_train.shape[1:]} from {raw['x_train'][1]}; is this another "
            "dataset?"
        )

    if num_classes is None and NUM_CLASSES_KEY in raw:
        num_classes = _declared_classes(*raw[NUM_CLASSES_KEY])
    if num_classes is None:
        _check_train_labels_against_test(y_train, y_test, raw)
        top = max(int(y_train.max()), int(y_test.max()) if len(y_test) else 0)
        num_classes = max(top + 1, 2)
    _check_labels(y_train, num_classes, raw["y_train"][1])
    _check_labels(y_test, num_classes, raw["y_test"][1])

    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        name=name,
        source=source,
        num_classes=int(num_classes),
    )


def _as_images(array, origin):
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., np.newaxis]
    elif array.ndim != 4:
        raise DatasetFormatError(
            f"Images in {origin} should have rank 3 (N, H, W) or 4 "
            f"(N, H, W, C), got shape {array.shape}."
        )
    if array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        raise DatasetFormatError(
            f"Images in {origin} look channels-first {array.shape}; "
            "transpose them to (N, H, W, C)."
        )
    if array.dtype == np.uint8:
        images = array.astype(np.float32)
        images /= 255.0
        return images
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = _range(array)
        if lo < 0 or hi > 255:
            raise DatasetFormatError(
                f"Integer images in {origin} should be in 0..255, found "
                f"values in [{lo}, {hi}]."
            )
        images = array.astype(np.float32)
        images /= 255.0
        return images
    if np.issubdtype(array.dtype, np.floating):
        images = array.astype(np.float32)
        bad = ~np.isfinite(images)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad)), images.shape)
            raise DatasetFormatError(
                f"Images in {origin} hold {int(bad.sum())} NaN or infinite values (first "
                f"at image {first[0]}, pixel {tuple(int(i) for i in first[1:])}); every "
                "pixel must be a finite number in [0, 1]."
            )
        lo, hi = _range(images)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise DatasetFormatError(
                f"Float images in {origin} should already be scaled to "
                f"[0, 1], found values in [{lo}, {hi}] (use uint8 for 0..255)."
            )
        return images
    raise DatasetFormatError(
        f"Images in {origin} have dtype {array.dtype}; expected uint8 "
        "(0..255) or float (already in [0, 1])."
    )


def _as_labels(array, origin):
    array = np.asarray(array)
    # Keras' own CIFAR loader returns (N, 1) labels.
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DatasetFormatError(
            f"Labels in {origin} should have shape (N,), got {array.shape}."
        )
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating) and np.all(
        np.isfinite(array) & (array == np.round(array))
    ):
        return array.astype(np.int64)
    raise DatasetFormatError(
        f"Labels in {origin} should be integers, got dtype {array.dtype}."
    )


def _declared_classes(value, origin):
    value = np.asarray(value)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or int(value) < 2:
        raise DatasetFormatError(
            f"{origin} must be one integer >= 2 (the number of classes), got "
            f"{value.tolist()!r}."
        )
    return int(value)


# A training class the test split lacks is taken for a wrong label when it holds fewer
# than this fraction of the samples of the rarest class the test split shows.
STRAY_CLASS_FRACTION = 0.1


def _check_train_labels_against_test(y_train, y_test, raw):
    """Without a declared class count the test split shows the classes. A training
    label above every test label is refused as a wrong label when its class is a stray:
    far rarer in training than every class the test split shows
    (`STRAY_CLASS_FRACTION`), or beyond a class that no sample has. One stray 10 in a
    10-class set would otherwise build an 11-class model, silently. A small test split
    that lacks a class by chance is accepted (the class is common in training)."""
    if not len(y_test) or not len(y_train) or y_train.min() < 0:
        return  # the range check names negative labels
    test_top = int(y_test.max())
    counts = np.bincount(y_train)
    shown = counts[: test_top + 1]
    rarest = int(shown[shown > 0].min()) if np.any(shown > 0) else 0
    stray = []
    for label in range(test_top + 1, len(counts)):
        if counts[label] and (counts[label] < STRAY_CLASS_FRACTION * rarest
                              or not np.all(counts[test_top + 1: label])):
            stray.append(label)
    if stray:
        beyond = np.isin(y_train, stray)
        first = int(np.argmax(beyond))
        raise DatasetFormatError(
            f"{int(beyond.sum())} labels in {raw['y_train'][1]} (first at index {first}: "
            f"{int(y_train[first])}) name a class that {raw['y_test'][1]} does not have "
            f"(its labels are 0..{test_top}, {test_top + 1} classes) and that few "
            "training samples have. Fix those labels, or, if the class is real, declare "
            f"the class count in the .npz: np.savez(..., {NUM_CLASSES_KEY}=K)."
        )


def _check_labels(labels, num_classes, origin):
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise DatasetFormatError(
            f"Labels in {origin} must be in [0, {num_classes}); "
            f"{int(bad.sum())} are not (first at index {first}: "
            f"{int(labels[first])})."
        )


def _range(array):
    if array.size == 0:
        return 0, 0
    return array.min().item(), array.max().item()
