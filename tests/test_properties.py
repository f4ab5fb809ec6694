"""Properties checked on generated inputs (hypothesis): mask counts under ties, fake
quantization, member tables. Few examples each, to keep the suite fast."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cactus_keras
from cactus_keras.compression import (
    PRUNING_METHODS,
    fake_quantize,
    magnitude_masks,
    member_table,
    members_from_tables,
    quantization_scale,
)

FAST = settings(max_examples=25, deadline=None, derandomize=True)

# Kernels with many ties: a few distinct magnitudes, signs mixed.
_tied_values = st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0])
_kernel = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4).flatmap(
    lambda shape: hnp.arrays("float32", shape, elements=_tied_values))


@FAST
@given(kernels=st.lists(_kernel, min_size=1, max_size=3),
       ratio=st.floats(0.0, 0.99), method=st.sampled_from(PRUNING_METHODS))
def test_masks_prune_exactly_the_rounded_count_whatever_the_ties(kernels, ratio, method):
    masks = [np.asarray(m) for m in magnitude_masks(kernels, ratio, method)]
    assert all(m.shape == k.shape for m, k in zip(masks, kernels))
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    if method == "local_l1":
        for mask, kernel in zip(masks, kernels):
            assert np.sum(mask == 0) == round(np.float32(ratio) * kernel.size)
        return
    if method == "global_l1":
        total = sum(k.size for k in kernels)
        assert sum(np.sum(m == 0) for m in masks) == round(np.float32(ratio) * total)
        pruned = np.concatenate([np.abs(k)[m == 0] for k, m in zip(kernels, masks)])
        kept = np.concatenate([np.abs(k)[m == 1] for k, m in zip(kernels, masks)])
        # Magnitude order: nothing kept is smaller than anything pruned.
        assert not (pruned.size and kept.size) or pruned.max() <= kept.min()
        return
    # Structured: whole output units, counted over all kernels.
    units = [m.reshape(-1, m.shape[-1]) for m in masks]
    assert all(np.all(u == u[:1]) for u in units)
    total = sum(u.shape[1] for u in units)
    assert sum(np.sum(u[0] == 0) for u in units) == round(np.float32(ratio) * total)


_float_kernel = hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5).flatmap(
    lambda shape: hnp.arrays("float32", shape, elements=st.floats(
        -4, 4, width=32, allow_subnormal=False)))


@FAST
@given(kernel=_float_kernel, bits=st.integers(2, 8), per_channel=st.booleans())
def test_fake_quantize_is_idempotent_with_error_at_most_half_a_step(kernel, bits, per_channel):
    once = np.asarray(fake_quantize(kernel, bits, per_channel))
    twice = np.asarray(fake_quantize(once, bits, per_channel))
    step = np.asarray(quantization_scale(kernel, bits, per_channel))
    tolerance = 1e-6 * np.max(np.abs(kernel), initial=1.0)
    np.testing.assert_allclose(twice, once, rtol=0, atol=tolerance)
    assert np.all(np.abs(once - kernel) <= step / 2 + tolerance)
    # On the grid: integer multiples of the step, at most 2**(bits-1) - 1 of them.
    codes = once / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert np.all(np.abs(np.round(codes)) <= 2 ** (bits - 1) - 1)


_ratio = st.floats(0.0, 0.95).map(lambda r: round(r, 3))
_member = st.one_of(
    st.builds(lambda low, width, method: cactus_keras.Pruning(
        ratio=(low, round(min(low + width, 0.99), 3)), pruning_method=method),
        _ratio, _ratio, st.sampled_from(PRUNING_METHODS)),
    st.builds(lambda ratio, method: cactus_keras.FixedMaskPruning(ratio, method),
              _ratio, st.sampled_from(PRUNING_METHODS)),
    st.builds(lambda bits, radius, steps, per_channel: cactus_keras.AWPQuantization(
        bits=bits, awp_radius=radius, awp_steps=steps, per_channel=per_channel),
        st.integers(2, 8), st.floats(0.0, 2.0).map(lambda r: round(r, 3)),
        st.integers(1, 4), st.booleans()),
    st.builds(lambda bits, per_channel: cactus_keras.StraightThroughQuantization(
        bits, per_channel=per_channel), st.integers(2, 8), st.booleans()),
)


@FAST
@given(members=st.lists(_member, min_size=1, max_size=4))
def test_member_tables_round_trip(members):
    # Give each member its own name, so that the set is valid whatever was drawn.
    members = [type(m).from_config({**m.get_config(), "name": f"m{i}"})
               for i, m in enumerate(members)]
    tables = [member_table(m) for m in members]
    again = members_from_tables(tables)
    assert [member_table(m) for m in again] == tables
    # Without names, the set builds with distinct names and the same settings, or (two
    # members whose settings name them alike) asks for `name`, as documented.
    unnamed = [{k: v for k, v in t.items() if k != "name"} for t in tables]
    try:
        rebuilt = members_from_tables(unnamed)
    except ValueError as error:
        assert "give each member its own `name`" in str(error)
        return
    names = [n for m in rebuilt for n in m.names()]
    assert len(set(names)) == len(names)
    assert [{k: v for k, v in member_table(m).items() if k != "name"} for m in rebuilt] == unnamed


_target = st.one_of(
    st.builds(lambda r, m: (f"prune:{r:g}" if m == "global_l1" else f"prune:{r:g}:{m}"),
              st.floats(0.01, 0.99).map(lambda r: round(r, 2)), st.sampled_from(PRUNING_METHODS)),
    st.integers(2, 8).map(lambda b: f"quantize:{b}"),
)


@FAST
@given(texts=st.lists(_target, min_size=1, max_size=4, unique=True))
def test_targets_parse_back_from_their_spec(texts):
    from cactus_keras import vocabulary
    from cactus_keras.tuning import parse_targets

    targets = parse_targets(",".join(texts))
    assert [t.spec for t in targets] == texts
    assert parse_targets([t.spec for t in targets]) == targets
    assert all(t.form in vocabulary.EVALUATED_FORMS for t in targets)
    # Keys are metric suffixes: distinct targets, distinct keys.
    assert len({t.key for t in targets}) == len(targets)


@FAST
@given(ratio=st.tuples(_ratio, _ratio).map(sorted), method=st.sampled_from(PRUNING_METHODS),
       bits=st.integers(2, 8), radius=st.floats(0.0, 2.0).map(lambda r: round(r, 3)))
def test_cli_member_flags_parse_to_the_tables_they_write(ratio, method, bits, radius):
    from cactus_keras.cli import parse_member

    low, high = ratio
    assert parse_member(f"pruning:ratio={low:g}-{high:g},pruning_method={method}") == {
        "kind": "pruning", "ratio": [low, high], "pruning_method": method}
    assert parse_member(f"awp_quantization:bits={bits},awp_radius={radius!r},per_channel=false") == {
        "kind": "awp_quantization", "bits": bits, "awp_radius": radius, "per_channel": False}
