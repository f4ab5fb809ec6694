"""Rounding models: what a certificate of an int8 file assumes of the runtime's rounding.

Every int8 kernel ends in a requantization: an int32 accumulator `a` times a real
multiplier M (s_in * s_w / s_out) is rounded to an integer r. The TFLite quantization
spec promises no bit-exactness, and the runtimes round differently (they disagree by one
unit on some inputs), so a sound certificate cannot follow one runtime bit for bit.
A rounding model is the assumption a certificate (and the int8 training member, which
trains for the same certificate) makes instead: a bound on |r - a M|.

What the runtimes do (read from their sources):

* LiteRT reference and optimized kernels (`MultiplyByQuantizedMultiplier`, gemmlowp):
  a 31-bit fixed-point multiplier q * 2**(shift - 31) (relative error 2**-31), rounded
  in two steps: SaturatingRoundingDoublingHighMul (halves away from zero), then
  RoundingDivideByPOT by the right shift (halves away from zero). Error
  0.5 + 2**(shift - 1) for a right shift, 0.5 without.
* LiteRT built with TFLITE_SINGLE_ROUNDING, and ruy's kernels: one rounding of the int64
  product (halves up), error 0.5; ruy's two-step variant (halves up in both steps) has
  the two-step error above.
* XNNPACK (LiteRT's default CPU delegate): float32 requantization,
  `lrintf(float(a) * scale)` (ties to even) or the magic-bias equivalent, scale a
  float32: error 0.5 plus a relative ~2**-23 (the float conversions).
* TFLite Micro with CMSIS-NN (`arm_nn_requantize`): the same 31-bit multiplier, rounded
  in two steps (`arm_nn_doubling_high_mult_no_sat` halves up, then
  `arm_nn_divide_by_power_of_two` halves away from zero), or once with
  CMSIS_NN_USE_SINGLE_ROUNDING (halves up): errors as LiteRT's.

The models:

* "nearest" (the default): |r - a M| <= e + t, e = 0.5 + 2**(shift - 1) for a right
  shift (`fixed_point_error`), 0.5 otherwise, t = RELATIVE_TOLERANCE * |a M|. This is the
  largest error of every runtime above, whatever its tie rule, so it is sound for all of
  them, and it is the tightest model that is: a clean point stays one integer (unless
  a M lies within e - 0.5 + t of a half-integer) instead of two.
* "floor_ceil": r in [floor(a M), ceil(a M)], i.e. |r - a M| < 1: sound for any
  implementation whose total error is below one unit, also ones not listed above (e.g.
  truncating intermediate steps, such as XNNPACK's "rndnu" integer requantization), at
  the cost of one unit of width per rounding.

Example:

```python
from cactus_keras.int8 import rounding
rounding.check_rounding("nearest")                 # "nearest"
rounding.ROUNDING_MODELS["nearest"].sound_for      # the runtimes it is sound for
```
"""

from __future__ import annotations

import dataclasses

# Relative error allowed for a kernel's multiplier and float arithmetic (31-bit fixed
# point: 2**-31; XNNPACK's float32 requantization: ~2e-7; its 20-bit ADD multipliers:
# ~5e-7, which AddRule also covers with a slack of its own), relative to the magnitude
# of the real value being rounded. 2**-20 (9.5e-7): a power of two, so t = 2**-20 |v| is
# exact and a bound such as v - e - t has the same bits whether or not the compiler
# fuses the product into the subtraction (XLA on the CPU does: integer_backend).
RELATIVE_TOLERANCE = 2.0**-20


@dataclasses.dataclass(frozen=True)
class RoundingModel:
    """One rounding model: its name, the error bound it assumes, where it is sound."""

    name: str
    error_bound: str
    sound_for: tuple
    description: str


ROUNDING_MODELS = {
    "nearest": RoundingModel(
        name="nearest",
        error_bound="|r - v| <= 0.5 + 2**(shift - 1) (right shift; 0.5 otherwise) "
                    "+ 2**-20 |v|",
        sound_for=("LiteRT reference kernels (two-step fixed-point rounding)",
                   "LiteRT optimized kernels, TFLITE_SINGLE_ROUNDING and ruy",
                   "XNNPACK float32 requantization (ties to even)",
                   "TFLite Micro reference kernels and CMSIS-NN (two-step or single rounding)"),
        description="round to nearest with the largest error of the listed runtimes' "
                    "fixed-point or float32 requantization",
    ),
    "floor_ceil": RoundingModel(
        name="floor_ceil",
        error_bound="|r - v| < 1 (r in [floor(v), ceil(v)])",
        sound_for=("every runtime listed for 'nearest'",
                   "any implementation whose total requantization error is below one unit "
                   "(e.g. XNNPACK's rndnu integer requantization)"),
        description="any rounding within one unit",
    ),
}
ROUNDINGS = tuple(ROUNDING_MODELS)
# The tightest model sound for every CPU and microcontroller runtime above.
DEFAULT_ROUNDING = "nearest"


def check_rounding(rounding):
    """`rounding` if it names a rounding model, else a ValueError naming the models."""
    if rounding not in ROUNDING_MODELS:
        raise ValueError(
            f"`rounding` must be one of {', '.join(ROUNDINGS)} (the rounding model a "
            f"certificate assumes; see cactus_keras.int8.rounding), got {rounding!r}."
        )
    return rounding


def describe(rounding):
    """One line naming the model and the error it assumes (for reports)."""
    model = ROUNDING_MODELS[check_rounding(rounding)]
    return f"rounding model {model.name}: {model.error_bound}"
