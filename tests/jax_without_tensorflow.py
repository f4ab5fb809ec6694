"""`cactus-keras train`, `evaluate`, `certify` and an `experiment` with no TF-only step,
on the JAX backend, with TensorFlow and its packages made unimportable.

Run by tests/test_jax.py in a subprocess (KERAS_BACKEND=jax must be set before Keras
starts); `python tests/jax_without_tensorflow.py WORKDIR`.
"""

import importlib.abc
import os
import sys

# As on a machine without the `tensorflow` and `tune` extras.
BLOCKED = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "tensorflow_datasets",
           "ai_edge_litert", "tensorboard", "keras_tuner")


class _Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


CONFIG = """
[experiment]
dataset = "{data}"
epsilon = 0.02
test_samples = 16

[training]
arch = "mlp"
epochs = 2
warmup_epochs = 1
ramp_epochs = 1
batch_size = 32
validation_samples = 16

[evaluation]
ratios = [0.0, 0.5]
bits = [8]
tflite = false

[methods.ibp]
method = "ibp-then-compress"

[methods.cactus]
method = "cactus"
compression = "pruning+awp_quantization"

[methods.ibp-finetune]
method = "ibp-then-finetune"
source = "ibp"
epochs = 1
"""


def main(work):
    sys.meta_path.insert(0, _Unimportable())
    import numpy as np

    from cactus_keras import cli

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 10, 10), dtype=np.uint8)
    y = rng.integers(0, 3, 64)
    data = os.path.join(work, "tiny.npz")
    np.savez(data, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    run = os.path.join(work, "run")
    common = ["--dataset", data, "--epsilon", "0.02"]
    steps = [
        ["train", *common, "--arch", "mlp", "--epochs", "2", "--batch-size", "32",
         "--compression", "pruning+awp_quantization", "--validation-samples", "16", "--output", run],
        ["evaluate", "--model", os.path.join(run, "model.keras"), *common, "--ratios", "0,0.5",
         "--bits-list", "8", "--json", os.path.join(work, "evaluate.json")],
        ["certify", "--model", os.path.join(run, "network.keras"), *common, "--pgd-steps", "3",
         "--json", os.path.join(work, "certify.json")],
    ]
    config = os.path.join(work, "jax.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(data=data))
    steps.append(["experiment", config, "--output", os.path.join(work, "experiment"),
                  "--no-progress"])
    for argv in steps:
        code = cli.main(argv)
        if code != 0:
            sys.exit(f"cactus-keras {argv[0]} exited with {code}")
    import keras

    assert keras.backend.backend() == "jax", keras.backend.backend()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1])
