"""The [evaluation] table of an experiment config: the grid every network is certified
over after training, its defaults and its checks."""

from __future__ import annotations

from cactus_keras import validation
from cactus_keras.bounds.margins import check_bound
from cactus_keras.compression.masks import check_pruning_method, check_ratio
from cactus_keras.compression.quantization import check_bits
from cactus_keras.experiments.errors import ConfigError

EVALUATION_DEFAULTS = {
    "prune_ratios": [0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95],
    "pruning_method": "global_l1",
    "bits": [8, 4],
    "tflite": True,
    "calibration_samples": 500,
    "bound": "ibp",
    # How many of the test samples (the first N) `bound` certifies in the grid; None: all.
    # CROWN and alpha-CROWN cost far more per sample than IBP.
    "bound_samples": None,
    # The pruning ratio the report's headline compares methods at.
    "headline_ratio": 0.7,
}


def check_keys(table, allowed, where):
    """Raises `ConfigError` naming every key of `table` not in `allowed`."""
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)}; expected some of "
            f"{', '.join(sorted(allowed))}."
        )


def check_evaluation(evaluation, where="[evaluation]"):
    """Validates an evaluation table (filled with defaults) and returns it."""
    check_keys(evaluation, EVALUATION_DEFAULTS, where)
    filled = {**EVALUATION_DEFAULTS, **evaluation}
    try:
        filled["prune_ratios"] = [check_ratio(r, "prune_ratios") for r in filled["prune_ratios"]]
        filled["headline_ratio"] = check_ratio(filled["headline_ratio"], "headline_ratio")
        check_pruning_method(filled["pruning_method"])
        filled["bits"] = [check_bits(b) for b in filled["bits"]]
        check_bound(filled["bound"])
        if filled["bound_samples"] is not None:
            validation.check_positive_int(filled["bound_samples"], "bound_samples")
        validation.check_positive_int(filled["calibration_samples"], "calibration_samples")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(filled["tflite"], bool):
        raise ConfigError(f"{where}: `tflite` must be true or false, got {filled['tflite']!r}.")
    return filled
