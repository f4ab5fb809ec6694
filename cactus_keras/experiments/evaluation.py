"""The [evaluation] table of an experiment config: the grid every network is certified
over after training, its defaults and its checks.

The grid is the uncompressed network (always), each pruning method at its own ratios,
each bit width of fake-quantized kernels and, with `tflite = true`, the exported int8
file (under each rounding model of `tflite_roundings`, and the files of the pruned
networks of `tflite_prune`), its output range chosen by its own certificate on training
images (`tflite_output_range = "certified"`, the default) or TFLite's calibrated one
("minmax"):

```toml
[evaluation]
bits = [8, 4]
tflite = true
tflite_roundings = ["nearest", "floor_ceil"]
tflite_prune = { global_l1 = [0.9], global_l2_structured = [0.5] }
tflite_output_range = "certified"
[evaluation.prune]                 # pruning method -> its ratios
global_l1 = [0.5, 0.7, 0.8, 0.9, 0.95]
local_l1 = [0.5, 0.7, 0.8, 0.9, 0.95]
global_l2_structured = [0.3, 0.5, 0.7]
```

`ratios = [...]` with `pruning_method = "..."` (default "global_l1") is the
one-method shorthand of `[evaluation.prune]`.
"""

from __future__ import annotations

import collections

from cactus_keras import validation
from cactus_keras.bounds.margins import check_bound
from cactus_keras.compression.masks import PRUNING_METHODS, check_pruning_method, check_ratio
from cactus_keras.compression.quantization import check_bits
from cactus_keras.experiments.errors import ConfigError
from cactus_keras.int8.rounding import ROUNDINGS

# Where compression costs an IBP-trained network: unstructured pruning at 0.5 and 0.7
# usually costs nothing, 0.9 and beyond does, structured pruning and 4 bits do early.
DEFAULT_PRUNING = {
    "global_l1": [0.5, 0.7, 0.8, 0.9, 0.95],
    "local_l1": [0.5, 0.7, 0.8, 0.9, 0.95],
    "global_l2_structured": [0.3, 0.5, 0.7],
}

EVALUATION_DEFAULTS = {
    "prune": DEFAULT_PRUNING,
    "bits": [8, 4],
    "tflite": True,
    # The rounding models each int8 file is certified under (cactus_keras.int8.rounding).
    "tflite_roundings": ["nearest", "floor_ceil"],
    # Pruned networks whose int8 files are certified too (pruning method -> ratios).
    "tflite_prune": {"global_l1": [0.9], "global_l2_structured": [0.5]},
    "calibration_samples": 500,
    # The output tensor's range in each exported file: "certified" (chosen by the file's
    # own certificate on the first `output_range_samples` training images,
    # `cactus_keras.export.certified_output_range`) or "minmax" (the calibration's).
    "tflite_output_range": "certified",
    "output_range_samples": 2000,
    "bound": "ibp",
    # How many of the test samples (the first N) `bound` certifies in the grid; None: all.
    # CROWN and alpha-CROWN cost far more per sample than IBP.
    "bound_samples": None,
}
OUTPUT_RANGES = ("certified", "minmax")
# The one-method shorthand of `prune`, and a key of older configs that is read and
# ignored (the headline now lists every level of the grid, not one pruning ratio).
SHORTHAND_KEYS = ("ratios", "pruning_method")
IGNORED_KEYS = ("headline_ratio",)


def row_rounding(row):
    """The rounding model of a result row: its own for int8 file rows ("floor_ceil",
    the verifier's default then, for rows written before rows recorded it), else None."""
    if row["form"] != "tflite":
        return None
    return row.get("rounding") or "floor_ceil"


class Level(collections.namedtuple("Level", "form pruning_method ratio bits rounding",
                                   defaults=(None,))):
    """One compressed level of the grid: ("prune", method, ratio, None),
    ("quantize", None, None, bits) or ("tflite", method or None, ratio or None, 8,
    rounding model): the int8 file of the network (pruned at `ratio` by `method`),
    certified under a rounding model."""

    __slots__ = ()

    @property
    def label(self):
        if self.form == "prune":
            return f"{self.pruning_method} {self.ratio:g}"
        if self.form == "quantize":
            return f"{self.bits}-bit kernels"
        pruned = "" if self.pruning_method is None else f" of {self.pruning_method} {self.ratio:g}"
        return f"int8 .tflite{pruned} ({self.rounding})"

    def matches(self, row):
        """Whether a result row (or summary entry) is at this level."""
        if row["form"] != self.form:
            return False
        if self.form == "prune":
            return (row["pruning_method"] == self.pruning_method
                    and abs(row["ratio"] - self.ratio) < 1e-9)
        if self.form == "tflite":
            ratio = row.get("ratio")
            return (row.get("pruning_method") == self.pruning_method
                    and (ratio is None) == (self.ratio is None)
                    and (ratio is None or abs(ratio - self.ratio) < 1e-9)
                    and row_rounding(row) == self.rounding)
        return row["bits"] == self.bits


def check_keys(table, allowed, where):
    """Raises `ConfigError` naming every key of `table` not in `allowed`."""
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}; expected some of "
            f"{', '.join(sorted(allowed))}."
        )


def _ratios(values, name):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"`{name}` must be a list of ratios in [0, 1), got {values!r}.")
    ratios = set()
    for value in values:
        if isinstance(value, bool):
            raise ConfigError(f"`{name}` must hold numbers in [0, 1), got {value!r}.")
        ratios.add(check_ratio(value, name))
    # Ratio 0, the uncompressed network, is evaluated once for the whole grid.
    return sorted(r for r in ratios if r > 0)


def parse_pruning(table, where):
    """The pruning part of a grid from `table`'s `prune` or its shorthand
    `ratios` (+ `pruning_method`): a dict pruning method -> sorted ratios > 0,
    or None when `table` says nothing about pruning."""
    shorthand = [k for k in SHORTHAND_KEYS if k in table]
    if "prune" in table and shorthand:
        raise ConfigError(
            f"{where}: give either `prune` (a table: pruning method -> ratios) or its "
            f"one-method shorthand {' and '.join(f'`{k}`' for k in shorthand)}, not both; "
            "move the ratios into `prune`."
        )
    try:
        if shorthand:
            method = check_pruning_method(table.get("pruning_method", "global_l1"))
            ratios = table.get("ratios", DEFAULT_PRUNING[method])
            return {method: _ratios(ratios, "ratios")}
        if "prune" not in table:
            return None
        pruning = table["prune"]
        if not isinstance(pruning, dict):
            raise ConfigError(
                f"`prune` must be a table of pruning method -> ratios, e.g. "
                f"prune = {{ global_l1 = [0.5, 0.9] }}, got {pruning!r}.")
        unknown = [m for m in pruning if m not in PRUNING_METHODS]
        if unknown:
            raise ConfigError(
                f"unknown pruning method(s) {', '.join(map(repr, unknown))} in `prune`; "
                f"expected some of {', '.join(PRUNING_METHODS)}.")
        return {m: _ratios(r, f"prune.{m}") for m, r in pruning.items()}
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_bits_list(values, name="bits"):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"`{name}` must be a list of bit widths, e.g. [8, 4], got {values!r}.")
    return sorted({check_bits(b) for b in values}, reverse=True)


def check_evaluation(evaluation, where="[evaluation]"):
    """Validates an evaluation table and returns it filled with the defaults, the
    pruning grid as `prune` (method -> ratios > 0) whichever form it was given in."""
    check_keys(evaluation, set(EVALUATION_DEFAULTS) | set(SHORTHAND_KEYS) | set(IGNORED_KEYS),
               where)
    pruning = parse_pruning(evaluation, where)
    given = {k: v for k, v in evaluation.items()
             if k in EVALUATION_DEFAULTS and k != "prune"}
    filled = {**EVALUATION_DEFAULTS, **given,
              "prune": {m: list(r) for m, r in (DEFAULT_PRUNING if pruning is None else pruning).items()}}
    try:
        filled["bits"] = check_bits_list(filled["bits"])
        check_bound(filled["bound"])
        if filled["bound_samples"] is not None:
            validation.check_positive_int(filled["bound_samples"], "bound_samples")
        validation.check_positive_int(filled["calibration_samples"], "calibration_samples")
        validation.check_positive_int(filled["output_range_samples"], "output_range_samples")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(filled["tflite"], bool):
        raise ConfigError(f"{where}: `tflite` must be true or false, got {filled['tflite']!r}.")
    if filled["tflite_output_range"] not in OUTPUT_RANGES:
        raise ConfigError(f"{where}: `tflite_output_range` must be one of "
                          f"{', '.join(OUTPUT_RANGES)}, got {filled['tflite_output_range']!r}.")
    roundings = filled["tflite_roundings"]
    if (not isinstance(roundings, (list, tuple)) or not roundings
            or any(r not in ROUNDINGS for r in roundings)):
        raise ConfigError(f"{where}: `tflite_roundings` must be a non-empty list of rounding "
                          f"models ({', '.join(ROUNDINGS)}), got {roundings!r}.")
    filled["tflite_roundings"] = list(dict.fromkeys(roundings))
    pruned = filled["tflite_prune"]
    parsed = parse_pruning({"prune": pruned}, where + " tflite_prune") if pruned else {}
    filled["tflite_prune"] = {m: list(r) for m, r in parsed.items()}
    return filled


def grid_levels(evaluation):
    """Every compressed level of a checked evaluation grid, in report order: each
    pruning method at each of its ratios, each bit width, then the int8 file."""
    levels = [Level("prune", m, r, None) for m, ratios in evaluation["prune"].items()
              for r in ratios]
    levels += [Level("quantize", None, None, b) for b in evaluation["bits"]]
    if evaluation["tflite"]:
        roundings = evaluation.get("tflite_roundings", ["floor_ceil"])
        levels += [Level("tflite", None, None, 8, r) for r in roundings]
        levels += [Level("tflite", m, ratio, 8, r)
                   for m, ratios in evaluation.get("tflite_prune", {}).items()
                   for ratio in ratios for r in roundings]
    return levels
