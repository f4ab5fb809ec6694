"""The JAX backend without TensorFlow: the commands of the core, and a fresh install.

Both run in subprocesses: KERAS_BACKEND must be set before Keras starts.
"""

import importlib.util
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="JAX is not installed (pip install 'cactus-keras[test]')")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


@pytest.mark.slow
@needs_jax
def test_train_evaluate_certify_and_experiment_on_jax_without_tensorflow(tmp_path):
    # TensorFlow, TF-MOT, TFDS, LiteRT and KerasTuner are made unimportable in there.
    script = os.path.join(ROOT, "tests", "jax_without_tensorflow.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True,
                          text=True, timeout=900, env=_env(PYTHONPATH=ROOT))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), \
        (proc.stdout + proc.stderr)[-4000:]
    for path in ("run/model.keras", "evaluate.json", "certify.json",
                 "experiment/report.md", "experiment/results.json"):
        assert (tmp_path / path).exists(), path


# ----- a fresh install without TensorFlow -----

def _index_url():
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")


def _index_reachable():
    try:
        with urllib.request.urlopen(_index_url().rstrip("/") + "/keras/", timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory):
    """A virtual environment with the package's core dependencies and JAX, no TensorFlow
    (built once per test session, under the session's tmp dir)."""
    if not _index_reachable():
        pytest.skip(f"the package index {_index_url()} is unreachable: cannot install a "
                    "fresh environment")
    venv = tmp_path_factory.mktemp("core_venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    # The package itself, built from this checkout with its core dependencies; the JAX
    # extra for a backend.
    proc = subprocess.run([python, "-m", "pip", "install", "-q", f"{ROOT}[jax]"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return venv


@pytest.mark.slow
def test_fresh_install_without_tensorflow_trains_and_certifies_on_jax(core_venv, tmp_path):
    python = str(core_venv / "bin" / "python")
    command = str(core_venv / "bin" / "cactus-keras")
    # Outside the checkout, so that the installed package is the one imported.
    env = _env()
    env.pop("PYTHONPATH", None)
    absent = subprocess.run([python, "-c", "import tensorflow"], capture_output=True,
                            text=True, cwd=tmp_path, env=env)
    assert absent.returncode != 0 and "No module named 'tensorflow'" in absent.stderr
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 10, 10), dtype=np.uint8)
    y = rng.integers(0, 3, 64)
    np.savez(tmp_path / "tiny.npz", x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    common = ["--dataset", "tiny.npz", "--epsilon", "0.02"]
    train = subprocess.run(
        [command, "train", *common, "--arch", "mlp", "--epochs", "2", "--batch-size", "32",
         "--compression", "pruning+awp_quantization", "--validation-samples", "16", "--output", "run"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
    certify = subprocess.run(
        [command, "certify", "--model", "run/network.keras", *common, "--pgd-steps", "3",
         "--json", "certify.json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert certify.returncode == 0, (certify.stdout + certify.stderr)[-4000:]
    assert "certified accuracy" in certify.stdout
    # A TF-only command says which extra it needs, in one line.
    export = subprocess.run(
        [command, "export", "--model", "run/network.keras", "--dataset", "tiny.npz",
         "--output", "m.tflite"], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=600)
    assert export.returncode == 2, (export.stdout + export.stderr)[-4000:]
    assert "pip install 'cactus-keras[tensorflow]'" in export.stderr
    assert "Traceback" not in export.stderr
    versions = subprocess.run([python, "-c", "import keras, jax; print(keras.backend.backend())"],
                              capture_output=True, text=True, cwd=tmp_path, env=env)
    assert versions.stdout.strip() == "jax"
