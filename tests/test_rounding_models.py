"""The rounding models: each runtime's requantization stays within the error the model
assumes, the default is the tightest model sound for all of them, and certificates say
which model they assumed."""

import numpy as np
import pytest

from cactus_keras.int8 import rounding
from cactus_keras.int8.fixed_point import (
    fixed_point_error,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)


def _cmsis_nn(x, q, shift):
    """arm_nn_requantize (two steps): the doubling high multiply with halves up, then
    a rounding right shift with halves away from zero."""
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    high = ((x * (np.int64(1) << left)) * q + (np.int64(1) << 30)) >> 31
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + ((high & mask) > threshold)


def _xnnpack_fp32(x, multiplier):
    """XNNPACK's fp32 requantization: float32 product, rounded to nearest even."""
    return np.rint(x.astype(np.float32) * np.float32(multiplier)).astype(np.int64)


@pytest.mark.parametrize("multiplier", [0.9, 0.5, 0.3, 0.037, 0.0041, 2.7e-4, 1.3])
def test_every_runtime_rounds_within_the_nearest_models_error(multiplier):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-200000, 200000, 20000),
                        np.arange(-3000, 3000)]).astype(np.int64)
    q, shift = quantize_multiplier(multiplier)
    real = x * float(multiplier)
    bound = fixed_point_error(shift) + rounding.RELATIVE_TOLERANCE * np.abs(real)
    results = {
        "reference": multiply_by_quantized_multiplier(x, q, shift, "double"),
        "single": multiply_by_quantized_multiplier(x, q, shift, "single"),
        "ruy": multiply_by_quantized_multiplier(x, q, shift, "double_up"),
        "cmsis_nn": _cmsis_nn(x, q, shift),
        "xnnpack": _xnnpack_fp32(x, multiplier),
    }
    for name, r in results.items():
        error = np.abs(r - real)
        assert (error <= bound).all(), (name, float(error.max()))
        assert (error < 1).all(), name  # floor_ceil holds too
    # The runtimes disagree (by one unit) somewhere: no model may follow one of them.
    if shift < 0 and multiplier < 0.5:
        assert any((results["reference"] != r).any() for r in results.values())


def test_nearest_is_tight_the_two_step_error_is_reached():
    # With a right shift the two-step kernels reach errors above 0.5: the model's bound
    # 0.5 + 2**(shift - 1) cannot be 0.5.
    x = np.arange(-2**20, 2**20, dtype=np.int64)
    q, shift = quantize_multiplier(2.0**-10 * 0.77)
    r = multiply_by_quantized_multiplier(x, q, shift, "double")
    assert np.abs(r - x * 2.0**-10 * 0.77).max() > 0.5


def test_the_default_and_the_models_are_documented():
    assert rounding.DEFAULT_ROUNDING == "nearest"
    assert rounding.ROUNDINGS == ("nearest", "floor_ceil")
    for model in rounding.ROUNDING_MODELS.values():
        assert model.error_bound and model.sound_for
    runtimes = " ".join(rounding.ROUNDING_MODELS["nearest"].sound_for)
    for runtime in ("LiteRT reference", "ruy", "XNNPACK", "CMSIS-NN"):
        assert runtime in runtimes
    assert "nearest" in rounding.describe("nearest")
    with pytest.raises(ValueError, match="`rounding` must be one of nearest, floor_ceil"):
        rounding.check_rounding("up")


def test_the_verifier_and_the_cli_default_to_the_module_default():
    import inspect

    from cactus_keras import cli
    from cactus_keras.export import verify_tflite
    from cactus_keras.export.integer_intervals import IntervalArithmetic

    assert inspect.signature(verify_tflite).parameters["rounding"].default == "nearest"
    assert IntervalArithmetic().rounding == rounding.DEFAULT_ROUNDING
    parser = cli.build_parser()
    args = parser.parse_args(["verify-tflite", "--model", "m.tflite", "--dataset", "mnist", "--epsilon", "0.1"])
    assert args.rounding == rounding.DEFAULT_ROUNDING


def test_rounding_imports_without_tensorflow_or_keras():
    import subprocess
    import sys

    code = ("import sys\nimport cactus_keras.int8.rounding\n"
            "bad = [m for m in ('tensorflow', 'ai_edge_litert', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
