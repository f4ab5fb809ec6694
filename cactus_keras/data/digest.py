"""A digest of a data set's arrays: what a resumed run compares, not the path."""

from __future__ import annotations

import hashlib


def data_digest(data):
    """A digest (BLAKE2b, hex) of a `Dataset`'s four arrays: shapes, types, values.

    The same name or path may hold other data on another machine or day, and the same
    data may be given by another path; runs compare this, never the path.

    ```python
    digest = data_digest(cactus_keras.data.load("mnist"))
    ```
    """
    digest = hashlib.blake2b(digest_size=16)
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B") if array.flags.c_contiguous
                      else array.tobytes())
    return digest.hexdigest()
