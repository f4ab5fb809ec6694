"""`CactusModel`: compression-aware certified training with `model.fit`."""

from __future__ import annotations

import keras
from keras import ops

from cactus_keras import backend, validation
from cactus_keras.bounds.graph import parse_network
from cactus_keras.bounds.margins import input_box, margin_lower_bounds
from cactus_keras.compression.pruning import Pruning, magnitude_masks, prunable_kernels
from cactus_keras.compression.quantization import Quantization, fake_quantize
from cactus_keras.training import losses
from cactus_keras.training.callbacks import StopOnNonFiniteLoss

CERTIFIED_LOSS_METHODS = ("ibp", "crown-ibp")


@keras.saving.register_keras_serializable(package="cactus_keras")
class CactusModel(keras.Model):
    """Trains `network` to be certifiably robust, also after compression.

    Each batch the loss is the mean over the compression set (the full network and the
    members that `compression` adds) of

        standard_weight * L_std(member(x), y) + (1 - standard_weight) * L_cert(member, x, y)

    where L_cert is the cross-entropy on the negated lower bounds of the logit margins
    over the epsilon ball (`losses.certified_loss`). Members are evaluated on transformed
    weight values (for example `kernel * mask`) inside a `keras.StatelessScope`: the
    network is never copied or modified, and its own variables receive the gradients.

    Batch norm uses the statistics of the clean batch, in the bound pass too; only the
    full network updates the moving averages. `model(x)` is the network's inference
    pass; `model.network` is the plain Keras network for deployment and certification.

    Args:
        network: a Sequential or functional Keras model returning logits.
        epsilon: L-infinity training radius in the data space (the target of a ramp).
        compression: a list of members, e.g. `[cactus_keras.Pruning(ratio=(0.25, 0.75)),
            cactus_keras.Quantization(bits=8)]`; empty for plain certified training. The
            quantization member is AWP in training and the fake-quantized network in
            evaluation (so `certified_accuracy_quantized` is that of the quantized kernels).
        standard_weight: lambda, the weight of the standard loss (0 = purely certified).
        certified_loss: bound method of L_cert, "ibp" or "crown-ibp".
        input_range: valid data range the epsilon ball is cut to, or None.
        seed: seed of the ratio sampling.

    Example:

    ```python
    net = cactus_keras.models.cnn3(input_shape=(28, 28, 1), num_classes=10)
    model = cactus_keras.CactusModel(net, epsilon=0.1,
                                     compression=[cactus_keras.Pruning((0.25, 0.75))])
    model.compile(optimizer="adam")
    model.fit(x_train, y_train, epochs=5, callbacks=[cactus_keras.EpsilonRamp(2)])
    ```
    """

    def __init__(
        self,
        network,
        epsilon,
        compression=(),
        standard_weight=0.5,
        certified_loss="ibp",
        input_range=(0.0, 1.0),
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.network = network
        self.graph = parse_network(network)
        self.epsilon_target = validation.check_epsilon(epsilon)
        weight = float(standard_weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"`standard_weight` (lambda) must be in [0, 1], got {standard_weight!r}.")
        if certified_loss not in CERTIFIED_LOSS_METHODS:
            raise ValueError(
                f"`certified_loss` must be one of {', '.join(CERTIFIED_LOSS_METHODS)}, got "
                f"{certified_loss!r}. (Full CROWN is for evaluation: its cost grows with "
                "the square of the layer widths.)"
            )
        self.standard_weight_target = weight
        self.certified_loss_method = certified_loss
        self.input_range = validation.check_input_range(input_range)
        self.compression = list(compression)
        for member in self.compression:
            if not isinstance(member, (Pruning, Quantization)):
                raise TypeError(
                    f"Unsupported compression member {member!r}; expected "
                    "cactus_keras.Pruning or cactus_keras.Quantization."
                )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.epsilon = self.add_variable(
            (), initializer=keras.initializers.Constant(self.epsilon_target),
            trainable=False, name="epsilon",
        )
        self.standard_weight = self.add_variable(
            (), initializer=keras.initializers.Constant(weight), trainable=False,
            name="standard_weight",
        )
        self.train_steps = self.add_variable(
            (), dtype="int32", initializer="zeros", trainable=False, name="train_steps"
        )
        self._kernels = [prunable_kernels(network, m.excludes_output) for m in self.compression]
        self._mask_stores = {}
        for member, kernels in zip(self.compression, self._kernels):
            if isinstance(member, Pruning) and member.refresh_every > 1:
                for name in member.member_names():
                    self._mask_stores[name] = [
                        self.add_variable(
                            k.shape, initializer="ones", trainable=False, name=f"mask_{name}_{i}"
                        )
                        for i, k in enumerate(kernels)
                    ]
        names = [""] + [f"_{n}" for m in self.compression for n in m.member_names()]
        if len(set(names)) != len(names):
            raise ValueError(
                "Compression members need distinct names (`name=`); got "
                f"{[n[1:] for n in names[1:]]}."
            )
        self.member_suffixes = names
        self._trackers = {"loss_standard": keras.metrics.Mean(name="loss_standard"),
                          "loss_certified": keras.metrics.Mean(name="loss_certified")}
        for suffix in names:
            for kind in ("clean_accuracy", "certified_accuracy"):
                self._trackers[kind + suffix] = keras.metrics.Mean(name=kind + suffix)
        self._create_state()
        # The network is built, so the model is: callbacks such as BackupAndRestore
        # need a built model before fit.
        self.build((None, *self.graph.input_shape))

    def _create_state(self):
        """Subclasses create their variables here: a built model accepts none."""

    def _check_arrays(self, x, y):
        # Arrays can be checked before tracing; datasets are the user's to keep valid.
        if x is None or y is None or not hasattr(x, "shape") or not hasattr(y, "shape"):
            return
        validation.check_data(self.network, x, y, self.graph.num_classes)

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with `StopOnNonFiniteLoss` added unless given.

        NumPy inputs are checked first (shape, labels in range).
        """
        self._check_arrays(x, y)
        callbacks = list(callbacks or [])
        if not any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks):
            callbacks.append(StopOnNonFiniteLoss())
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_arrays(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    # The network's inference pass. Training-mode work (batch statistics, bounds) is in
    # compute_loss, so the moving averages are updated exactly once per step.
    def call(self, inputs, training=None):
        return self.network(inputs, training=False)

    @property
    def metrics(self):
        seen = {id(m) for m in super().metrics}
        return super().metrics + [m for m in self._trackers.values() if id(m) not in seen]

    def _pruned_kernels(self, member, kernels, name, training):
        """`kernel * mask` values of one pruned member (masks are constants)."""
        step = self.train_steps.value

        def fresh():
            ratio = member.sample_ratio(step, self.seed_generator, training)
            return magnitude_masks([k.value for k in kernels], ratio, member.method)

        store = self._mask_stores.get(name)
        if store is not None and training:
            refresh = ops.equal(step % member.refresh_every, 0)
            masks = ops.cond(refresh, fresh, lambda: [v.value for v in store])
            for variable, mask in zip(store, masks):
                variable.assign(mask)
        else:
            masks = fresh()
        return [k.value * ops.stop_gradient(m) for k, m in zip(kernels, masks)]

    def _quantized_kernels(self, member, kernels, evaluate, training):
        """Kernel values of the quantization member: `theta + stop_gradient(delta*)` by
        AWP in training, the fake-quantized kernels in evaluation."""
        current = [k.value for k in kernels]
        if not training:
            return [fake_quantize(c, member.bits, member.per_channel) for c in current]
        radii = member.radii(current)
        deltas = [ops.zeros_like(c) for c in current]

        def loss_of(values):
            mapping = self._mapping(kernels, [c + d for c, d in zip(current, values)])
            return ops.mean(evaluate(mapping)[0])

        for _ in range(member.steps):
            grads = backend.gradients(loss_of, deltas)
            deltas = [
                ops.clip(d + member.step_size(r) * ops.sign(g), -r, r)
                for d, g, r in zip(deltas, grads, radii)
            ]
        return [c + ops.stop_gradient(d) for c, d in zip(current, deltas)]

    def _mapping(self, kernels, values):
        """A state mapping of every network variable, with `kernels` replaced."""
        replaced = {id(k): v for k, v in zip(kernels, values)}
        return [(v, replaced.get(id(v), v.value)) for v in self.network.variables]

    def _evaluator(self, x, labels, training):
        """`evaluate(mapping)` -> (per-sample loss, standard loss, certified loss, logits,
        margin lower bounds) of the network at the variable values of `mapping` (None:
        the network's own values)."""
        box = input_box(x, self.epsilon.value, self.input_range)
        weight = ops.cast(self.standard_weight.value, x.dtype)

        def evaluate(mapping):
            if mapping is None:
                margins, logits = self._bounds(box, labels, x, training)
            else:
                with keras.StatelessScope(state_mapping=mapping):
                    margins, logits = self._bounds(box, labels, x, training)
            standard = losses.standard_loss(labels, logits)
            certified = losses.certified_loss(labels, margins)
            return weight * standard + (1.0 - weight) * certified, standard, certified, logits, margins

        return evaluate

    def member_results(self, x, y, training=True):
        """Per member of the compression set: (suffix, per-sample loss, standard loss,
        certified loss, logits, margin lower bounds). The full network comes first."""
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        evaluate = self._evaluator(x, labels, training)
        results = [("", *evaluate(None))]
        for member, kernels in zip(self.compression, self._kernels):
            for name in member.member_names():
                if isinstance(member, Quantization):
                    values = self._quantized_kernels(member, kernels, evaluate, training)
                else:
                    values = self._pruned_kernels(member, kernels, name, training)
                results.append((f"_{name}", *evaluate(self._mapping(kernels, values))))
        return results

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        results = self.member_results(x, labels, training)
        total = 0.0
        for _, per_sample, *_ in results:
            total = total + _weighted_mean(per_sample, sample_weight)
        total = total / len(results)
        # Metrics are updated outside the member scopes, whose updates are discarded.
        for suffix, _, _, _, logits, margins in results:
            correct = ops.cast(ops.argmax(logits, axis=-1) == labels, "float32")
            proven = ops.cast(losses.certified_mask(labels, margins), "float32")
            self._trackers["clean_accuracy" + suffix].update_state(correct)
            self._trackers["certified_accuracy" + suffix].update_state(proven)
        self._trackers["loss_standard"].update_state(results[0][2])
        self._trackers["loss_certified"].update_state(results[0][3])
        if training:
            self.train_steps.assign(self.train_steps.value + 1)
        for extra in self.losses:
            total = total + ops.sum(extra)
        return total

    def _bounds(self, box, labels, x, training):
        return margin_lower_bounds(
            self.graph, box, labels, self.certified_loss_method, clean=x, training=training
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)
        return self.get_metrics_result()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "epsilon": self.epsilon_target,
                "compression": [keras.saving.serialize_keras_object(m) for m in self.compression],
                "standard_weight": self.standard_weight_target,
                "certified_loss": self.certified_loss_method,
                "input_range": self.input_range,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        config["compression"] = [
            keras.saving.deserialize_keras_object(m) for m in config.get("compression", [])
        ]
        return cls(**config)


def _weighted_mean(values, sample_weight):
    if sample_weight is None:
        return ops.mean(values)
    sample_weight = ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    return ops.sum(values * sample_weight) / ops.maximum(ops.sum(sample_weight), 1e-12)
