"""Checks of user inputs, with errors that say what was expected and how to fix it."""

from __future__ import annotations

import numpy as np


def check_epsilon(epsilon, name="epsilon"):
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {epsilon!r}.") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0 (the L-infinity radius), got {epsilon!r}."
        )
    return value


def check_epsilon_range(epsilon, input_range, name="epsilon"):
    """Refuses a radius whose ball covers the whole valid range of every input: then
    nothing can be certified, and the value is almost surely in the wrong units
    (for example 8 for 8/255 on images scaled to [0, 1])."""
    if input_range is None:
        return epsilon
    low, high = input_range
    if epsilon >= high - low:
        raise ValueError(
            f"`{name}` {epsilon:g} covers the whole data range [{low:g}, {high:g}]: every "
            "input would be in the ball, so nothing can be certified. Give the radius in "
            f"the data's units (images are scaled to [0, 1]: e.g. 0.1, or 8/255 = "
            f"{8 / 255:.4f})."
        )
    return epsilon


def check_input_range(input_range):
    if input_range is None:
        return None
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"`input_range` must be a pair (low, high) or None, got {input_range!r}."
        ) from None
    if not low < high:
        raise ValueError(f"`input_range` must have low < high, got {input_range!r}.")
    return low, high


# Inputs may exceed the data range by this fraction of its width (rounding of a
# normalization, for example) before they are refused.
RANGE_TOLERANCE = 1e-4


def check_in_range(x, input_range, name="x"):
    """Refuses inputs that are not finite or that lie outside `input_range`.

    Every entry point that certifies, attacks, trains or calibrates on inputs calls
    this before any work: the epsilon ball is cut to `input_range`, so a point outside
    it (raw 0..255 pixels with the default (0, 1), say) gets a box that does not hold
    the ball around it, and the certificate is about another point, silently. A
    tolerance of `RANGE_TOLERANCE` times the range's width allows for rounding.
    `input_range=None` (no cut) checks only that the values are finite.

    Returns `x` unchanged.

    Example:

    ```python
    validation.check_in_range(x_uint8 / 255.0, (0.0, 1.0))  # passes
    validation.check_in_range(x_uint8, (0.0, 1.0))          # ValueError: scale it
    ```
    """
    values = np.asarray(x)
    if values.size == 0:
        return x
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(f"`{name}` holds {count} NaN or infinite values; every input must "
                         "be a finite number.")
    if input_range is None:
        return x
    low, high = input_range
    lowest, highest = float(values.min()), float(values.max())
    slack = RANGE_TOLERANCE * (high - low)
    if lowest < low - slack or highest > high + slack:
        hint = (" (images in 0..255: x / 255)" if (low, high) == (0.0, 1.0) and highest > 1.5
                else "")
        raise ValueError(
            f"`{name}` holds values in [{lowest:g}, {highest:g}], outside the data range "
            f"[{low:g}, {high:g}] that the epsilon ball is cut to: scale the inputs into "
            f"it{hint}, or pass the range they are in as `input_range` (None for no cut)."
        )
    return x


def check_data(model, x, y, num_classes=None, input_range=None):
    """Returns `x` as float32 and `y` as int64 after checking them against `model`
    and, with `check_in_range`, `x` against `input_range` (None: finite only)."""
    x = np.asarray(x)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"`x` must be a numeric array, got dtype {x.dtype}.")
    x = x.astype("float32", copy=False)
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if expected is not None and (
        x.ndim != len(expected) + 1
        or any(e is not None and e != n for e, n in zip(expected, x.shape[1:]))
    ):
        raise ValueError(
            f"`x` has shape {x.shape}, but model '{model.name}' expects (batch, "
            f"{', '.join(str(e) for e in expected)}). Reshape the data (for example add a "
            "channel axis with x[..., None]) to match the model input."
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(
            "`y` looks one-hot encoded (shape "
            f"{y.shape}); pass integer labels, e.g. y.argmax(axis=1)."
        )
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype("int64")
        else:
            raise TypeError(f"`y` must hold integer class labels, got dtype {y.dtype}.")
    y = y.astype("int64", copy=False)
    if len(y) != len(x):
        raise ValueError(f"`x` has {len(x)} samples but `y` has {len(y)} labels.")
    if len(x) == 0:
        raise ValueError("`x` is empty; pass at least one sample.")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"Labels must lie in [0, {num_classes}) for a model with {num_classes} "
            f"outputs; found labels from {y.min()} to {y.max()}."
        )
    check_in_range(x, input_range)
    return x, y


def as_number(value, name, expected):
    """`value` as a float; a bool or a non-number is a TypeError naming `name` and what
    was `expected` (e.g. "a number in (0, 1]")."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be {expected}, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be {expected}, got {value!r}.") from None


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def check_single_io(network, purpose):
    """Checks that a built Keras model has one input and one output; `purpose` ends
    the messages (e.g. "exporting", "converting it for TF-MOT")."""
    inputs = getattr(network, "inputs", None)
    if not inputs:
        raise ValueError(
            f"Model '{network.name}' has no defined input shape: build it with keras.Input "
            f"(or call it once on data) before {purpose}."
        )
    if len(inputs) != 1 or len(network.outputs) != 1:
        raise ValueError(
            f"Model '{network.name}' has {len(inputs)} inputs and {len(network.outputs)} "
            f"outputs; {purpose} needs a classifier with one input and one output."
        )
    return network
