"""The example scripts under examples/ run end to end on a few hundred images.

They are the code the documentation site includes (docs/examples.md), so a change that
breaks one fails here. One module-scoped chain: train, then certify, export and verify
the model it saved.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "300", "--epsilon", "0.01"]


def run_example(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("tensorflow")
    path = str(tmp_path_factory.mktemp("example") / "model.keras")
    out = run_example("train_cactus.py", *TINY, "--epochs", "2", "--output", path)
    assert os.path.exists(path) and "certified accuracy" in out
    return path


def test_certify_saved_model(trained):
    out = run_example("certify_saved_model.py", *TINY, "--model", trained)
    assert "ibp" in out and "broken by PGD: 0" in out


def test_export_and_verify_int8(trained, tmp_path):
    path = str(tmp_path / "model_int8.tflite")
    out = run_example("export_and_verify_int8.py", *TINY, "--model", trained, "--output", path)
    assert os.path.getsize(path) > 0 and "int8 file certified" in out


def test_custom_member():
    out = run_example("custom_member.py", *TINY, "--epochs", "1")
    assert "certified" in out


def test_tune_lambda(tmp_path):
    pytest.importorskip("keras_tuner")
    out = run_example("tune_lambda.py", *TINY, "--epochs", "1", "--trials", "1",
                      "--directory", str(tmp_path / "tuning"))
    assert "best lambda" in out and os.path.exists(tmp_path / "tuning" / "tuning_summary.json")
