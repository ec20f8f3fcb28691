"""Tests for jnn.layers.transformer: blocks and models against a NumPy forward pass, causality,
padding, the cached decode path, the ViT, a short training run, and error messages."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import erf

import jnn
from jnn.layers.transformer import decoder_block, encoder_block
from jnn.nets import decoder_lm, vit_classifier

KEY = jax.random.key(0)


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _perturbed(params, seed=1, scale=0.1):
    """Params plus noise, so norm scales/offsets and biases are not their trivial init values."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: a + jnp.asarray(rng.normal(0, scale, a.shape).astype(a.dtype)), params)


# ---- NumPy reference (float64) ----------------------------------------------------------------

def np_ln(x, p, eps=1e-5):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["offset"])


def np_rope(x, positions, base=10000.0):
    half = x.shape[-1] // 2
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * positions[:, None] * base ** (-np.arange(half) / half))[:, None]
    return np.concatenate([z.real, z.imag], axis=-1)


def np_attention(p, x, heads, kv_heads, causal, lengths=None, rope=False):
    b, t, _ = x.shape
    proj = lambda name, n: (x @ np.asarray(p[name]["w"], np.float64) + np.asarray(p[name]["b"])).reshape(b, t, n, -1)
    q, k, v = proj("query", heads), proj("key", kv_heads), proj("value", kv_heads)
    if rope:
        q, k = np_rope(q, np.arange(t)), np_rope(k, np.arange(t))
    k, v = np.repeat(k, heads // kv_heads, 2), np.repeat(v, heads // kv_heads, 2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    mask = np.ones((b, 1, t, t), bool)
    if causal:
        mask &= np.tril(np.ones((t, t), bool))
    if lengths is not None:
        mask &= (np.arange(t) < np.asarray(lengths)[:, None])[:, None, None, :]
    logits = np.where(mask, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    out = np.einsum("bnts,bsnh->btnh", w / w.sum(-1, keepdims=True), v).reshape(b, t, -1)
    return out @ np.asarray(p["out"]["w"]) + np.asarray(p["out"]["b"])


def np_block(p, x, heads, kv_heads=None, causal=False, lengths=None, rope=False):
    x = np.asarray(x, np.float64)
    x = x + np_attention(p["attention"], np_ln(x, p["norm_0"]), heads, kv_heads or heads, causal, lengths, rope)
    m = p["mlp"]
    h = np_ln(x, p["norm_1"]) @ np.asarray(m["dense_0"]["w"]) + np.asarray(m["dense_0"]["b"])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return x + h @ np.asarray(m["dense_1"]["w"]) + np.asarray(m["dense_1"]["b"])


def np_lm(p, tokens, num_layers, heads, kv_heads=None, positional="learned", tied=True):
    table = np.asarray(p["embedding"]["embedding"], np.float64)
    f = table.shape[1]
    x = table[np.asarray(tokens)] * np.sqrt(f)
    t = tokens.shape[1]
    if positional == "learned":
        x = x + np.asarray(p["position"]["embedding"])[:t]
    elif positional == "sinusoidal":
        angle = np.arange(t)[:, None] / 10000.0 ** (2 * np.arange(f // 2)[None] / f)
        x = x + np.stack([np.sin(angle), np.cos(angle)], -1).reshape(t, f)
    for i in range(num_layers):
        x = np_block(p[f"block_{i}"], x, heads, kv_heads, causal=True, rope=positional == "rope")
    x = np_ln(x, p["final_norm"])
    return x @ table.T if tied else x @ np.asarray(p["head"]["w"]) + np.asarray(p["head"]["b"])


# ---- blocks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make,causal,rope,kv", [
    (lambda: encoder_block(2, 12), False, False, None),
    (lambda: decoder_block(2, 12), True, False, None),
    (lambda: decoder_block(4, 12, num_kv_heads=2, rope=True), True, True, 2),
])
def test_block_matches_numpy(make, causal, rope, kv):
    block = make()
    x = _rand((2, 5, 8))
    params = _perturbed(block.init(KEY, x)[0])
    assert sorted(params) == ["attention", "mlp", "norm_0", "norm_1"]
    heads = 4 if rope else 2
    lengths = jnp.array([5, 2])                          # example 0 unpadded, example 1 padded
    y = jax.jit(lambda p, x, n: block.apply(p, {}, x, lengths=n)[0])(params, x, lengths)
    np.testing.assert_allclose(y, np_block(params, x, heads, kv, causal, lengths, rope), atol=2e-4)


def test_block_dropout_needs_key_and_is_deterministic_given_one():
    block = encoder_block(2, 12, dropout_rate=0.3, attention_dropout_rate=0.2, name="enc")
    x = _rand((2, 5, 8))
    params, _ = block.init(KEY, x)
    run = jax.jit(lambda k: block.apply(params, {}, x, key=k, train=True)[0])
    np.testing.assert_array_equal(run(KEY), run(KEY))
    assert not np.allclose(run(KEY), run(jax.random.key(1)))
    with pytest.raises(ValueError, match=r"enc: train=True with dropout needs a PRNG key: call "
                                         r"apply\(\.\.\., key=jax.random.key\(0\), train=True\)"):
        block.apply(params, {}, x, train=True)


# ---- decoder language model -------------------------------------------------------------------

@pytest.mark.parametrize("positional,tied,kv", [("learned", True, None), ("sinusoidal", False, 1)])
def test_decoder_lm_matches_numpy(positional, tied, kv):
    lm = decoder_lm(11, 2, 2, 8, 16, 12, tied=tied, num_kv_heads=kv, positional=positional)
    tokens = jax.random.randint(KEY, (2, 6), 0, 11)
    params = _perturbed(lm.init(KEY, tokens)[0])
    assert ("head" in params) == (not tied) and ("position" in params) == (positional == "learned")
    logits = jax.jit(lambda p, t: lm.apply(p, {}, t)[0])(params, tokens)
    assert logits.shape == (2, 6, 11)
    np.testing.assert_allclose(logits, np_lm(params, tokens, 2, 2, kv, positional, tied), atol=5e-4)


def test_causal_lm_logits_at_t_ignore_later_tokens():
    lm = decoder_lm(11, 2, 2, 8, 16, 12, positional="rope")
    tokens = jax.random.randint(KEY, (2, 8), 0, 11)
    params, _ = lm.init(KEY, tokens)
    run = jax.jit(lambda t: lm.apply(params, {}, t)[0])
    logits = run(tokens)
    for t in (0, 3, 6):
        changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1 + t) % 11)
        other = run(changed)
        np.testing.assert_array_equal(logits[:, : t + 1], other[:, : t + 1])
        assert not np.allclose(logits[:, t + 1:], other[:, t + 1:])


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rope"])
def test_decode_step_matches_full_forward(positional):
    lm = decoder_lm(11, 2, 4, 8, 16, 12, num_kv_heads=2, positional=positional)
    tokens = jax.random.randint(KEY, (2, 7), 0, 11)
    params, _ = lm.init(KEY, tokens)
    full = jax.jit(lambda p, t: lm.apply(p, {}, t)[0])(params, tokens)
    cache = lm.methods["init_cache"](2, 10)
    assert cache["block_0"]["key"].shape == (2, 10, 2, 2)
    step = jax.jit(lm.methods["decode_step"])
    first, cache = step(params, cache, tokens[:, :4], 0)            # a chunk (the prompt)
    np.testing.assert_allclose(first, full[:, :4], atol=1e-5)
    for t in range(4, 7):                                             # then one token at a time
        logits, cache = step(params, cache, tokens[:, t], t)
        assert logits.shape == (2, 11)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)


def test_decoder_lm_learns_a_cyclic_sequence():
    lm = decoder_lm(7, 1, 2, 16, 32, 16)
    seq = jnp.arange(40) % 7
    x = jnp.stack([seq[i:i + 12] for i in range(8)])
    y = jnp.stack([seq[i + 1:i + 13] for i in range(8)])
    opt = optax.adam(1e-2)
    ts = jnn.train.init_train_state(lm, opt, KEY, x)
    step = jax.jit(jnn.train.make_train_step(lm, jnn.losses.softmax_cross_entropy, opt))
    for _ in range(40):
        ts, logs = step(ts, (x, y))
    assert float(logs["loss"]) < 0.05                                 # from about log(7) = 1.9
    assert step._cache_size() == 1


# ---- ViT --------------------------------------------------------------------------------------

def test_vit_patches_pooling_and_shapes():
    vit = vit_classifier(2, 1, 2, 8, 16, 3)
    images = _rand((2, 4, 6, 3))
    params, _ = vit.init(KEY, images)
    assert params["position"]["embedding"].shape == (7, 8)            # 2 * 3 patches + class token
    assert params["patch_embedding"]["dense_0"]["w"].shape == (12, 8)
    y = jax.jit(lambda p, x: vit.apply(p, {}, x)[0])(params, images)
    assert y.shape == (2, 3)
    # The patch embedding is dense() of each non-overlapping 2x2x3 patch, row-major over patches.
    patches = np.asarray(images).reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 12)
    pe = params["patch_embedding"]["dense_0"]
    x = np.concatenate([np.broadcast_to(np.asarray(params["class_token"]["token"]), (2, 1, 8)),
                        patches @ np.asarray(pe["w"]) + np.asarray(pe["b"])], axis=1)
    x = np_block(params["encoder_block_0"], x + np.asarray(params["position"]["embedding"]), 2)
    expected = np_ln(x, params["final_norm"])[:, 0] @ np.asarray(params["head"]["w"]) + np.asarray(params["head"]["b"])
    np.testing.assert_allclose(y, expected, atol=2e-4)
    mean_vit = vit_classifier(2, 1, 2, 8, 16, 3, pool="mean")
    assert "class_token" not in mean_vit.init(KEY, images)[0]


# ---- errors -----------------------------------------------------------------------------------

def test_construction_errors():
    with pytest.raises(ValueError, match=r"decoder_lm: features \(10\) must be divisible by num_heads \(4\)"):
        decoder_lm(5, 1, 4, 10, 8, 8)
    with pytest.raises(ValueError, match=r"decoder_lm: num_layers must be a positive integer, got 0"):
        decoder_lm(5, 0, 2, 8, 8, 8)
    with pytest.raises(ValueError, match=r"decoder_lm: positional must be one of 'learned', 'sinusoidal', 'rope', "
                                         r"got 'alibi'"):
        decoder_lm(5, 1, 2, 8, 8, 8, positional="alibi")
    with pytest.raises(ValueError, match=r"decoder_lm: tied must be True or False, got 'yes'"):
        decoder_lm(5, 1, 2, 8, 8, 8, tied="yes")
    with pytest.raises(ValueError, match=r"encoder_block: mlp_dim must be a positive integer, got -1"):
        encoder_block(2, -1)
    with pytest.raises(ValueError, match=r"block: dropout_rate is the probability of dropping a unit"):
        decoder_block(2, 8, dropout_rate=1.5, name="block")
    with pytest.raises(ValueError, match=r"vit_classifier: pool must be one of 'cls', 'mean', got 'max'"):
        vit_classifier(2, 1, 2, 8, 8, 3, pool="max")
    with pytest.raises(ValueError, match=r"vit_classifier: features \(6\) must be divisible by num_heads \(4\)"):
        vit_classifier(2, 1, 4, 6, 8, 3)


def test_apply_errors():
    lm = decoder_lm(5, 1, 2, 8, 8, 6)
    tokens = jnp.zeros((1, 4), jnp.int32)
    params, _ = lm.init(KEY, tokens)
    with pytest.raises(ValueError, match=r"decoder_lm: expected integer token ids \[B, T\], got float32\[1, 4\]"):
        lm.apply(params, {}, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"decoder_lm: expected at most max_len=6 tokens, got 7"):
        lm.apply(params, {}, jnp.zeros((1, 7), jnp.int32))
    with pytest.raises(ValueError, match=r"patchify: expected images \[B, H, W, C\] with H divisible by 2 and W "
                                         r"by 2, got shape \(1, 5, 4, 1\)"):
        vit_classifier(2, 1, 2, 8, 8, 3).init(KEY, jnp.zeros((1, 5, 4, 1)))
    block = encoder_block(2, 8)
    with pytest.raises(ValueError, match=r"encoder_block attention: expected a floating-point sequence"):
        block.init(KEY, jnp.zeros((3, 8)))


@pytest.mark.parametrize("jit_init", [False, True])
def test_block_params_can_be_donated(jit_init):
    """Every param leaf is its own buffer (the norms were once one shared array), so a jitted
    update may donate the params: XLA refuses to donate one buffer twice."""
    block = decoder_block(2, 8, cross_attention=True)
    init = jax.jit(block.init) if jit_init else block.init
    params, _ = init(jax.random.key(0), jnp.zeros((1, 3, 4)))
    leaves = jax.tree_util.tree_leaves(params)
    assert len({id(a) for a in leaves}) == len(leaves)
    step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a: a * 0.5, p), donate_argnums=0)
    halved = step(params)
    np.testing.assert_array_equal(halved["norm_1"]["scale"], np.full(4, 0.5, np.float32))
