"""cactus-keras: certified training that survives pruning and int8 quantization.

Example:

```python
import cactus_keras
result = cactus_keras.certify(net, x_test, y_test, epsilon=0.1)
print(result.certified_accuracy)
```
"""

__version__ = "0.1.0"

from cactus_keras import attacks, bounds, data  # noqa: F401
from cactus_keras.certification import CertificationResult, certify  # noqa: F401
