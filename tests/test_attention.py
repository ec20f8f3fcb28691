"""Tests for jnn.layers.attention and jnn.layers.positional: NumPy references, flax.linen's
MultiHeadDotProductAttention with the same weights, masks, RoPE, dropout and error messages."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.layers.attention import attention_weights, multi_head_attention, reference_attention
from jnn.layers.positional import (apply_rope, learned_positional_embedding, sinusoidal_encoding,
                                   sinusoidal_table)

nn = pytest.importorskip("flax.linen")  # flax is a test extra, not a jnn dependency

KEY = jax.random.key(0)
B, T, F = 2, 5, 8
LENGTHS = jnp.array([5, 3])


def _rand(shape, seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _random_params(params, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape).astype(a.dtype)), params)


def np_attention(q, k, v, mask=None):
    """Direct NumPy (float64) attention with grouped heads; returns (out, weights)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", w, v), w


def np_mask(causal, lengths, t=T):
    mask = np.ones((1, 1, t, t), bool)
    if causal:
        mask = mask & np.tril(np.ones((t, t), bool))
    if lengths is not None:
        mask = mask & (np.arange(t) < np.asarray(lengths)[:, None])[:, None, None, :]
    return mask


def to_flax(params, num_heads, repeat_kv=1):
    """jnn's [F, N*H] / [N*H, F] matrices as flax DenseGeneral kernels [F, N, H] / [N, H, F];
    key/value heads repeated ``repeat_kv`` times (grouped heads as plain multi-head)."""
    f, nh = params["query"]["w"].shape
    h = nh // num_heads
    out = {}
    for name in ("query", "key", "value"):
        w = params[name]["w"].reshape(f, -1, h)
        b = params[name]["b"].reshape(-1, h)
        r = 1 if name == "query" else repeat_kv
        out[name] = {"kernel": jnp.repeat(w, r, axis=1), "bias": jnp.repeat(b, r, axis=0)}
    out["out"] = {"kernel": params["out"]["w"].reshape(num_heads, h, f), "bias": params["out"]["b"]}
    return {"params": out}


def reference_attention_layer(params, x, heads):
    """The layer's forward pass in NumPy (no masks)."""
    b, t, _ = x.shape
    proj = lambda name: (np.asarray(x) @ params[name]["w"] + params[name]["b"]).reshape(b, t, heads, -1)
    out, _ = np_attention(proj("query"), proj("key"), proj("value"))
    return out.reshape(b, t, -1) @ params["out"]["w"] + params["out"]["b"]


# ---- values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal,lengths", [(False, None), (True, None), (False, [4, 2]), (True, [4, 2])])
def test_reference_attention_matches_numpy(kv_heads, causal, lengths):
    q, k, v = _rand((B, T, 4, 3), 0), _rand((B, T, kv_heads, 3), 1), _rand((B, T, kv_heads, 3), 2)
    mask = np_mask(causal, lengths)
    expected, expected_w = np_attention(q, k, v, mask)
    np.testing.assert_allclose(reference_attention(q, k, v, jnp.asarray(mask)), expected, atol=1e-5)
    w = attention_weights(q, k, jnp.asarray(mask))
    np.testing.assert_allclose(w, expected_w, atol=1e-6)
    assert np.all(np.asarray(w)[~np.broadcast_to(mask, w.shape)] == 0.0)   # exactly zero


@pytest.mark.parametrize("causal,lengths", [(False, None), (True, None), (False, LENGTHS), (True, LENGTHS)])
def test_matches_flax_multi_head_attention(causal, lengths):
    attn = multi_head_attention(2, causal=causal)
    x = _rand((B, T, F))
    params = _random_params(attn.init(KEY, x)[0])
    y = jax.jit(lambda p, x, lengths: attn.apply(p, {}, x, lengths=lengths)[0])(params, x, lengths)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=F, out_features=F)
    mask = np_mask(causal, lengths)
    expected = jax.jit(flax_mha.apply)(to_flax(params, 2), x, mask=jnp.asarray(mask))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    if not (causal and lengths is not None):
        return
    # The float64 path (explicit einsum + softmax) agrees too.
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        y64 = jax.jit(lambda p, x: attn.apply(p, {}, x, lengths=lengths)[0])(p64, x.astype(jnp.float64))
        assert y64.dtype == jnp.float64
        np.testing.assert_allclose(y64, expected, atol=1e-5)


def test_grouped_kv_heads_match_flax_with_repeated_kv_weights():
    causal = True
    attn = multi_head_attention(4, num_kv_heads=2, head_size=3, causal=causal)
    x = _rand((B, T, F), 3)
    params = _random_params(attn.init(KEY, x)[0])
    assert params["key"]["w"].shape == (F, 6) and params["query"]["w"].shape == (F, 12)
    y = jax.jit(lambda p, x: attn.apply(p, {}, x, lengths=LENGTHS)[0])(params, x)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=12, out_features=F)
    expected = jax.jit(flax_mha.apply)(to_flax(params, 4, repeat_kv=2), x, mask=jnp.asarray(np_mask(causal, LENGTHS)))
    np.testing.assert_allclose(y, expected, atol=1e-5)


def _np_rope(x, positions, base=10000.0, dtype=np.float64):
    """RoPE as complex multiplication: pairs (i, i + H/2) are the real/imaginary parts; angles and
    values in ``dtype`` (float32 mimics float32 angles)."""
    x = np.asarray(x, dtype)
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    inv_freq = np.power(dtype(base), -np.arange(half, dtype=dtype) / dtype(half))
    angles = np.asarray(positions).astype(dtype)[..., None] * inv_freq
    z = z * np.exp(1j * angles)[..., None, :]
    return np.concatenate([z.real, z.imag], axis=-1)


def test_apply_rope_matches_complex_rotation_and_is_relative():
    x = _rand((B, T, 2, 6))
    np.testing.assert_allclose(apply_rope(x, jnp.arange(T)), _np_rope(x, np.arange(T)), atol=1e-5)
    positions = jnp.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    np.testing.assert_allclose(apply_rope(x, positions), _np_rope(x, np.asarray(positions)), atol=1e-4)
    # <rope(q, m), rope(k, n)> depends on m - n only.
    q, k = _rand((1, 1, 1, 6), 1), _rand((1, 1, 1, 6), 2)
    dot = lambda m, n: float(jnp.sum(apply_rope(q, jnp.array([m])) * apply_rope(k, jnp.array([n]))))
    assert dot(7, 3) == pytest.approx(dot(104, 100), abs=1e-4)
    assert dot(7, 3) != pytest.approx(dot(7, 4), abs=1e-3)


def test_rope_attention_matches_reference_on_rotated_heads():
    attn = multi_head_attention(2, num_kv_heads=1, causal=True, rope=True)
    x = _rand((B, T, F), 4)
    params = _random_params(attn.init(KEY, x)[0])
    y = jax.jit(lambda p, x: attn.apply(p, {}, x)[0])(params, x)
    proj = lambda name, heads: (np.asarray(x) @ params[name]["w"] + params[name]["b"]).reshape(B, T, heads, -1)
    q, k = _np_rope(proj("query", 2), np.arange(T)), _np_rope(proj("key", 1), np.arange(T))
    out, _ = np_attention(q, k, proj("value", 1), np_mask(True, None))
    expected = out.reshape(B, T, -1) @ params["out"]["w"] + params["out"]["b"]
    np.testing.assert_allclose(y, expected, atol=1e-4)


# ---- masks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_padded_positions_do_not_change_valid_outputs(causal):
    attn = multi_head_attention(2, causal=causal)
    x = _rand((B, T, F))
    params = attn.init(KEY, x)[0]
    changed = x.at[1, 3:].set(100.0)                     # example 1 has length 3
    run = jax.jit(lambda x: attn.apply(params, {}, x, lengths=LENGTHS)[0])
    np.testing.assert_array_equal(run(x)[:, :3], run(changed)[:, :3])
    np.testing.assert_array_equal(run(x)[0], run(changed)[0])
    if not causal:  # without lengths the padding is attended to
        plain = jax.jit(lambda x: attn.apply(params, {}, x)[0])
        assert not np.allclose(plain(x)[1, :3], plain(changed)[1, :3])


def test_causal_output_at_t_ignores_later_positions():
    attn = multi_head_attention(2, causal=True, rope=True)
    x = _rand((B, T, F))
    params = attn.init(KEY, x)[0]
    run = jax.jit(lambda x: attn.apply(params, {}, x)[0])
    y = run(x)
    for t in range(T - 1):
        changed = x.at[:, t + 1:].set(_rand((B, T - t - 1, F), 10 + t))
        y2 = run(changed)
        np.testing.assert_array_equal(y[:, : t + 1], y2[:, : t + 1])
        assert not np.allclose(y[:, t + 1:], y2[:, t + 1:])


# ---- dropout --------------------------------------------------------------------------------

def test_attention_dropout_is_unbiased_and_needs_a_key():
    attn = multi_head_attention(2, dropout_rate=0.5)
    x = _rand((1, 3, 4))
    params = attn.init(KEY, x)[0]
    eval_y = jax.jit(lambda x: attn.apply(params, {}, x, key=KEY, train=False)[0])(x)
    np.testing.assert_allclose(eval_y, reference_attention_layer(params, x, 2), atol=1e-5)
    train = jax.jit(jax.vmap(lambda k: attn.apply(params, {}, x, key=k, train=True)[0]))
    ys = train(jax.random.split(KEY, 2000))
    assert not np.allclose(ys[0], ys[1])
    np.testing.assert_allclose(ys[:2], train(jax.random.split(KEY, 2000)[:2]), atol=1e-6)  # same keys, same masks
    np.testing.assert_allclose(ys.mean(0), eval_y, atol=0.05)   # inverted dropout: same expectation
    with pytest.raises(ValueError, match=r"multi_head_attention: train=True with dropout_rate=0.5 needs a "
                                         r"PRNG key: call apply\(\.\.\., key=jax.random.key\(0\)"):
        attn.apply(params, {}, x, train=True)


def test_bfloat16_input_computes_in_bfloat16_with_float32_params():
    attn = multi_head_attention(2, causal=True)
    x = _rand((B, T, F))
    params = attn.init(KEY, x.astype(jnp.bfloat16))[0]
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
    run = jax.jit(lambda x: attn.apply(params, {}, x)[0])
    y16 = run(x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), run(x), atol=0.05)


# ---- positional encodings -------------------------------------------------------------------

def test_sinusoidal_table_matches_formula():
    pos, i = np.arange(7)[:, None], np.arange(3)[None, :]
    angle = pos / 10000.0 ** (2 * i / 6)
    expected = np.stack([np.sin(angle), np.cos(angle)], -1).reshape(7, 6)
    np.testing.assert_allclose(sinusoidal_table(jnp.arange(7), 6), expected, atol=1e-6)
    y, _ = sinusoidal_encoding(10).apply({}, {}, jnp.ones((2, 7, 6)))
    np.testing.assert_allclose(y, np.broadcast_to(1.0 + expected, y.shape), atol=1e-6)
    assert sinusoidal_table(jnp.arange(3), 5).shape == (3, 5)


def test_learned_positional_embedding_adds_table_rows():
    layer = learned_positional_embedding(6)
    params, _ = layer.init(KEY, jnp.zeros((1, 4, 3)))
    assert params["embedding"].shape == (6, 3)
    x = _rand((2, 4, 3))
    np.testing.assert_allclose(layer.apply(params, {}, x)[0], x + params["embedding"][None, :4], atol=1e-6)
    p_none, _ = learned_positional_embedding(None).init(KEY, jnp.zeros((1, 9, 3)))
    assert p_none["embedding"].shape == (9, 3)


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"num_heads": 0}, r"multi_head_attention: num_heads must be a positive integer, got 0"),
    ({"num_heads": 2, "head_size": 1.5}, r"multi_head_attention: head_size must be a positive integer, got 1.5"),
    ({"num_heads": 4, "num_kv_heads": 3}, r"multi_head_attention: num_kv_heads \(3\) must divide num_heads \(4\)"),
    ({"num_heads": 2, "causal": 1}, r"multi_head_attention: causal must be True or False, got 1"),
    ({"num_heads": 2, "dropout_rate": 1.0}, r"multi_head_attention: dropout_rate is the probability of dropping"),
    ({"num_heads": 2, "rope_base": 1}, r"multi_head_attention: rope_base must be a number > 1, got 1"),
    ({"num_heads": 2, "implementation": "flash"}, r"implementation must be one of None, 'xla', 'cudnn', got 'flash'"),
    ({"num_heads": 2, "name": "attn", "num_kv_heads": -1}, r"attn: num_kv_heads must be a positive integer"),
])
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multi_head_attention(**kwargs)


def test_init_and_apply_errors():
    with pytest.raises(ValueError, match=r"multi_head_attention: the input width 8 must be divisible by "
                                         r"num_heads=3, or pass head_size"):
        multi_head_attention(3).init(KEY, jnp.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match=r"multi_head_attention: rope=True needs an even head size, got 3"):
        multi_head_attention(2, head_size=3, rope=True).init(KEY, jnp.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match=r"multi_head_attention: expected a floating-point sequence "
                                         r"\[B, T, F\], got float32\[2, 8\]"):
        multi_head_attention(2).init(KEY, jnp.zeros((2, 8)))
    attn = multi_head_attention(2, name="self_attn")
    params, _ = attn.init(KEY, jnp.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match=r"self_attn: expected input of shape \[B, T, 8\] \(the width it was "
                                         r"initialized with\), got \(1, 2, 6\)"):
        attn.apply(params, {}, jnp.zeros((1, 2, 6)))
    with pytest.raises(ValueError, match=r"self_attn: expected lengths as integers of shape \[1\] \(valid "
                                         r"positions per example\), got float32\[1\]"):
        attn.apply(params, {}, jnp.zeros((1, 2, 8)), lengths=jnp.array([2.0]))


def test_positional_errors():
    with pytest.raises(ValueError, match=r"sinusoidal_encoding: max_len must be a positive integer, got 0"):
        sinusoidal_encoding(0)
    with pytest.raises(ValueError, match=r"learned_positional_embedding: max_len must be a positive integer"):
        learned_positional_embedding(2.5)
    with pytest.raises(ValueError, match=r"sinusoidal_encoding: base must be a number > 1, got 0.5"):
        sinusoidal_encoding(4, base=0.5)
    with pytest.raises(ValueError, match=r"sinusoidal_encoding: expected at most max_len=4 positions, got a "
                                         r"sequence of length 5"):
        sinusoidal_encoding(4).apply({}, {}, jnp.zeros((1, 5, 2)))
    layer = learned_positional_embedding(4, name="pos")
    params, _ = layer.init(KEY, jnp.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match=r"pos: expected a sequence \[B, T, F\], got shape \(4, 3\)"):
        layer.apply(params, {}, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"pos: expected input of shape \[B, T, 3\] \(the width it was "
                                         r"initialized with\), got \(1, 4, 2\)"):
        layer.apply(params, {}, jnp.zeros((1, 4, 2)))
    with pytest.raises(ValueError, match=r"apply_rope: expected heads \[B, T, N, H\] with H even, got shape "
                                         r"\(1, 2, 1, 3\)"):
        apply_rope(jnp.zeros((1, 2, 1, 3)), jnp.arange(2))
    with pytest.raises(ValueError, match=r"apply_rope: expected integer positions of shape \[2\] or \[1, 2\], "
                                         r"got float32\[2\]"):
        apply_rope(jnp.zeros((1, 2, 1, 4)), jnp.arange(2.0))
