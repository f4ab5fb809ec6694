"""int8 deployment: TFLite export and certificates of the int8 model as it runs.

Example:

```python
import cactus_keras

cactus_keras.export.to_tflite(model, "model.tflite", representative_data=x_train[:500])
result = cactus_keras.export.verify_tflite("model.tflite", x_test, y_test, epsilon=0.01)
print(result.interpreter, result.clean_accuracy, result.certified_accuracy,
      result.simulation_agreement)
```
"""

from cactus_keras.export.integer_bounds import certified_from_bounds
from cactus_keras.export.integer_bounds import propagate
from cactus_keras.export.integer_bounds import requantize
from cactus_keras.export.model_file import IntegerGraph
from cactus_keras.export.model_file import TFLiteFormatError
from cactus_keras.export.model_file import UnsupportedOperatorError
from cactus_keras.export.model_file import load_integer_graph
from cactus_keras.export.tflite import to_tflite
from cactus_keras.export.verify import TFLiteVerificationResult
from cactus_keras.export.verify import input_interval
from cactus_keras.export.verify import make_interpreter
from cactus_keras.export.verify import quantize_input
from cactus_keras.export.verify import verify_tflite

__all__ = [
    "IntegerGraph",
    "TFLiteFormatError",
    "TFLiteVerificationResult",
    "UnsupportedOperatorError",
    "certified_from_bounds",
    "input_interval",
    "load_integer_graph",
    "make_interpreter",
    "propagate",
    "quantize_input",
    "requantize",
    "to_tflite",
    "verify_tflite",
]
