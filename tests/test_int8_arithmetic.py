"""The int8 arithmetic module stands alone: no TensorFlow, no schema, same codes."""

import subprocess
import sys

import pytest


def test_activation_codes_match_the_tflite_schema():
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    from cactus_keras.int8.fixed_point import ACTIVATION_NAMES

    expected = {
        v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")
    }
    assert ACTIVATION_NAMES == expected


def test_fixed_point_imports_without_tensorflow_or_the_schema():
    code = (
        "import sys\n"
        "import cactus_keras.int8.fixed_point\n"
        "bad = [m for m in ('tensorflow', 'ai_edge_litert', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
