"""cactus-keras: certified training that survives pruning and int8 quantization.

Example:

```python
import cactus_keras

net = cactus_keras.models.cnn3(input_shape=(28, 28, 1), num_classes=10)
model = cactus_keras.CactusModel(net, epsilon=0.1,
                                 compression=[cactus_keras.Pruning(ratio=(0.25, 0.75))])
model.compile(optimizer="adam")
model.fit(x_train, y_train, epochs=10, callbacks=[cactus_keras.EpsilonRamp(5, start_epoch=1)])
result = cactus_keras.certify(model.network, x_test, y_test, epsilon=0.1)
print(result.certified_accuracy)
```
"""

__version__ = "0.1.0"

# Importing the package registers CactusModel and Pruning with Keras, so that
# `keras.saving.load_model` can rebuild saved models after `import cactus_keras`.
from cactus_keras import attacks, bounds, compression, data, models, training  # noqa: F401
from cactus_keras.certification import (  # noqa: F401
    CertificationResult,
    CompressionTable,
    certify,
    evaluate_compressed,
)
from cactus_keras.compression import (  # noqa: F401
    CompressionMember,
    FixedMaskPruning,
    Pruning,
    Quantization,
    StraightThroughQuantization,
    register_member,
)
from cactus_keras.training import (  # noqa: F401
    CactusModel,
    EpsilonRamp,
    StandardWeightRamp,
)


def __getattr__(name):
    # `export` and `experiments` need the TFLite runtime (TensorFlow side); importing
    # them on first use keeps `import cactus_keras` working on a JAX-only machine.
    if name in ("export", "interop", "experiments", "tuning"):
        import importlib

        return importlib.import_module(f"cactus_keras.{name}")
    raise AttributeError(f"module 'cactus_keras' has no attribute {name!r}")
