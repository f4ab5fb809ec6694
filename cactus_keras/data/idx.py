"""Reader for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code and the
number of dimensions), one big-endian uint32 per dimension, then the raw
big-endian values in row-major order.
"""

import gzip
import os
import zlib

import numpy as np

# IDX dtype codes -> big-endian NumPy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class DatasetFormatError(ValueError):
    """A dataset file exists but its content is not what was expected."""


def load_idx(path):
    """Parses one IDX file, gzip-compressed or not.

    Compression is detected from the content rather than the file name, so
    a decompressed `train-images-idx3-ubyte.gz` still loads.

    Example:

    ```python
    import gzip, struct
    from cactus_keras.data import load_idx

    # An IDX file of four uint8 labels: magic (0, 0, 0x08 = uint8, 1 dimension), the size.
    labels = np.array([7, 2, 1, 0], "uint8")
    with gzip.open("labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 0x08, 1, len(labels)) + labels.tobytes())
    assert (load_idx("labels-idx1-ubyte.gz") == labels).all()
    # load_idx("t10k-labels-idx1-ubyte.gz") reads Fashion-MNIST's file the same way.
    ```

    Args:
        path: Path to the file.

    Returns:
        A NumPy array with the dtype and shape given by the file header, in
        native byte order.

    Raises:
        DatasetFormatError: the file is not valid IDX or the gzip stream is
            corrupt.
    """
    path = os.fspath(path)
    data = _read_maybe_gzipped(path)
    dtype, shape, offset = _parse_header(path, data)

    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - offset
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"IDX file {path} is {what}: header says shape {shape} of "
            f"{dtype.name} ({expected} data bytes) but the file holds "
            f"{actual} data bytes."
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize,
                          offset=offset).reshape(shape)
    # astype copies into native byte order, which also makes the result
    # writable (np.frombuffer over bytes is read-only).
    return array.astype(dtype.newbyteorder("="))


def _read_maybe_gzipped(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            # BadGzipFile is an OSError; a cut-off stream gives EOFError.
            raise DatasetFormatError(
                f"Corrupt gzip file {path}: {e or type(e).__name__}. "
                "Delete it and fetch it again."
            ) from e
    if path.endswith(".gz"):
        raise DatasetFormatError(
            f"Corrupt gzip file {path}: it is named .gz but does not start "
            "with the gzip magic bytes 1f 8b. Delete it and fetch it again."
        )
    return data


def _parse_header(path, data):
    if len(data) < 4:
        raise DatasetFormatError(
            f"IDX file {path} is truncated: {len(data)} bytes, too short for "
            "the 4-byte magic number."
        )
    zero, code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise DatasetFormatError(
            f"IDX file {path} has a bad magic number 0x{data[:4].hex()}: "
            "an IDX file starts with two zero bytes, a dtype code and the "
            "number of dimensions (e.g. 0x00000803 for uint8 images)."
        )
    if code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise DatasetFormatError(
            f"IDX file {path} has unknown dtype code 0x{code:02x} in its "
            f"magic number; valid codes are {valid}."
        )
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DatasetFormatError(
            f"IDX file {path} is truncated: header declares {ndim} "
            f"dimensions ({offset} header bytes) but the file has only "
            f"{len(data)} bytes."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    return _IDX_DTYPES[code], shape, offset
