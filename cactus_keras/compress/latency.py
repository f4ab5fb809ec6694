"""File size and LiteRT interpreter latency of a `.tflite` file."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from cactus_keras.export.verify import make_interpreter


def file_size(path):
    """Bytes of the file at `path`.

    ```python
    from cactus_keras.compress import file_size

    (tmp_path / "m.bin").write_bytes(b"0" * 10)
    assert file_size(tmp_path / "m.bin") == 10
    ```
    """
    return os.path.getsize(os.fspath(path))


def measure_latency(path, runs=500, warmup=50, num_threads=1, seed=0):
    """Latency of one batch-1 inference of the `.tflite` file at `path`, in the
    interpreter with its default kernels (XNNPACK where it applies).

    The input is one random sample of the file's input type; the interpreter is warmed
    with `warmup` calls, then each of `runs` calls of `invoke()` is timed alone.
    Returns a dict: median and 10th/90th percentile milliseconds, runs, threads and the
    interpreter's name. One thread by default: the figure of a small device core,
    and one that other processes on the machine disturb least.

    Example:

    ```python
    from cactus_keras.compress import measure_latency

    path = cactus_keras.export.to_tflite(net, str(tmp_path / "net.int8.tflite"),
                                         representative_data=x_train[:32])
    print(measure_latency(path, runs=20, warmup=5)["median_ms"])
    ```
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"`runs` must be >= 1 and `warmup` >= 0, got runs={runs}, warmup={warmup}.")
    interpreter, name = make_interpreter(path, "default", num_threads=num_threads)
    detail = interpreter.get_input_details()[0]
    shape = [1, *detail["shape"][1:]]
    rng = np.random.default_rng(seed)
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        sample = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    else:
        sample = rng.uniform(0, 1, shape).astype(dtype)
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], sample)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p10_ms": times[int(0.1 * (len(times) - 1))],
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "runs": runs,
        "warmup": warmup,
        "num_threads": num_threads,
        "interpreter": name,
    }
