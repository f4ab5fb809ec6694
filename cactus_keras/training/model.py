"""`CactusModel`: compression-aware certified training with `model.fit`."""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from cactus_keras import backend, keras_internals, validation
from cactus_keras.bounds.graph import parse_network
from cactus_keras.bounds.margins import input_box, margin_lower_bounds
from cactus_keras.bounds.propagation import forward_pass
from cactus_keras.bounds.rules import Box
from cactus_keras.compression.member import MemberContext, check_members
from cactus_keras.training import certified_losses, ibp_regularizers, losses
from cactus_keras.training.batch_slices import check_member_batch_fraction, member_slice
from cactus_keras.training.callbacks import StopOnNonFiniteLoss

# Bound methods of the certified loss (full CROWN is for certification only).
TRAINING_BOUNDS = ("ibp", "crown-ibp")


@dataclasses.dataclass(frozen=True)
class MemberResult:
    """One network of the compression set at one batch (per-sample tensors).

    `name` is the member's name, None for the full network. `indices` are the positions
    in the batch of the samples the tensors are over (a member on a batch slice,
    `member_batch_fraction < 1`), None for the whole batch.
    """

    name: str | None
    loss: object
    standard_loss: object
    certified_loss: object
    logits: object
    margin_lower: object
    # Shi et al.'s IBP regulariser of this network's bound pass (a scalar, unweighted),
    # computed for the full network when `ibp_regularization` > 0, else None.
    ibp_regularization: object = None
    indices: object = None


def _metric_name(kind, member_name):
    return kind if member_name is None else f"{kind}_{member_name}"


@keras.saving.register_keras_serializable(package="cactus_keras")
# BuildsOnOneReplica: the TensorFlow trainer's build on a distributed first batch fails
# under MultiWorkerMirroredStrategy; see keras_internals.symbolic_build.
class CactusModel(keras_internals.BuildsOnOneReplica, keras.Model):
    """Trains `network` to be certifiably robust, also after compression.

    Each batch the loss is the weighted mean over the compression set (the full network
    and the members that `compression` adds) of each network's

        L = standard_weight * L_std(member(x), y) + (1 - standard_weight) * L_cert(member, x, y)

    the full network weighing 1 and each compressed network `member_weight` w:
    `(L_full + w * sum_m L_m) / (1 + w * M)` for M compressed networks (w = 1: the plain
    mean over the set; w = 0: the full network alone, as plain certified training).

    where L_cert is the member's `certified_loss`: by default ("worst-case") the
    cross-entropy on the negated lower bounds of the logit margins over the epsilon
    ball (`losses.certified_loss`); "mtl-ibp" and "sabr" mix in or centre on a PGD point
    of that member (`training.certified_losses`). Members are evaluated on transformed
    weight values (for example `kernel * mask`) inside a `keras.StatelessScope`: the
    network is never copied or modified, and its own variables receive the gradients.

    Batch norm uses the statistics of the clean batch, in the bound pass too; only the
    full network updates the moving averages. `model(x)` is the network's inference
    pass; `model.network` is the plain Keras network for deployment and certification.

    Args:
        network: a Sequential or functional Keras model returning logits.
        epsilon: L-infinity training radius in the data space (the target of a ramp).
        compression: a list of members (`cactus_keras.compression.CompressionMember`),
            e.g. `[cactus_keras.Pruning(ratio=(0.25, 0.75)), cactus_keras.AWPQuantization(bits=8)]`;
            empty for plain certified training. The quantization member is AWP in
            training and the fake-quantized network in evaluation (so
            `certified_accuracy_quantized` is that of the quantized kernels).
        standard_weight: lambda, the weight of the standard loss (0 = purely certified).
        bound: bound method of L_cert, "ibp" or "crown-ibp" (MTL-IBP's and SABR's
            boxes are bounded with it too).
        certified_loss: "worst-case" (default), "mtl-ibp" or "sabr"; see
            `cactus_keras.training.certified_losses`.
        mtl_alpha: MTL-IBP's alpha, the weight of the worst-case loss (default 0.5).
        sabr_lambda: SABR's small box radius as a fraction of epsilon (default 0.4).
        attack_steps: PGD steps of the attack inside MTL-IBP and SABR (default 8).
        input_range: valid data range the epsilon ball is cut to, or None.
        include_full_network: train the full network too (True, CACTUS); False trains
            the members alone (certified fine-tuning of a fixed compressed network,
            then `apply_compression()`).
        seed: seed of the ratio sampling.
        ibp_regularization: weight of Shi et al.'s (2021) IBP regularisers (bound
            tightness and ReLU balance) of the full network's pre-activation bounds
            (over the box its certified loss bounds: SABR's small box for "sabr"),
            decaying as `1 - epsilon / epsilon_target` over the epsilon ramp and off
            outside it (`training.ibp_regularizers`); Shi et al. use 0.5. Default 0
            (off). Metric `loss_ibp_regularization` (the term as added to the loss).
        l1_regularization: weight of the L1 norm of the Dense and Conv kernels added
            to the loss (CTRAIN: 1e-6). Default 0 (off). Metric `loss_l1_regularization`.
        member_weight: w >= 0, the weight of each compressed network relative to the
            full network (default 1); `model.member_weight` is a variable, so
            `MemberWeightRamp` can bring the members in during training. Ignored with
            `include_full_network=False` (the members' plain mean).
        member_batch_fraction: in (0, 1]; below 1 each compressed network is trained on
            its own slice of `round(fraction * batch)` samples of each batch (rotating
            with the step; `cactus_keras.training.batch_slices`), the full network on
            all of it: a cheaper set. Its loss and metrics are over its slice (weighted
            mean by `sample_weight`). Evaluation (`evaluate`, validation) uses the
            whole batch for every network.

    Example:

    ```python
    net = cactus_keras.models.cnn3(input_shape=(28, 28, 1), num_classes=10)
    model = cactus_keras.CactusModel(net, epsilon=0.1,
                                     compression=[cactus_keras.Pruning((0.25, 0.75))])
    model.compile(optimizer="adam")
    model.fit(x_train, y_train, epochs=2, batch_size=64,
              callbacks=[cactus_keras.EpsilonRamp(1)])
    ```
    """

    def __init__(
        self,
        network,
        epsilon,
        compression=(),
        standard_weight=0.5,
        bound="ibp",
        input_range=(0.0, 1.0),
        include_full_network=True,
        seed=None,
        certified_loss="worst-case",
        mtl_alpha=None,
        sabr_lambda=None,
        attack_steps=None,
        ibp_regularization=0.0,
        l1_regularization=0.0,
        member_weight=1.0,
        member_batch_fraction=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.network = network
        self.graph = parse_network(network)
        self.epsilon_target = validation.check_epsilon(epsilon)
        weight = float(standard_weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"`standard_weight` (lambda) must be in [0, 1], got {standard_weight!r}.")
        if bound not in TRAINING_BOUNDS:
            raise ValueError(
                f"`bound` of the certified loss must be one of {', '.join(TRAINING_BOUNDS)}, "
                f"got {bound!r}. (Full CROWN is for certification: its cost grows with "
                "the square of the layer widths.)"
            )
        self.standard_weight_target = weight
        self.bound = bound
        self.loss_options = certified_losses.check_certified_loss(
            certified_loss, mtl_alpha=mtl_alpha, sabr_lambda=sabr_lambda,
            attack_steps=attack_steps)
        self.certified_loss = certified_loss
        self._given_loss_options = {"mtl_alpha": mtl_alpha, "sabr_lambda": sabr_lambda,
                                    "attack_steps": attack_steps}
        self.input_range = validation.check_input_range(input_range)
        validation.check_epsilon_range(self.epsilon_target, self.input_range)
        self.compression = check_members(compression)
        self.include_full_network = bool(include_full_network)
        if not self.include_full_network and not self.compression:
            raise ValueError(
                "`include_full_network=False` trains only the compressed members, so "
                "`compression` needs at least one member (e.g. "
                "[cactus_keras.FixedMaskPruning(0.7)])."
            )
        self.seed = seed
        self._check_regularization(ibp_regularization, l1_regularization)
        self.member_weight_target = check_member_weight(member_weight)
        self.member_batch_fraction = check_member_batch_fraction(member_batch_fraction)
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
        self.member_weight = self.add_variable(
            (), initializer=keras.initializers.Constant(self.member_weight_target),
            trainable=False, name="member_weight",
        )
        # Member state is created here: a built model accepts no new variables.
        self._member_kernels = []
        self._member_states = []
        for member in self.compression:
            kernels = member.select_kernels(network)

            def add_variable(shape, initializer, name, member=member):
                return self.add_variable(shape, initializer=initializer, trainable=False,
                                         name=f"{member.name}_{name}")

            self._member_kernels.append(kernels)
            self._member_states.append(member.build(kernels, add_variable))
        self.member_names = ([None] if self.include_full_network else []) + [
            n for m in self.compression for n in m.names()
        ]
        self._trackers = {"loss_standard": keras.metrics.Mean(name="loss_standard"),
                          "loss_certified": keras.metrics.Mean(name="loss_certified")}
        for name in self.member_names:
            for kind in ("clean_accuracy", "certified_accuracy"):
                metric = _metric_name(kind, name)
                self._trackers[metric] = keras.metrics.Mean(name=metric)
        for metric in self._regularization_metrics():
            self._trackers[metric] = keras.metrics.Mean(name=metric)
        # The network is built, so the model is: callbacks such as BackupAndRestore
        # need a built model before fit.
        self.build((None, *self.graph.input_shape))

    def _check_regularization(self, ibp_regularization, l1_regularization):
        self.ibp_regularization = ibp_regularizers.check_regularization(
            ibp_regularization, "ibp_regularization", "the weight of Shi et al.'s IBP regularisers")
        self.l1_regularization = ibp_regularizers.check_regularization(
            l1_regularization, "l1_regularization", "the weight of the kernels' L1 norm")
        self._relu_inputs = ibp_regularizers.relu_input_values(self.graph)
        if self.ibp_regularization and not self._relu_inputs:
            raise ValueError(
                f"`ibp_regularization` regularises the bounds of ReLU pre-activations, and "
                f"network '{self.network.name}' has no ReLU; set it to 0."
            )
        if self.ibp_regularization and not self.include_full_network:
            raise ValueError(
                "`ibp_regularization` regularises the full network's bounds during the "
                "epsilon ramp, and `include_full_network=False` trains no full network; "
                "set it to 0."
            )
        self._l1_kernels = (ibp_regularizers.regularized_kernels(self.network)
                            if self.l1_regularization else [])

    def _regularization_metrics(self):
        """Metric names of the regularisers that are on (each the term as added to
        the loss)."""
        return [name for name, weight in (("loss_ibp_regularization", self.ibp_regularization),
                                          ("loss_l1_regularization", self.l1_regularization))
                if weight]

    def _check_inputs(self, x, y, name="x"):
        """Checks training or evaluation data before any step runs.

        Arrays (x and y) are checked whole: shape, labels in range, and inputs finite
        and within `input_range` (`validation.check_in_range`), which costs one pass
        over memory that is there anyway. A `tf.data.Dataset` or a
        `keras.utils.PyDataset` is checked on its first batch only: that catches the
        usual mistake (the whole data set unscaled, raw 0..255 pixels) at the cost of
        one batch, without reading the data set twice. Python generators are not
        checked (peeking would consume a batch). A check inside the compiled step
        would see every batch, but a failed check cannot stop a compiled step on every
        backend; the input pipeline is the user's there.
        """
        if x is None:
            return
        if hasattr(x, "shape") and y is not None and hasattr(y, "shape"):
            validation.check_data(self.network, x, y, self.graph.num_classes,
                                  self.input_range)
            return
        first = _first_batch(x)
        if first is not None:
            validation.check_in_range(first, self.input_range, f"{name} (its first batch)")

    def fit(self, x=None, y=None, *args, callbacks=None, validation_data=None, **kwargs):
        """`keras.Model.fit`, with `StopOnNonFiniteLoss` added unless given.

        The data are checked first (`_check_inputs`): arrays whole (shape, labels,
        inputs finite and within `input_range`), a `tf.data.Dataset` or `PyDataset`
        on its first batch; `validation_data` the same way.

        Example:

        ```python
        model.fit(x_train / 255.0, y_train, epochs=5)  # pixels scaled to input_range
        ```
        """
        self._check_inputs(x, y)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
            self._check_inputs(validation_data[0], validation_data[1], "validation_data")
        elif validation_data is not None:
            self._check_inputs(validation_data, None, "validation_data")
        callbacks = list(callbacks or [])
        if not any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks):
            callbacks.append(StopOnNonFiniteLoss())
        return super().fit(x, y, *args, callbacks=callbacks, validation_data=validation_data,
                           **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_inputs(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    # The network's inference pass. Training-mode work (batch statistics, bounds) is in
    # compute_loss, so the moving averages are updated exactly once per step.
    def call(self, inputs, training=None):
        return self.network(inputs, training=False)

    def compile(self, optimizer="rmsprop", loss=None, *args, **kwargs):
        """`keras.Model.compile`, without `loss`: the loss is CACTUS's own (set by
        `standard_weight`, `certified_loss` and `epsilon`), so a given one would be
        silently ignored and is refused.

        ```python
        model.compile(optimizer="adam")
        ```
        """
        if loss is not None:
            raise ValueError(
                f"CactusModel.compile got `loss`={loss!r}, which it would ignore: the loss is "
                "CACTUS's own (standard_weight * standard cross-entropy + (1 - "
                "standard_weight) * certified loss). Drop `loss`; set `standard_weight` or "
                "`certified_loss` on CactusModel to change it."
            )
        return super().compile(optimizer, None, *args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose class overrides `compile`; this one
        # only refuses `loss`, so a saved compile config (optimizer, metrics) is restored.
        config = dict(keras.saving.deserialize_keras_object(config))
        config.pop("loss", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        seen = {id(m) for m in super().metrics}
        return super().metrics + [m for m in self._trackers.values() if id(m) not in seen]

    def _mapping(self, kernels, values):
        """A state mapping of every network variable, with `kernels` replaced."""
        replaced = {id(k): v for k, v in zip(kernels, values)}
        return [(v, replaced.get(id(v), v.value)) for v in self.network.variables]

    def _attack_noise(self, x):
        # The attack's random start, drawn outside the members' scopes: a seed generator
        # inside a member's StatelessScope would not advance. All members start from
        # the same point (a member on a batch slice from its samples' points).
        if self.certified_loss == "worst-case":
            return None
        return keras.random.uniform(ops.shape(x), dtype=x.dtype, seed=self.seed_generator)

    def _evaluator(self, x, labels, training, noise=None, indices=None):
        """`evaluate(mapping)` -> the `MemberResult` of the network at the variable
        values of `mapping` (None: the network's own values), on the samples at
        `indices` of the batch (None: all of them)."""
        if indices is not None:
            x, labels = ops.take(x, indices, axis=0), ops.take(labels, indices, axis=0)
            noise = None if noise is None else ops.take(noise, indices, axis=0)
        # Model variables are read here, outside the members' scopes: on JAX a nested
        # StatelessScope sees only the network variables of its own mapping.
        epsilon = self.epsilon.value
        box = input_box(x, epsilon, self.input_range)
        weight = ops.cast(self.standard_weight.value, x.dtype)

        def evaluate(mapping, own=None):
            regularization = None
            if own is not None:
                # A member with a network of its own (e.g. the int8 file's arithmetic):
                # its margins and logits, on this evaluator's samples and box.
                margins, logits = own(box, labels, x)
                certified = losses.certified_loss(labels, margins)
            elif mapping is None:
                certified, margins, logits, interval = self._certified_terms(
                    box, epsilon, labels, x, training, noise)
                if self.ibp_regularization:
                    regularization = ibp_regularizers.ibp_regularizer(
                        interval, self._relu_inputs, self.graph.input)
            else:
                # The attack runs in the scope too: a member's attack attacks it.
                with keras.StatelessScope(state_mapping=mapping):
                    certified, margins, logits, _ = self._certified_terms(
                        box, epsilon, labels, x, training, noise)
            standard = losses.standard_loss(labels, logits)
            return MemberResult(name=None, loss=weight * standard + (1.0 - weight) * certified,
                                standard_loss=standard, certified_loss=certified,
                                logits=logits, margin_lower=margins,
                                ibp_regularization=regularization, indices=indices)

        return evaluate

    def _member_context(self, member, index, name, kernels, evaluate, training):
        def loss(values):
            if evaluate is None:
                raise ValueError(f"Member {name!r} asked for a loss outside a training step.")
            return replica_share_of_mean(evaluate(self._mapping(kernels, values)).loss)

        return MemberContext(name=name, step=self.train_steps.value,
                             seed_generator=self.seed_generator, training=training,
                             loss=loss, state=self._member_states[index])

    def compressed_kernels(self, training=False, evaluate=None):
        """`{member name: (kernel variables, compressed values)}` at this step.
        `evaluate` (this step's evaluator) gives adversarial members their loss."""
        return self._compressed(training, lambda name: evaluate)

    def _compressed(self, training, evaluator_of):
        found = {}
        for index, (member, kernels) in enumerate(zip(self.compression, self._member_kernels)):
            for name in member.names():
                context = self._member_context(member, index, name, kernels,
                                               evaluator_of(name), training)
                found[name] = (kernels, member.compress([k.value for k in kernels], context))
        return found

    def member_slices(self, batch_size, training=True):
        """`{member name: positions in the batch}` of this step's batch slices (see
        `member_batch_fraction`), or None when every member sees the whole batch."""
        if not training or self.member_batch_fraction == 1.0:
            return None
        names = [n for m in self.compression for n in m.names()]
        step = self.train_steps.value
        return {name: member_slice(batch_size, self.member_batch_fraction, position, step)
                for position, name in enumerate(names)}

    def member_results(self, x, y, training=True):
        """A `MemberResult` per network of the compression set (the full network first,
        named None, unless `include_full_network=False`)."""
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        noise = self._attack_noise(x)
        evaluate = self._evaluator(x, labels, training, noise)
        results = [evaluate(None)] if self.include_full_network else []
        batch_size = x.shape[0] if x.shape[0] is not None else ops.shape(x)[0]
        slices = self.member_slices(batch_size, training)
        if slices is None:
            evaluators = {}
        else:
            evaluators = {name: self._evaluator(x, labels, training, noise, indices)
                          for name, indices in slices.items()}

        def evaluator_of(name):
            return evaluators.get(name, evaluate)

        owners = {n: (i, m) for i, m in enumerate(self.compression) for n in m.names()}
        for name, (kernels, values) in self._compressed(training, evaluator_of).items():
            index, member = owners[name]
            own = None
            if getattr(member, "own_network", False):
                context = self._member_context(member, index, name, kernels, None, training)

                def own(box, labels, x, member=member, values=values, context=context):
                    return member.network_terms(values, box, labels, x, context)

            result = evaluator_of(name)(self._mapping(kernels, values), own=own)
            results.append(dataclasses.replace(result, name=name))
        return results

    def member_state(self, name):
        """The state (`build`'s return value) of the member named `name`."""
        for member, state in zip(self.compression, self._member_states):
            if name in member.names():
                return state
        raise ValueError(f"No compression member named {name!r}; members: "
                         f"{', '.join(n for m in self.compression for n in m.names())}.")

    def apply_compression(self, name=None):
        """Writes the compressed kernels of member `name` (evaluation mode) into the
        network's variables and returns the network: the deployable compressed network
        after fine-tuning. `name` may be omitted when the set has one member."""
        found = self.compressed_kernels(training=False)
        if name is None:
            if len(found) != 1:
                raise ValueError(
                    f"The compression set has {len(found)} members ({', '.join(found)}); "
                    "pass `name=` to choose the one to apply."
                )
            name = next(iter(found))
        if name not in found:
            raise ValueError(f"No compression member named {name!r}; members: {', '.join(found)}.")
        kernels, values = found[name]
        for kernel, value in zip(kernels, values):
            kernel.assign(ops.convert_to_numpy(value))
        return self.network

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The mean loss over the compression set, weighted by `sample_weight`.

        Under `tf.distribute` each replica returns its share of the global batch's
        mean (its weighted sum over the weights of the whole global batch), which Keras
        sums over the replicas: loss, gradients and metrics equal those of one device
        on the same global batch. Under JAX's `keras.distribution` a step sees the
        global batch itself.
        """
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        results = self.member_results(x, labels, training)
        weight = None if sample_weight is None else ops.reshape(sample_weight, (-1,))
        total = self._set_loss(results, weight)
        # Metrics are updated outside the member scopes, whose updates are discarded.
        # Mean trackers sum their totals and counts over replicas: global-batch values.
        for result in results:
            own_labels = _on_samples(labels, result.indices)
            correct = ops.cast(ops.argmax(result.logits, axis=-1) == own_labels, "float32")
            proven = ops.cast(losses.certified_mask(own_labels, result.margin_lower), "float32")
            self._trackers[_metric_name("clean_accuracy", result.name)].update_state(correct)
            self._trackers[_metric_name("certified_accuracy", result.name)].update_state(proven)
        # The loss parts are weighted as the loss is.
        first_weight = _on_samples(weight, results[0].indices)
        self._trackers["loss_standard"].update_state(results[0].standard_loss, first_weight)
        self._trackers["loss_certified"].update_state(results[0].certified_loss, first_weight)
        if training:
            self.train_steps.assign(self.train_steps.value + 1)
        # Every replica adds the same regularization terms; Keras sums the replicas.
        # (Shi et al.'s terms are statistics of each replica's part of the batch.)
        replicas = backend.replica_count()
        for name, term in self._regularization_terms(results).items():
            self._trackers[name].update_state(term)
            total = total + term / replicas
        for extra in self.losses:
            total = total + ops.sum(extra) / replicas
        return total

    def _regularization_terms(self, results):
        """`{metric name: term}` of the regularisers that are on, each weighted as it
        is added to the loss."""
        terms = {}
        if self.ibp_regularization:
            decay = ibp_regularizers.ramp_decay(self.epsilon.value, self.epsilon_target)
            terms["loss_ibp_regularization"] = (
                self.ibp_regularization * decay * results[0].ibp_regularization)
        if self.l1_regularization:
            terms["loss_l1_regularization"] = self.l1_regularization * ibp_regularizers.l1_norm(
                [kernel.value for kernel in self._l1_kernels])
        return terms

    def _set_loss(self, results, sample_weight):
        """The weighted mean over the set of each network's (weighted) mean loss over
        its samples: the full network weighs 1, each compressed network `member_weight`
        (1 each when the set has no full network)."""
        member_weight = self.member_weight.value if self.include_full_network else 1.0
        total, norm = 0.0, 0.0
        for result in results:
            # The same sum in the same order as the plain mean: at w = 1 it is that mean.
            share = replica_share_of_mean(result.loss, _on_samples(sample_weight, result.indices))
            weight = 1.0 if result.name is None else ops.cast(member_weight, share.dtype)
            total = total + weight * share
            norm = norm + weight
        return total / norm

    def _bounds(self, box, labels, x, training):
        """`(margin lower bounds, clean logits, the interval pass)`."""
        return margin_lower_bounds(
            self.graph, box, labels, self.bound, clean=x, training=training,
            return_interval=True,
        )

    def _attack(self, x, labels, lower, upper, noise, training):
        # The clean batch's parameters (batch statistics): the attacked network is the
        # one the bounds describe.
        _, params = forward_pass(self.graph, x, training=training)

        def forward(point):
            return forward_pass(self.graph, point, params=params, training=training)[0]

        point = certified_losses.attack(forward, labels, lower, upper, noise,
                                        self.loss_options["attack_steps"])
        return point, forward

    def _certified_terms(self, box, epsilon, labels, x, training, noise):
        """`(per-sample L_cert, margin lower bounds over the epsilon ball, clean
        logits, the interval pass of the box L_cert bounds)` of the network at the
        current variable values."""
        if self.certified_loss == "sabr":
            radius = certified_losses.sabr_radius(box, epsilon,
                                                  self.loss_options["sabr_lambda"])
            lower, upper = certified_losses.centre_region(box, radius)
            centre, _ = self._attack(x, labels, lower, upper, noise, training)
            small = certified_losses.sabr_box(box, radius, centre)
            small_margins, logits, interval = self._bounds(small, labels, x, training)
            # The small box proves nothing about the ball: the metrics use the ball's.
            margins, _, _ = self._bounds(Box(*map(ops.stop_gradient, box)), labels,
                                         ops.stop_gradient(x), training)
            return (losses.certified_loss(labels, small_margins),
                    ops.stop_gradient(margins), logits, interval)
        margins, logits, interval = self._bounds(box, labels, x, training)
        worst_case = losses.certified_loss(labels, margins)
        if self.certified_loss == "worst-case":
            return worst_case, margins, logits, interval
        point, forward = self._attack(x, labels, box.lower, box.upper, noise, training)
        adversarial = losses.standard_loss(labels, forward(point))
        alpha = self.loss_options["mtl_alpha"]
        return alpha * worst_case + (1.0 - alpha) * adversarial, margins, logits, interval

    def load_own_variables(self, store):
        # A model saved before `member_weight` existed says so in its config (it has
        # no `member_weight` key, see from_config), and its weights file has one
        # variable fewer: load the others in their order and keep the weight at its
        # configured value. Recognising the version by the config, not by counting
        # the variables, leaves any other mismatch to Keras's own error.
        if not getattr(self, "_saved_without_member_weight", False):
            return super().load_own_variables(store)
        kept = [v for v in keras_internals.own_variables(self) if v is not self.member_weight]
        if len(store.keys()) != len(kept):
            raise ValueError(
                f"The weights file of this CactusModel (saved before `member_weight` "
                f"existed) holds {len(store.keys())} variables of the model itself, "
                f"expected {len(kept)}; it was saved by another version of cactus_keras."
            )
        for i, variable in enumerate(kept):
            variable.assign(store[f"{i}"])

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        compiled = keras_internals.compiled_metrics(self)
        if compiled is not None:
            compiled.update_state(y, y_pred, sample_weight)
        return keras_internals.step_logs(self.get_metrics_result())

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "epsilon": self.epsilon_target,
                "compression": [keras.saving.serialize_keras_object(m) for m in self.compression],
                "standard_weight": self.standard_weight_target,
                "bound": self.bound,
                "input_range": self.input_range,
                "include_full_network": self.include_full_network,
                "seed": self.seed,
                "certified_loss": self.certified_loss,
                **self._given_loss_options,
                "ibp_regularization": self.ibp_regularization,
                "l1_regularization": self.l1_regularization,
                "member_weight": self.member_weight_target,
                "member_batch_fraction": self.member_batch_fraction,
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
        model = cls(**config)
        model._saved_without_member_weight = "member_weight" not in config
        return model


def _first_batch(data):
    """The inputs of the first batch of a `tf.data.Dataset` or `keras.utils.PyDataset`
    (None for anything else, e.g. a generator, which cannot be peeked at)."""
    if isinstance(data, keras.utils.PyDataset):
        element = data[0]
    elif type(data).__module__.startswith("tensorflow") and hasattr(data, "take") and \
            hasattr(data, "element_spec"):
        element = next(iter(data.take(1)), None)
    else:
        return None
    if isinstance(element, (tuple, list)):
        element = element[0] if element else None
    if element is None or isinstance(element, dict):
        return None
    return ops.convert_to_numpy(element)


def check_member_weight(member_weight):
    value = validation.as_number(member_weight, "member_weight", "a number >= 0")
    if not (value >= 0 and value != float("inf")):
        raise ValueError(
            f"`member_weight` (the weight of each compressed network relative to the full "
            f"network) must be a finite number >= 0, got {member_weight!r}."
        )
    return value


def _on_samples(values, indices):
    """`values` (per sample, or None) at the positions `indices` (None: all)."""
    if values is None or indices is None:
        return values
    return ops.take(values, indices, axis=0)


def replica_share_of_mean(values, sample_weight=None):
    """This replica's share of the (weighted) mean of per-sample `values` over the
    global batch: its weighted sum divided by the weights of the whole global batch.

    On one device (and on JAX, where a step sees the global batch) it is the mean;
    summed over the replicas of a `tf.distribute` step it is the mean on one device,
    whatever the replicas' batch sizes.
    """
    if sample_weight is None:
        sample_weight = ops.ones_like(values)
    sample_weight = ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    total_weight = backend.sum_over_replicas(ops.stop_gradient(ops.sum(sample_weight)))
    return ops.sum(values * sample_weight) / ops.maximum(total_weight, 1e-12)
