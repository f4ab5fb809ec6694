import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(autouse=True)
def _full_precision():
    # Tests compare bounds with sampled points at float32 precision; on a GPU that needs
    # TF32 off for the direct bound computations too (certify() does this itself).
    from cactus_keras import backend

    with backend.full_precision():
        yield
