"""A seeded fuzz test of `verify_tflite` on mutated int8 files: every file ends in a
result or a clear error of the project's own type; none crashes, hangs or raises a raw
exception. Each file runs in its own forked child, so that a crash (a signal) or a hang
is caught and counted rather than taking the test run down.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = 200
TIMEOUT = 60.0

# The valid file is made in a fresh process: forking after the TFLite converter has
# run its threads in this one would make the children crash for that reason alone.
MAKE = """
import sys, numpy as np, keras
import cactus_keras.export as export
keras.utils.set_random_seed(0)
net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                        keras.layers.Dense(3)])
x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
export.to_tflite(net, sys.argv[1], x)
"""


def _data():
    rng = np.random.default_rng(1)
    return rng.random((8, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 8)


def _outcome(path, x, y):
    """In the child: the outcome of one file, as text."""
    from cactus_keras import export

    try:
        export.verify_tflite(path, x, y, 0.01)
        return "result"
    except (export.TFLiteFormatError, export.UnsupportedOperatorError) as error:
        return f"error:{type(error).__name__}: {error}"
    except ValueError as error:
        # The file asks for inputs of another shape: the documented data error.
        if str(error).startswith("`x` has shape"):
            return f"error:shape: {error}"
        return f"raw:{type(error).__name__}: {error}"
    except BaseException as error:  # noqa: BLE001 - what the test is looking for
        return f"raw:{type(error).__name__}: {error}"


def _run_in_child(path, x, y):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit code
        os.close(read)
        try:
            os.write(write, _outcome(path, x, y).encode("utf-8", "replace")[:4000])
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return "hang"
        time.sleep(0.005)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    if os.WIFSIGNALED(status):
        return f"crash: signal {os.WTERMSIG(status)}"
    return b"".join(chunks).decode() or "crash: no outcome"


def test_mutated_int8_files_end_in_a_result_or_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow")
    from cactus_keras import export

    valid = tmp_path / "valid.tflite"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", MAKE, str(valid)], check=True, env=env,
                   capture_output=True, timeout=600)
    x, y = _data()
    # The unmutated file verifies; running it here also loads the interpreter once,
    # before any fork.
    assert export.verify_tflite(valid, x, y, 0.01).simulation_agreement == 1.0
    original = valid.read_bytes()
    rng = np.random.default_rng(15)
    outcomes = {}
    for i in range(FILES):
        mutated = bytearray(original)
        for position in rng.integers(0, len(mutated), rng.integers(1, 20)):
            mutated[position] = rng.integers(0, 256)
        path = tmp_path / f"mutated{i}.tflite"
        path.write_bytes(bytes(mutated))
        outcomes[i] = _run_in_child(str(path), x, y)
        path.unlink()
    bad = {i: o for i, o in outcomes.items() if not (o == "result" or o.startswith("error:"))}
    assert not bad, bad
    kinds = [o.split(":")[0] for o in outcomes.values()]
    # Both ends are exercised: some files still verify, most are refused.
    assert kinds.count("result") >= 5 and kinds.count("error") >= 100, outcomes
