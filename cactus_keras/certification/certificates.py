"""`certify`: a sound robustness certificate per sample."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from cactus_keras import backend, validation
from cactus_keras.bounds.graph import parse_network
from cactus_keras.bounds.margins import BoundedModel, check_bound
from cactus_keras.bounds.propagation import crown_bytes_per_sample
from cactus_keras.quiet import progress_verbosity

DEFAULT_BATCH_SIZE = {"ibp": 512, "crown-ibp": 256, "crown": 64, "alpha-crown": 64, "best": 64}
# The bounds that run CROWN's backward refinement (memory grows with the widths squared).
CROWN_BOUNDS = ("crown", "alpha-crown", "best")
# CROWN's coefficient tensors grow with the square of the layer widths; the default
# batch size keeps the largest under this many bytes, and a model needing more than
# CROWN_SAMPLE_LIMIT for one sample is refused with advice rather than exhausting memory.
CROWN_BATCH_BYTES = 1 << 30
CROWN_SAMPLE_LIMIT = 8 << 30


@dataclasses.dataclass
class CertificationResult:
    """Per-sample certificates of one model at one epsilon.

    Attributes:
        certified: bool per sample; True when every margin z_y - z_j (j != y) is
            provably positive over the whole input box.
        margin_lower: (samples, classes) lower bounds of z_y - z_j; column y is 0.
        predicted: arg-max of the model at the clean input.
        labels: the true labels.
        bound, epsilon: how the bounds were computed (the bound method, the radius).

    Example:

    ```python
    result = cactus_keras.certify(net, x_test, y_test, epsilon=0.01)
    print(result.summary())          # "64 samples, epsilon=0.01, bound=...: clean accuracy ..."
    assert result.certified_accuracy <= result.clean_accuracy
    assert result.margin_lower.shape == (len(x_test), 10)
    ```
    """

    certified: np.ndarray
    margin_lower: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    bound: str
    epsilon: float

    @property
    def correct(self):
        return self.predicted == self.labels

    @property
    def clean_accuracy(self):
        return float(np.mean(self.correct))

    @property
    def certified_accuracy(self):
        return float(np.mean(self.certified))

    def summary(self):
        return (
            f"{len(self.labels)} samples, epsilon={self.epsilon:g}, bound={self.bound}: "
            f"clean accuracy {self.clean_accuracy:.4f}, certified accuracy "
            f"{self.certified_accuracy:.4f}"
        )

    def to_dict(self):
        return {
            "bound": self.bound,
            "epsilon": self.epsilon,
            "samples": int(len(self.labels)),
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": self.certified_accuracy,
        }


def network_of(model):
    """The plain network of a `CactusModel` (any Keras model with a `network` that is a
    Keras model), else `model` itself: what certificates are computed for."""
    network = getattr(model, "network", None)
    if isinstance(model, keras.Model) and isinstance(network, keras.Model):
        return network
    return model


def _bounded_model(model, bound, input_range):
    """One `BoundedModel` per (model, bound, input range), so that repeated calls
    reuse its compiled predict function instead of tracing a new one."""
    cache = model.__dict__.get("_cactus_bounded_models")
    if cache is None:
        cache = {}
        # object.__setattr__ keeps Keras from tracking the cache as part of the model.
        object.__setattr__(model, "_cactus_bounded_models", cache)
    key = (bound, input_range)
    if key not in cache:
        cache[key] = BoundedModel(model, bound=bound, input_range=input_range)
    return cache[key]


def certify(
    model,
    x,
    y,
    epsilon,
    bound="ibp",
    *,
    batch_size=None,
    input_range=(0.0, 1.0),
    verbose="auto",
):
    """Certifies `model` on each sample against L-infinity perturbations.

    A sample is certified when the bounds prove that every input in the ball of radius
    `epsilon` around it (cut to `input_range`, the valid data range) is classified as
    its label. The model is an ordinary Sequential or functional Keras model returning
    logits or probabilities (a final softmax is skipped: it does not change the arg-max).

    Args:
        model: the Keras model, or a `CactusModel` (its `network` is certified).
        x: inputs, shape (samples, *model input shape), in the data space.
        y: integer labels.
        epsilon: L-infinity radius in the data space (normalization inside the model is
            bounded exactly).
        bound: the bound method, "ibp", "crown-ibp", "crown", "alpha-crown" or
            "best". IBP supports every layer with a rule; CROWN relaxes ReLU, sigmoid,
            tanh and softsign linearly and bounds other monotone layers (max pooling,
            ReLU6, ...) by their intervals. "alpha-crown" is CROWN with its ReLU lower
            slopes optimised per sample and margin (20 Adam steps on the final
            backward pass; never looser than "crown"; see `tools/bench_bounds.py` for
            its cost as a ratio to CROWN). "best" is, per margin, the larger of the
            "ibp" and "alpha-crown" bounds: the tightest and the slowest.
        batch_size: samples per batch. The default for the CROWN bounds is sized
            from the model so CROWN's coefficients stay near 1 GiB.
        input_range: `(low, high)` of valid inputs, or None for no cut.
        verbose: "auto", 0 or 1: progress bar over batches.

    Returns:
        A `CertificationResult`.

    Example:

    ```python
    result = cactus_keras.certify(net, x_test, y_test, epsilon=0.1)
    print(result.certified_accuracy, result.certified[:10])
    ```
    """
    bound = check_bound(bound)
    epsilon = validation.check_epsilon(epsilon)
    input_range = validation.check_input_range(input_range)
    validation.check_epsilon_range(epsilon, input_range)
    model = network_of(model)
    graph = parse_network(model)
    x, y = validation.check_data(model, x, y, graph.num_classes, input_range)
    if bound in CROWN_BOUNDS:
        per_sample = crown_bytes_per_sample(graph)
        if per_sample > CROWN_SAMPLE_LIMIT:
            raise ValueError(
                f"bound='{bound}' would need about {per_sample / 2**30:.1f} GiB per "
                f"sample for model '{model.name}' (CROWN keeps a coefficient per pair of "
                "neurons of its widest layers). Use bound='crown-ibp' or 'ibp' for this "
                "model."
            )
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE[bound]
        if bound in CROWN_BOUNDS:
            batch_size = max(1, min(batch_size, CROWN_BATCH_BYTES // per_sample))
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    bounded = _bounded_model(model, bound, input_range)
    if verbose == "auto":
        # No ANSI colour codes into a file or pipe (Keras's bar writes them on POSIX).
        verbose = progress_verbosity() if len(x) > batch_size else 0
    with backend.full_precision():
        outputs = bounded.predict(
            (x, y.astype("int32"), np.full(len(x), epsilon, "float32")),
            batch_size=batch_size,
            verbose=verbose,
        )
    margin_lower = np.asarray(outputs["margin_lower"])
    own = np.eye(graph.num_classes, dtype=bool)[y]
    certified = np.all(np.where(own, np.inf, margin_lower) > 0, axis=1)
    return CertificationResult(
        certified=certified,
        margin_lower=margin_lower,
        predicted=np.argmax(np.asarray(outputs["logits"]), axis=1),
        labels=y,
        bound=bound,
        epsilon=epsilon,
    )
