"""What an XLA compilation of the verifier's rounding step costs against running that
step op by op: the figures behind `integer_backend.FUSE_ELEMENTS`.

For cnn3-sized outputs of a batch (13x13 positions, a few channel counts, full and
tail batches of 256 and 232 images), times the "nearest" rounding step (`_Steps`)
three ways: its first compiled call (compilation included), a second compiled call, and
op by op (warm).

    PYTHONPATH=. python tools/bench_compile_cost.py
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cactus_keras.export import integer_backend  # noqa: E402


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args).numpy()
    return 1000 * (time.perf_counter() - start)


def main():
    integer_backend._tensorflow()
    print("channels  rows   values  first compiled ms  compiled again ms  op by op ms")
    for channels in (16, 12, 8, 6):
        for rows in (256 * 169, 232 * 169):
            v = tf.random.uniform((2, rows, channels), -100, 100, tf.float64)
            args = (v, tf.constant(np.full(channels, 0.5)), tf.constant(0.0, tf.float64),
                    tf.constant(-128.0, tf.float64), tf.constant(127.0, tf.float64))
            integer_backend.FUSE_ELEMENTS = 0
            compiled = integer_backend._Steps(tf)
            first = _timed(compiled.nearest_codes, *args)
            again = _timed(compiled.nearest_codes, *args)
            integer_backend.FUSE_ELEMENTS = None
            eager = integer_backend._Steps(tf)
            eager.nearest_codes(*args)  # warm
            plain = _timed(eager.nearest_codes, *args)
            print(f"{channels:>8} {rows:>5} {2 * rows * channels:>8} {first:>18.1f} "
                  f"{again:>18.1f} {plain:>12.1f}")


if __name__ == "__main__":
    main()
