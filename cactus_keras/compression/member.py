"""The compression-member protocol: what one member of the CACTUS compression set is.

A member turns the network's current kernels into the kernel values of its compressed
network(s) for one step. `CactusModel` only iterates over members; it knows nothing of
pruning or quantization. Pruning, AWP quantization, fixed-mask pruning and
straight-through fake quantization are members like any a user writes.

The protocol, in full:

* `names()`: one name per compressed network the member adds to the set (its metrics
  are `clean_accuracy_<name>` and `certified_accuracy_<name>`).
* `select_kernels(network)`: the kernel variables it compresses (default: every Dense
  and convolution kernel, the output layer's too unless `exclude_output`).
* `build(kernels, add_variable)`: creates the state it needs (masks, ...) before the
  model is built, with `add_variable(shape, initializer, name)`; saved with the model.
* `compress(kernels, context)`: the kernel values (tensors) of the compressed network
  named `context.name`, from the current kernel values and the step's `MemberContext`.
  Gradients reach the kernels through whatever `compress` keeps differentiable.
* `own_network` (default False) and `network_terms(values, box, labels, x, context)`:
  a member whose compressed network is not the network at other kernel values (the
  int8 file's arithmetic, `Int8FileQuantization`) sets `own_network = True` and returns
  `(margin lower bounds, clean logits)` of its network over the input box; the model
  uses them for its loss and metrics (worst-case certified loss).
* `get_config()` / `from_config()`: plain-Python settings, so that a `CactusModel`
  holding the member saves and loads (`register_member` makes the class loadable).

Example, a member of one's own (power-of-two quantization with a straight-through
estimator):

```python
from keras import ops
import cactus_keras

@cactus_keras.compression.register_member("power_of_two")
class PowerOfTwo(cactus_keras.compression.CompressionMember):
    def compress(self, kernels, context):
        def nearest_power(w):
            magnitude = ops.maximum(ops.abs(w), 1e-8)
            return ops.sign(w) * 2.0 ** ops.round(ops.log2(magnitude))
        return [w + ops.stop_gradient(nearest_power(w) - w) for w in kernels]

model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[PowerOfTwo(name="pow2")])
```
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

import keras

from cactus_keras.compression.kernels import compressible_kernels

_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class MemberContext:
    """What a member sees of one step.

    Attributes:
        name: which of the member's `names()` is being computed.
        step: the model's training step counter (a scalar int32 tensor).
        seed_generator: the model's `keras.random.SeedGenerator`, for sampled members.
        training: True in a training step, False in evaluation (a member then gives
            the compressed network it stands for, e.g. the fake-quantized kernels).
        loss: `loss(kernel_values) -> scalar`, the member's training loss at the given
            values of its kernels (every other variable as it is), for adversarial
            members such as AWP. Differentiable with respect to the values.
        state: the variables this member created in `build`, as returned there.

    Example:

    ```python
    from keras import ops

    @cactus_keras.compression.register_member("noisy_kernels")
    class NoisyKernels(cactus_keras.compression.CompressionMember):
        # Kernels with uniform noise of +-1% of their scale in training, exact otherwise.

        def compress(self, kernels, context):   # context: a MemberContext
            if not context.training:
                return list(kernels)
            return [w + 0.01 * ops.max(ops.abs(w)) * keras.random.uniform(
                        ops.shape(w), -1.0, 1.0, seed=context.seed_generator)
                    for w in kernels]

    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[NoisyKernels(name="noisy")])
    ```
    """

    name: str
    step: Any
    seed_generator: keras.random.SeedGenerator
    training: bool
    loss: Callable[[Sequence[Any]], Any]
    state: Any = None


class CompressionMember:
    """Base class of a member of the compression set; see the module docstring.

    Args:
        exclude_output: leave the kernel of the layer producing the logits unchanged.
        name: the member's name in metrics (`certified_accuracy_<name>`).

    Subclasses define `compress`, and `build` if they keep state. Register them with
    `@register_member("kind")` so that saved models load and configs can name them.

    Example:

    ```python
    from keras import ops

    @cactus_keras.compression.register_member("sign_magnitude")
    class SignMagnitude(cactus_keras.compression.CompressionMember):
        # Every weight becomes sign(w) * mean |w| of its kernel (straight-through).

        def compress(self, kernels, context):
            def binarized(w):
                return ops.sign(w) * ops.mean(ops.abs(w))
            return [w + ops.stop_gradient(binarized(w) - w) for w in kernels]

    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[SignMagnitude(name="binary")])
    ```
    """

    kind: str | None = None
    # True for a member whose network is its own (see `network_terms`).
    own_network: bool = False

    def __init__(self, exclude_output: bool = False, name: str = "compressed"):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"`name` of a compression member must be an identifier (it becomes part "
                f"of metric names such as certified_accuracy_<name>), got {name!r}."
            )
        self.exclude_output = bool(exclude_output)
        self.name = name

    @property
    def excludes_output(self) -> bool:
        """Whether the output layer's kernel is left out (some methods force it)."""
        return self.exclude_output

    def names(self) -> list[str]:
        return [self.name]

    def select_kernels(self, network: keras.Model) -> list[keras.Variable]:
        return compressible_kernels(network, self.excludes_output)

    def build(
        self,
        kernels: Sequence[keras.Variable],
        add_variable: Callable[..., keras.Variable],
    ) -> Any:
        """Creates the member's state; the returned object is `context.state`."""
        return None

    def compress(self, kernels: Sequence[Any], context: MemberContext) -> list[Any]:
        """The compressed values of `kernels` (tensors, one per kernel, same shapes)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define compress(kernels, context), returning the "
            "compressed values of `kernels`."
        )

    def network_terms(self, values, box, labels, x, context):
        """`(margin lower bounds, clean logits)` of the member's own network over `box`
        at kernel values `values` (only for `own_network = True`)."""
        raise NotImplementedError(
            f"{type(self).__name__} sets own_network = True and must define "
            "network_terms(values, box, labels, x, context)."
        )

    def get_config(self) -> dict[str, Any]:
        # Every __init__ argument stored under its own name, by convention.
        params = inspect.signature(type(self).__init__).parameters
        return {p: getattr(self, p) for p in params if p not in ("self", "args", "kwargs")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CompressionMember:
        return cls(**config)

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


def register_member(kind: str, package: str = "cactus_keras") -> Callable[[type], type]:
    """Registers a `CompressionMember` class under `kind`, and with Keras for saving.

    `kind` is the name configs use for it (`member_from_config({"kind": kind, ...})`).

    Example:

    ```python
    @cactus_keras.compression.register_member("my_quantizer")
    class MyQuantizer(cactus_keras.compression.CompressionMember):
        def compress(self, kernels, context):
            return [cactus_keras.compression.fake_quantize(w, bits=6) for w in kernels]

    model = cactus_keras.CactusModel(net, epsilon=0.1, compression=[MyQuantizer(name="q6")])
    ```
    """

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, CompressionMember)):
            raise TypeError(
                f"register_member({kind!r}) decorates CompressionMember subclasses, got {cls!r}."
            )
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ValueError(
                f"A compression member kind {kind!r} is already registered "
                f"({_REGISTRY[kind].__name__}); choose another kind."
            )
        cls.kind = kind
        _REGISTRY[kind] = cls
        return keras.saving.register_keras_serializable(package=package)(cls)

    return decorator


def unregister_member(kind: str) -> None:
    """Removes the member class registered under `kind` (a no-op for an unknown kind),
    so that configs can no longer name it. Keras's serialization registry keeps the
    class, under its own `package>ClassName` key, which is harmless.

    Example:

    ```python
    cactus_keras.compression.register_member("my_quantizer")(MyQuantizer)
    ...
    cactus_keras.compression.unregister_member("my_quantizer")
    ```
    """
    cls = _REGISTRY.pop(kind, None)
    if cls is not None and cls.kind == kind:
        cls.kind = None


def member_kinds() -> list[str]:
    return sorted(_REGISTRY)


def member_class(kind: str) -> type[CompressionMember] | None:
    """The member class registered under `kind`, or None."""
    return _REGISTRY.get(kind) if isinstance(kind, str) else None


def member_from_config(config: dict[str, Any]) -> CompressionMember:
    """A member from `{"kind": KIND, **settings}` (as in a TOML table)."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _REGISTRY:
        raise ValueError(
            f"Unknown compression member kind {kind!r}; expected one of "
            f"{', '.join(member_kinds())}."
        )
    return _REGISTRY[kind].from_config(config)


def check_members(members: Sequence[CompressionMember]) -> list[CompressionMember]:
    """The members as a list, each checked against the protocol, names distinct."""
    members = list(members)
    for member in members:
        if not isinstance(member, CompressionMember):
            raise TypeError(
                f"Compression member {member!r} is not a "
                "cactus_keras.compression.CompressionMember; members are objects such as "
                "cactus_keras.Pruning(ratio=(0.25, 0.75)) or cactus_keras.AWPQuantization(bits=8), "
                "or a subclass of CompressionMember of your own."
            )
    names = [n for m in members for n in m.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"Compression members need distinct names (`name=`); got {names}.")
    return members
