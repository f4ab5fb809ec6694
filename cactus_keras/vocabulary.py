"""The package's words for compression, defined once (as Keras defines its quantization
modes): the API, the command line, TOML configs, result rows, metric keys and reports
all use these, and README's glossary lists them.

Two families are kept apart on purpose:

* What trains: the *members* of the compression set, by `kind` (`MEMBER_KINDS`), each
  named after what it does, e.g. `awp_quantization` (quantization trained through
  adversarial weight perturbation).
* What is evaluated: the compressed *forms* of a trained network (`EVALUATED_FORMS`),
  in the evaluation grid (result rows' `form`), tuning targets (`prune:0.7`,
  `quantize:8`) and their metric keys (`prune70`, `quantize8`). `quantize` is
  weight-only fake quantization of the float network; `tflite` is the int8 `.tflite`
  file, certified on its integers: two distinct forms.

And their settings:

* `ratio`: the fraction of weights (or, structured, of output units) pruning removes,
  in [0, 1); a training member samples it from a range `(low, high)`.
* `pruning_method`: one of `PRUNING_METHODS`.
* `bits`: the bit width of symmetric quantization, 2 to 8.

Example:

```python
from cactus_keras import vocabulary
assert "awp_quantization" in vocabulary.MEMBER_KINDS
assert vocabulary.EVALUATED_FORMS == ("prune", "quantize", "tflite")
```
"""

# Members of the compression set (what trains), by the `kind` of their tables.
PRUNING = "pruning"
FIXED_MASK_PRUNING = "fixed_mask_pruning"
AWP_QUANTIZATION = "awp_quantization"
STRAIGHT_THROUGH_QUANTIZATION = "straight_through_quantization"
INT8_FILE = "int8_file"  # trained through the int8 .tflite file's integer arithmetic
MEMBER_KINDS = (PRUNING, FIXED_MASK_PRUNING, AWP_QUANTIZATION, STRAIGHT_THROUGH_QUANTIZATION,
                INT8_FILE)

# TrainConfig's short forms of a compression set (`compression = "pruning"`): none, one
# member kind, or both joined by "+".
TRAIN_COMPRESSIONS = ("none", PRUNING, AWP_QUANTIZATION, f"{PRUNING}+{AWP_QUANTIZATION}")

# How pruning ranks weights.
PRUNING_METHODS = ("global_l1", "local_l1", "global_l2_structured")

# Compressed forms of a trained network (what is evaluated).
PRUNE = "prune"          # magnitude pruning at a `ratio` with a `pruning_method`
QUANTIZE = "quantize"    # weight-only fake quantization to `bits`, in float
TFLITE = "tflite"        # the int8 .tflite file, run and certified on its integers
EVALUATED_FORMS = (PRUNE, QUANTIZE, TFLITE)
