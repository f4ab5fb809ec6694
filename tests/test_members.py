"""The compression-member protocol: a member written outside the package trains, saves
and loads like the built-in ones; members are checked and registered."""

import keras
import numpy as np
import pytest
from keras import ops

import cactus_keras
from cactus_keras.compression import (
    CompressionMember,
    member_from_config,
    member_kinds,
    register_member,
    unregister_member,
)


class PowerOfTwo(CompressionMember):
    """Power-of-two weights (sign * 2**round(log2|w|), exponents at least
    `min_exponent`), trained through a straight-through estimator."""

    def __init__(self, min_exponent=-8, exclude_output=False, name="pow2"):
        super().__init__(exclude_output=exclude_output, name=name)
        self.min_exponent = int(min_exponent)

    def compress(self, kernels, context):
        def nearest_power(w):
            exponent = ops.round(ops.log2(ops.maximum(ops.abs(w), 2.0 ** (self.min_exponent - 1))))
            power = ops.where(exponent < self.min_exponent, 0.0, 2.0 ** exponent)
            return ops.sign(w) * power

        return [w + ops.stop_gradient(nearest_power(w) - w) for w in kernels]


@pytest.fixture(autouse=True)
def power_of_two_registered():
    """The test member is registered for this module's tests only, so that it does not
    leak into the kinds other test modules see."""
    register_member("test_power_of_two", package="cactus_keras_tests")(PowerOfTwo)
    yield
    unregister_member("test_power_of_two")


def test_unregistering_a_member_removes_its_kind():
    assert "test_power_of_two" in member_kinds()
    unregister_member("test_power_of_two")
    assert "test_power_of_two" not in member_kinds() and PowerOfTwo.kind is None
    with pytest.raises(ValueError, match="Unknown compression member kind 'test_power_of_two'"):
        member_from_config({"kind": "test_power_of_two"})
    unregister_member("test_power_of_two")  # a second time is a no-op
    register_member("test_power_of_two", package="cactus_keras_tests")(PowerOfTwo)
    assert isinstance(member_from_config({"kind": "test_power_of_two"}), PowerOfTwo)


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 12, 12, 1)).astype("float32"), rng.integers(0, 3, n)


def _model(**kwargs):
    keras.utils.set_random_seed(0)
    net = cactus_keras.models.cnn3((12, 12, 1), 3)
    model = cactus_keras.CactusModel(net, 0.02, compression=[PowerOfTwo(min_exponent=-6)], **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


@pytest.mark.slow
def test_a_user_member_trains_saves_and_loads_with_identical_predictions(tmp_path):
    model = _model()
    x, y = _data()
    before = [np.asarray(v.value).copy() for v in model.network.trainable_variables]
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert {"certified_accuracy_pow2", "clean_accuracy_pow2"} <= set(history.history)
    after = [np.asarray(v.value) for v in model.network.trainable_variables]
    assert all(not np.allclose(a, b) for a, b in zip(after, before))

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    (member,) = loaded.compression
    assert isinstance(member, PowerOfTwo) and member.min_exponent == -6 and member.name == "pow2"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    a = model.evaluate(x, y, verbose=0, return_dict=True)
    b = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert a["certified_accuracy_pow2"] == b["certified_accuracy_pow2"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_a_user_member_gives_the_compressed_network_it_stands_for():
    model = _model()
    x, y = _data()
    network = model.apply_compression("pow2")
    for kernel in cactus_keras.compression.compressible_kernels(network):
        w = np.abs(np.asarray(kernel.value))
        nonzero = w[w > 0]
        np.testing.assert_allclose(np.log2(nonzero), np.round(np.log2(nonzero)), atol=1e-6)
    # The member's metrics are those of that network, certified on its own.
    fresh = _model()
    metrics = fresh.evaluate(x, y, verbose=0, return_dict=True)
    result = cactus_keras.certify(network, x, y, 0.02)
    assert metrics["certified_accuracy_pow2"] == pytest.approx(result.certified_accuracy, abs=1e-6)
    assert metrics["clean_accuracy_pow2"] == pytest.approx(result.clean_accuracy, abs=1e-6)


def test_members_are_checked_and_found_by_kind():
    net = cactus_keras.models.cnn3((12, 12, 1), 3)
    with pytest.raises(TypeError, match="not a cactus_keras.compression.CompressionMember"):
        cactus_keras.CactusModel(net, 0.02, compression=["prune"])
    with pytest.raises(ValueError, match="distinct names"):
        cactus_keras.CactusModel(net, 0.02, compression=[PowerOfTwo(), PowerOfTwo()])
    with pytest.raises(ValueError, match="identifier"):
        PowerOfTwo(name="two words")
    member = member_from_config({"kind": "pruning", "ratio": [0.5, 0.9], "name": "wide"})
    assert isinstance(member, cactus_keras.Pruning) and member.ratio == (0.5, 0.9)
    assert isinstance(member_from_config({"kind": "test_power_of_two"}), PowerOfTwo)
    with pytest.raises(ValueError, match="Unknown compression member kind 'nope'"):
        member_from_config({"kind": "nope"})
    with pytest.raises(ValueError, match="already registered"):
        register_member("pruning")(PowerOfTwo)
    with pytest.raises(TypeError, match="CompressionMember subclasses"):
        register_member("plain")(object)


# Settings other than the defaults for each built-in kind (a kind missing here fails
# the test below, so a new member gets its round trip checked).
_NON_DEFAULT_SETTINGS = {
    "pruning": {"ratio": [0.3, 0.6], "pruning_method": "global_l2_structured", "name": "p"},
    "fixed_mask_pruning": {"ratio": 0.4, "pruning_method": "local_l1", "name": "f"},
    "awp_quantization": {"bits": 4, "awp_radius": 0.25, "awp_steps": 2, "per_channel": False, "name": "q"},
    "straight_through_quantization": {"bits": 6, "per_channel": False, "name": "s"},
    "int8_file": {"rounding": "floor_ceil", "range_momentum": 0.9, "name": "i8"},
    "test_power_of_two": {"min_exponent": -4, "exclude_output": True, "name": "pow"},
}


@pytest.mark.parametrize("kind", sorted(_NON_DEFAULT_SETTINGS))
def test_every_member_kind_round_trips_through_config_and_tables(kind):
    from cactus_keras.compression import member_table, members_from_tables

    assert set(member_kinds()) <= set(_NON_DEFAULT_SETTINGS), "give the new kind settings above"
    member = member_from_config({"kind": kind, **_NON_DEFAULT_SETTINGS[kind]})
    assert member.kind == kind
    config = member.get_config()
    again = type(member).from_config(config)
    assert again.get_config() == config
    table = member_table(member)
    assert table["kind"] == kind
    (from_table,) = members_from_tables([table])
    assert type(from_table) is type(member) and member_table(from_table) == table
    # Through Keras serialization too (how a saved CactusModel stores its members).
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(member))
    assert type(restored) is type(member) and restored.get_config() == config


def test_the_built_in_member_kinds_are_the_vocabulary():
    from cactus_keras import vocabulary

    built_in = [k for k in member_kinds() if k != "test_power_of_two"]
    assert sorted(built_in) == sorted(vocabulary.MEMBER_KINDS)
    assert cactus_keras.AWPQuantization.kind == vocabulary.AWP_QUANTIZATION == "awp_quantization"
