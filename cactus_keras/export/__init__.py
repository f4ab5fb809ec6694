"""int8 deployment: TFLite export and certificates of the int8 model as it runs.

Example:

```python
import cactus_keras

cactus_keras.export.to_tflite(model, "model.tflite", representative_data=x_train[:500])
result = cactus_keras.export.verify_tflite("model.tflite", x_test, y_test, epsilon=0.01)
print(result.interpreter, result.clean_accuracy, result.certified_accuracy,
      result.simulation_agreement)
```

The package exports the entry points; the machinery lives in modules named for their
concern: `model_file` (the `.tflite` reader), `fixed_point` (TFLite's fixed-point
arithmetic), `integer_linear` (exact integer accumulators), `integer_backend` (their interval
step on TensorFlow's CPU kernels), `integer_ops` (one rule per
op), `integer_intervals` (sound interval rounding), `integer_simulation` (the bit-exact
kernels), `integer_propagation` (running the rules over a graph), `integer_margins`
(certificates from the bounds), `output_range` (the output range chosen for the
certificate), `tflite` (export) and `verify` (`verify_tflite`).
"""

from cactus_keras.export.model_file import IntegerGraph
from cactus_keras.export.model_file import TFLiteFormatError
from cactus_keras.export.model_file import UnsupportedOperatorError
from cactus_keras.export.model_file import load_integer_graph
from cactus_keras.export.output_range import certified_output_range
from cactus_keras.export.tflite import to_tflite
from cactus_keras.export.verify import TFLiteVerificationResult
from cactus_keras.export.verify import verify_tflite

__all__ = [
    "IntegerGraph",
    "TFLiteFormatError",
    "TFLiteVerificationResult",
    "UnsupportedOperatorError",
    "certified_output_range",
    "load_integer_graph",
    "to_tflite",
    "verify_tflite",
]
