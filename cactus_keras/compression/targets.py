"""Compression targets: the compressions a network must stay certified under, parsed
from strings like "prune:0.7,quantize:8".

Tuning's objectives and the certificate-constrained compression search both read them,
so they live here, below both.
"""

from __future__ import annotations

import dataclasses

from cactus_keras import vocabulary
from cactus_keras.compression.masks import PRUNING_METHODS, check_pruning_method, check_ratio
from cactus_keras.compression.quantization import check_bits


@dataclasses.dataclass(frozen=True)
class CompressionTarget:
    """A compression the tuned network must stay certified under.

    `form` is one of the evaluated forms (`cactus_keras.vocabulary.EVALUATED_FORMS`):
    "prune" (with `ratio` and `pruning_method`) or "quantize" (with `bits`: weight-only
    fake quantization, kernels symmetric per output channel as int8 TFLite kernels; not
    the int8 `.tflite` file, which `verify_tflite` certifies).

    Example:

    ```python
    from cactus_keras.tuning import CompressionTarget, parse_targets

    target = CompressionTarget("prune", ratio=0.7, pruning_method="local_l1")
    targets = parse_targets([target, "quantize:8"])     # objects and strings mix
    print([t.key for t in targets])                     # ['prune70_local_l1', 'quantize8']
    ```
    """

    form: str
    ratio: float | None = None
    pruning_method: str = "global_l1"
    bits: int | None = None

    @property
    def key(self):
        """The suffix of this target's metrics, e.g. `prune70` or `quantize8`."""
        if self.form == vocabulary.QUANTIZE:
            return f"quantize{self.bits}"
        key = f"prune{round(self.ratio * 100):02d}"
        return key if self.pruning_method == "global_l1" else f"{key}_{self.pruning_method}"

    @property
    def spec(self):
        """The string form `parse_targets` reads (`prune:0.7`, `quantize:8`)."""
        if self.form == vocabulary.QUANTIZE:
            return f"quantize:{self.bits}"
        spec = f"prune:{self.ratio:g}"
        return spec if self.pruning_method == "global_l1" else f"{spec}:{self.pruning_method}"


TARGET_FORMS = ("prune:RATIO, prune:RATIO:PRUNING_METHOD or quantize:BITS "
                "(e.g. prune:0.7, quantize:8)")


def _parse_target(text):
    text = text.strip().lower()
    parts = text.split(":")
    if parts[0] in (vocabulary.PRUNING, vocabulary.AWP_QUANTIZATION, "quantization"):
        # Member kinds name what trains; a target is what is evaluated.
        form = vocabulary.PRUNE if parts[0] == vocabulary.PRUNING else vocabulary.QUANTIZE
        raise ValueError(
            f"Compression target {text!r}: {parts[0]!r} names what trains (a member of the "
            f"compression set); a target names what is evaluated: write {form}:... (e.g. "
            "prune:0.7, quantize:8)."
        )
    if parts[0] == vocabulary.QUANTIZE and len(parts) == 2:
        try:
            bits = int(parts[1])
        except ValueError:
            raise ValueError(f"Compression target {text!r}: the bit width must be an integer.") from None
        return CompressionTarget(vocabulary.QUANTIZE, bits=check_bits(bits))
    if text in ("tflite", "int8") or text.startswith("int"):
        raise ValueError(
            f"Compression target {text!r}: tuning certifies weight-only fake quantization, "
            "written quantize:BITS (e.g. quantize:8); the int8 .tflite file is certified "
            "after export with `cactus-keras verify-tflite`."
        )
    if parts[0] == vocabulary.PRUNE and len(parts) in (2, 3):
        try:
            ratio = float(parts[1])
        except ValueError:
            raise ValueError(f"Compression target {text!r}: the ratio must be a number.") from None
        ratio = check_ratio(ratio, "pruning ratio")
        if ratio == 0:
            raise ValueError(
                f"Compression target {text!r}: ratio 0 is the full network, which is always "
                "evaluated; give a ratio in (0, 1)."
            )
        method = check_pruning_method(parts[2]) if len(parts) == 3 else "global_l1"
        return CompressionTarget(vocabulary.PRUNE, ratio=ratio, pruning_method=method)
    raise ValueError(
        f"Unknown compression target {text!r}; expected {TARGET_FORMS}. Pruning methods: "
        f"{', '.join(PRUNING_METHODS)}."
    )


def parse_targets(targets):
    """`CompressionTarget`s from strings like "prune:0.7,quantize:8", a list of such strings
    or of `CompressionTarget`s. Empty or "none" means no target.

    Example:

    ```python
    targets = cactus_keras.tuning.parse_targets("prune:0.7,quantize:8")
    assert [t.form for t in targets] == ["prune", "quantize"]
    assert targets[0].ratio == 0.7 and targets[1].bits == 8
    ```
    """
    if targets is None:
        return []
    if isinstance(targets, (str, CompressionTarget)):
        targets = [targets]
    parsed = []
    for target in targets:
        if isinstance(target, CompressionTarget):
            parsed.append(target)
            continue
        if not isinstance(target, str):
            raise TypeError(
                f"Compression targets must be strings ({TARGET_FORMS}), got {target!r}."
            )
        for item in target.split(","):
            if item.strip() and item.strip().lower() != "none":
                parsed.append(_parse_target(item))
    keys = [t.key for t in parsed]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Compression targets are repeated: {', '.join(keys)}.")
    return parsed
