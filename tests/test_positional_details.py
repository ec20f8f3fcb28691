"""jnn.layers.positional in detail, against NumPy: the precision the angles are computed in, dtypes,
batched positions, the default bases and initializers, checks at init, kinds and names (the
mutation run's survivors, tests/MUTATION.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.positional import apply_rope, learned_positional_embedding, sinusoidal_encoding, sinusoidal_table
from test_attention import _np_rope

KEY = jax.random.key(0)
FAR = np.array([0, 1, 7, 99_999, 300_000])   # far positions: float32 angles there are off by ~1e-3 rad


def _np_sinusoidal(positions, features, base=10000.0, dtype=np.float64):
    half = (features + 1) // 2
    inv_freq = np.power(dtype(base), dtype(-2.0) * np.arange(half, dtype=dtype) / dtype(features))
    angles = positions.astype(dtype)[..., None] * inv_freq
    table = np.stack([np.sin(angles), np.cos(angles)], -1).reshape(*angles.shape[:-1], 2 * half)
    return table[..., :features]


@jax.enable_x64(True)
def test_sinusoidal_angles_are_float32_for_float32_and_float64_for_float64():
    # float32 angles: equal to NumPy's float32 angles up to sin/cos rounding (~1e-7), but ~1e-3 from
    # the exact float64 angles at position 300,000, even where the default float is float64
    table32 = np.asarray(sinusoidal_table(jnp.asarray(FAR), 6, jnp.float32))
    assert table32.dtype == np.float32
    np.testing.assert_allclose(table32, _np_sinusoidal(FAR, 6, dtype=np.float32), atol=1e-6)
    assert np.abs(table32 - _np_sinusoidal(FAR, 6)).max() > 1e-4
    table64 = np.asarray(sinusoidal_table(jnp.asarray(FAR), 6, jnp.float64))
    assert table64.dtype == np.float64
    np.testing.assert_allclose(table64, _np_sinusoidal(FAR, 6), atol=1e-11)


def test_sinusoidal_table_dtypes_odd_widths_bases_and_batched_positions():
    positions = np.array([[0, 3, 5], [2, 2, 9]])
    table = sinusoidal_table(jnp.asarray(positions), 5, jnp.bfloat16, base=100.0)
    assert table.shape == (2, 3, 5) and table.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(table, np.float32), _np_sinusoidal(positions, 5, base=100.0), atol=1e-2)
    np.testing.assert_allclose(sinusoidal_table(jnp.arange(4), 8), _np_sinusoidal(np.arange(4), 8), atol=1e-6)


def test_sinusoidal_encoding_adds_the_table_in_the_input_dtype_with_its_base():
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32)
    layer = sinusoidal_encoding(8, base=50.0)
    assert layer.init(KEY, jnp.asarray(x)) == ({}, {})
    np.testing.assert_allclose(layer.apply({}, {}, jnp.asarray(x))[0], x + _np_sinusoidal(np.arange(6), 4, base=50.0),
                               atol=1e-5)
    y = layer.apply({}, {}, jnp.asarray(x, jnp.bfloat16))[0]
    assert y.dtype == jnp.bfloat16


def test_sinusoidal_encoding_checks_its_input_at_init_and_apply_and_is_named():
    with pytest.raises(ValueError, match=r"^sinusoidal_encoding: max_len must be a positive integer, got None"):
        sinusoidal_encoding(None)
    layer = sinusoidal_encoding(4, name="pos")
    assert (layer.kind, layer.name) == ("sinusoidal_encoding", "pos")
    assert sinusoidal_encoding(4).kind == "sinusoidal_encoding" and sinusoidal_encoding(4).name is None
    for bad, message in [(jnp.zeros((2, 4)), r"expected a sequence \[B, T, F\], got shape \(2, 4\)"),
                         (jnp.zeros((1, 5, 2)), r"expected at most max_len=4 positions, got a sequence of length 5"),
                         (jnp.zeros((1, 3, 2), jnp.int32), r"expected a floating-point input, got int32")]:
        for call in (lambda: layer.init(KEY, jax.ShapeDtypeStruct(bad.shape, bad.dtype)),
                     lambda: layer.apply({}, {}, bad)):
            with pytest.raises(ValueError, match="^pos: " + message):
                call()


def test_learned_positional_embedding_initializers_dtypes_and_names():
    x = jnp.zeros((2, 5, 40))
    params, _ = learned_positional_embedding(50).init(KEY, x)
    assert 0.015 < float(np.std(params["embedding"])) < 0.025   # normal(0.02) by default
    zeros, _ = learned_positional_embedding(50, init="zeros").init(KEY, x)
    assert not np.asarray(zeros["embedding"]).any()
    with pytest.raises(ValueError, match=r"^pe init: unknown initializer 'nope'"):
        learned_positional_embedding(5, init="nope", name="pe")
    layer = learned_positional_embedding(8, name="pe")
    assert (layer.kind, layer.name) == ("learned_positional_embedding", "pe")
    assert learned_positional_embedding(8).name is None
    params, _ = jnn.serial(layer).init(KEY, jnp.zeros((1, 3, 2)))
    assert list(params) == ["pe"]
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.float64):
            params, _ = layer.init(KEY, jnp.zeros((1, 3, 2), dtype))
            assert params["embedding"].dtype == dtype
    params, _ = layer.init(KEY, jnp.zeros((1, 3, 2), jnp.bfloat16))
    assert params["embedding"].dtype == jnp.float32      # params stay float32 for half-precision inputs
    y = layer.apply(params, {}, jnp.ones((1, 3, 2), jnp.bfloat16))[0]
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), 1 + np.asarray(params["embedding"][None, :3]), atol=1e-2)


def test_learned_positional_embedding_checks_at_init_and_apply():
    layer = learned_positional_embedding(4, name="pe")
    for bad, message in [(jnp.zeros((2, 4)), r"expected a sequence \[B, T, F\]"),
                         (jnp.zeros((1, 5, 2)), r"expected at most max_len=4 positions, got a sequence of length 5")]:
        with pytest.raises(ValueError, match="^pe: " + message):
            layer.init(KEY, bad)
    params, _ = learned_positional_embedding(None).init(KEY, jnp.zeros((1, 3, 2)))   # the length seen at init
    with pytest.raises(ValueError, match=r"^learned_positional_embedding: expected at most max_len=3 positions, "
                                         r"got a sequence of length 4"):
        learned_positional_embedding(None).apply(params, {}, jnp.zeros((1, 4, 2)))


def test_rope_default_base_and_float32_angles_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    positions = np.array([0, 100, 250])
    np.testing.assert_allclose(apply_rope(jnp.asarray(x), jnp.asarray(positions)), _np_rope(x, positions), atol=2e-5)
    far = FAR[-3:]
    with jax.enable_x64(True):
        rotated = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(far)))
        assert rotated.dtype == np.float32
        np.testing.assert_allclose(rotated, _np_rope(x, far, dtype=np.float32), atol=1e-6)
        assert np.abs(rotated - _np_rope(x, far)).max() > 1e-4
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(apply_rope(jnp.asarray(x64), jnp.asarray(far)), _np_rope(x64, far), atol=1e-10)


@pytest.mark.parametrize("key", ["rope_type", "type"])   # transformers' key, and its older name
def test_linear_rope_scaling_stretches_positions_by_the_factor(key):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 2, 8)), jnp.float32)
    scaled = jnn.layers.positional.apply_rope(x, 2 * jnp.arange(6), scaling={key: "linear", "factor": 2.0})
    np.testing.assert_allclose(scaled, jnn.layers.positional.apply_rope(x, jnp.arange(6)), rtol=1e-5, atol=1e-6)
