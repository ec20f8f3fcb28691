"""Attention's bias, mask and attention_bias hook (jnn.layers.attention): ALiBi and sliding-window
attention against NumPy, per-head and broadcast bias/mask, cross-attention and grouped heads with a
bias, language models with each hook trained a few steps and generating the same tokens with and
without the key/value cache, and the error messages. References are written in NumPy here."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.generate import generate, generate_uncached
from jnn.layers.attention import alibi_bias, multi_head_attention, sliding_window_mask

KEY = jax.random.key(0)
B, T, F, N = 2, 6, 16, 4


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def np_alibi(n, t, s, offset=0):
    """ALiBi written out: head h (1-based) has slope 2 ** (-8 h / n); bias -slope * |i - j|."""
    slopes = np.array([2.0 ** (-8.0 * h / n) for h in range(1, n + 1)])
    dist = np.abs((np.arange(t) + offset)[:, None] - np.arange(s)[None, :])
    return -slopes[:, None, None] * dist


def np_window(t, s, window, offset=0):
    return np.abs((np.arange(t) + offset)[:, None] - np.arange(s)[None, :]) < window


def np_layer(params, x, heads, kv_heads=None, context=None, causal=False, bias=0.0, mask=True):
    """multi_head_attention in NumPy (float64): projections, softmax(q k / sqrt(H) + bias) over
    the allowed keys, output projection; grouped key/value heads repeated."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    c = x if context is None else np.asarray(context, np.float64)
    b, t, s = x.shape[0], x.shape[1], c.shape[1]
    kv_heads = kv_heads or heads
    proj = lambda name, inp, n: (inp @ p[name]["w"] + p[name]["b"]).reshape(b, inp.shape[1], n, -1)
    q, k, v = proj("query", x, heads), proj("key", c, kv_heads), proj("value", c, kv_heads)
    k, v = np.repeat(k, heads // kv_heads, axis=2), np.repeat(v, heads // kv_heads, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1]) + np.asarray(bias, np.float64)
    allowed = np.broadcast_to(np.asarray(mask) & (np.tril(np.ones((t, s), bool)) if causal else True), logits.shape)
    logits = np.where(allowed, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnh->btnh", w, v).reshape(b, t, -1)
    return out @ p["out"]["w"] + p["out"]["b"]


def _params(layer, x, seed=1):
    params, _ = layer.init(KEY, x)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape).astype(a.dtype)), params)


# ---- the helpers and the hook against NumPy -----------------------------------------------------

def test_alibi_and_sliding_window_helpers_match_numpy():
    np.testing.assert_allclose(alibi_bias(N, 5, 7), np_alibi(N, 5, 7), rtol=1e-6)
    np.testing.assert_allclose(alibi_bias(3, jnp.arange(2) + 4, jnp.arange(6)), np_alibi(3, 2, 6, offset=4), rtol=1e-6)
    np.testing.assert_array_equal(sliding_window_mask(5, 7, 3), np_window(5, 7, 3))
    np.testing.assert_array_equal(sliding_window_mask(jnp.array([3]), 6, 2), np_window(1, 6, 2, offset=3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hook", ["alibi", "window"])
def test_attention_with_alibi_or_a_sliding_window_matches_numpy(hook, causal, dtype):
    fn = (lambda q, k: alibi_bias(N, q, k)) if hook == "alibi" else (lambda q, k: sliding_window_mask(q, k, 2))
    extra = {"bias": np_alibi(N, T, T)} if hook == "alibi" else {"mask": np_window(T, T, 2)}
    with jax.enable_x64(dtype == jnp.float64):                        # float64: the written-out path
        layer = multi_head_attention(N, causal=causal, attention_bias=fn)
        x = _rand((B, T, F)).astype(dtype)
        params = _params(layer, x)
        y, _ = layer.apply(params, {}, x)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, np_layer(params, x, N, causal=causal, **extra), atol=2e-4)
        plain = multi_head_attention(N, causal=causal).apply(params, {}, x)[0]
        assert np.abs(np.asarray(plain) - np.asarray(y)).max() > 1e-3  # the hook changes the output


def test_a_sliding_window_decodes_over_the_cache_like_the_full_pass():
    layer = multi_head_attention(N, causal=True, rope=True, num_kv_heads=2,
                                 attention_bias=lambda q, k: sliding_window_mask(q, k, 3))
    x = _rand((B, T, F))
    params = _params(layer, x)
    full, _ = layer.apply(params, {}, x)
    cache, outs = layer.methods["init_cache"](B, 8, F, jnp.float32), []
    for start, stop in ((0, 2), (2, 3), (3, T)):                       # a prompt, one step, a chunk
        y, cache = layer.methods["decode"](params, cache, x[:, start:stop], start)
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


# ---- per-call bias and mask ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(B, N, T, T), (1, N, 1, T), (T, T)])
def test_bias_and_mask_per_head_and_broadcast_match_numpy(shape):
    layer = multi_head_attention(N, causal=True)
    x = _rand((B, T, F))
    params = _params(layer, x)
    bias = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    mask = np.random.default_rng(3).random(shape) < 0.7
    mask[..., 0] = True                                                # every query keeps a key
    y, _ = layer.apply(params, {}, x, bias=jnp.asarray(bias), mask=jnp.asarray(mask))
    np.testing.assert_allclose(y, np_layer(params, x, N, causal=True, bias=bias, mask=mask), atol=2e-4)
    lengths = jnp.array([T, 4])                                        # and-ed with the padding mask
    y, _ = layer.apply(params, {}, x, bias=jnp.asarray(bias), lengths=lengths)
    pad = np.arange(T)[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
    np.testing.assert_allclose(y, np_layer(params, x, N, causal=True, bias=bias, mask=pad), atol=2e-4)


def test_a_bias_and_a_mask_combine_with_the_hook():
    layer = multi_head_attention(N, causal=True, attention_bias=lambda q, k: alibi_bias(N, q, k))
    x = _rand((B, T, F))
    params = _params(layer, x)
    bias, mask = _rand((T, T), 4), jnp.asarray(np_window(T, T, 3))
    y, _ = layer.apply(params, {}, x, bias=bias, mask=mask)
    expected = np_layer(params, x, N, causal=True, bias=np_alibi(N, T, T) + np.asarray(bias), mask=np.asarray(mask))
    np.testing.assert_allclose(y, expected, atol=2e-4)


def test_grouped_heads_and_cross_attention_with_a_bias_match_numpy():
    x, context = _rand((B, T, F)), _rand((B, 5, 12), 5)
    bias = np.random.default_rng(6).normal(size=(B, N, T, 5)).astype(np.float32)
    cross = multi_head_attention(N, num_kv_heads=2, context_features=12)
    params = _params(cross, x)
    y, _ = cross.apply(params, {}, x, context=context, bias=jnp.asarray(bias), context_lengths=jnp.array([5, 3]))
    lengths_mask = np.arange(5)[None, None, None, :] < np.array([5, 3])[:, None, None, None]
    np.testing.assert_allclose(y, np_layer(params, x, N, 2, context=context, bias=bias, mask=lengths_mask), atol=2e-4)
    gqa = multi_head_attention(N, num_kv_heads=1, causal=True)
    params = _params(gqa, x)
    bias = np.random.default_rng(7).normal(size=(B, N, T, T)).astype(np.float32)
    np.testing.assert_allclose(gqa.apply(params, {}, x, bias=jnp.asarray(bias))[0],
                               np_layer(params, x, N, 1, causal=True, bias=bias), atol=2e-4)


def test_bias_and_mask_reach_attention_through_serial():
    model = jnn.serial(jnn.dense(F), multi_head_attention(N))
    x = _rand((B, T, F))
    params, _ = model.init(KEY, x)
    mask = jnp.eye(T, dtype=bool)                                      # each position sees itself only
    y, _ = model.apply(params, {}, x, mask=mask)
    attention = params["multi_head_attention_0"]
    h = x @ params["dense_0"]["w"] + params["dense_0"]["b"]
    np.testing.assert_allclose(y, np_layer(attention, h, N, mask=np.eye(T, dtype=bool)), atol=2e-4)


# ---- language models with a hook: training and cached generation -------------------------------

HOOKS = {"alibi": lambda q, k: alibi_bias(2, q, k), "window": lambda q, k: sliding_window_mask(q, k, 3)}


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_decoder_lm_with_a_hook_trains_and_generates_the_same_with_the_cache(hook, scan):
    lm = jnn.decoder_lm(7, 2, 2, 16, 32, 24, attention_bias=HOOKS[hook], scan_layers=scan)
    seq = jnp.arange(40) % 7
    x = jnp.stack([seq[i:i + 12] for i in range(8)])
    y = jnp.stack([seq[i + 1:i + 13] for i in range(8)])
    opt = optax.adam(1e-2)
    ts = jnn.train.init_train_state(lm, opt, KEY, x)
    step = jax.jit(jnn.train.make_train_step(lm, jnn.losses.softmax_cross_entropy, opt))
    losses = []
    for _ in range(8):
        ts, logs = step(ts, (x, y))
        losses.append(float(logs["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    params, prompt = ts.params, jnp.array([[1, 2, 3], [5, 6, 0]])
    for temperature in (0.0, 1.0):
        cached = generate(lm, params, prompt, 12, key=jax.random.key(3), temperature=temperature)
        np.testing.assert_array_equal(cached, generate_uncached(lm, params, prompt, 12, key=jax.random.key(3),
                                                                temperature=temperature))
    full = lm.apply(params, {}, cached)[0]                            # logits: cache against full pass
    cache = lm.methods["init_cache"](2, 15)
    logits, cache = lm.methods["decode_step"](params, cache, cached[:, :5], 0)
    outs = [logits]
    for t in range(5, 15):
        logits, cache = lm.methods["decode_step"](params, cache, cached[:, t], t)
        outs.append(logits[:, None])
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4)


def test_encoder_decoder_with_alibi_generates_the_same_with_the_cache():
    model = jnn.encoder_decoder(11, 1, 2, 16, 32, 16, attention_bias=HOOKS["alibi"])
    source, prompt = jax.random.randint(KEY, (2, 7), 0, 11), jnp.array([[1], [2]])
    params, _ = model.init(KEY, prompt)
    kw = dict(key=jax.random.key(1), temperature=0.0, context=source, context_lengths=jnp.array([7, 4]))
    np.testing.assert_array_equal(generate(model, params, prompt, 6, **kw),
                                  generate_uncached(model, params, prompt, 6, **kw))
    plain = jnn.encoder_decoder(11, 1, 2, 16, 32, 16)
    assert not np.allclose(model.apply(params, {}, prompt, context=source)[0],
                           plain.apply(params, {}, prompt, context=source)[0], atol=1e-4)


# ---- errors -------------------------------------------------------------------------------------

def test_errors_name_the_layer_and_what_was_wrong():
    layer = multi_head_attention(N, causal=True)
    x = _rand((B, T, F))
    params, _ = layer.init(KEY, x)
    with pytest.raises(TypeError, match=r"multi_head_attention: unexpected keyword argument 'attn_mask'.*'mask'"):
        layer.apply(params, {}, x, attn_mask=jnp.ones((T, T), bool))
    with pytest.raises(ValueError, match=r"multi_head_attention: mask must be a boolean array broadcastable to "
                                         r"\[B, N, T, S\] = \[2, 4, 6, 6\], got float32\[6, 6\]"):
        layer.apply(params, {}, x, mask=jnp.ones((T, T)))
    with pytest.raises(ValueError, match=r"multi_head_attention: bias must be a floating-point array .* got "
                                         r"float32\[3, 6, 6\]"):
        layer.apply(params, {}, x, bias=jnp.ones((3, T, T)))
    with pytest.raises(ValueError, match=r"multi_head_attention: bias must be a floating-point .* got bool\[6, 6\]"):
        layer.apply(params, {}, x, bias=jnp.ones((T, T), bool))
    with pytest.raises(TypeError, match=r"multi_head_attention: attention_bias must be a function "
                                        r"\(query_positions, key_positions\) -> bias or mask, got ndarray"):
        multi_head_attention(N, attention_bias=np.ones((T, T)))
    bad = multi_head_attention(N, attention_bias=lambda q, k: jnp.ones((N + 1, q.shape[0], k.shape[0])))
    with pytest.raises(ValueError, match=r"multi_head_attention: attention_bias's result must be a boolean or "
                                         r"floating-point array .* got float32\[5, 6, 6\]"):
        bad.apply(params, {}, x)
    with pytest.raises(TypeError, match=r"decoder_block: attention_bias must be a function"):
        jnn.decoder_block(2, 8, attention_bias="alibi")
    with pytest.raises(TypeError, match=r"decoder_lm: attention_bias must be a function"):
        jnn.decoder_lm(5, 1, 2, 8, 8, 8, attention_bias=1)
    with pytest.raises(ValueError, match=r"sliding_window_mask: window must be a positive integer, got 0"):
        sliding_window_mask(3, 3, 0)


def test_decoder_lm_refuses_a_context_by_name():
    lm = jnn.decoder_lm(11, 1, 2, 8, 16, 16)
    tokens = jnp.zeros((2, 4), jnp.int32)
    params, _ = lm.init(KEY, tokens)
    with pytest.raises(TypeError, match=r"decoder_lm: unexpected keyword argument 'context'.*no extra keywords"):
        lm.apply(params, {}, tokens, context=tokens)


def test_decoder_lm_block_factory_builds_every_layer_and_keeps_cached_generation():
    from jnn.layers.attention import alibi_bias
    from jnn.generate import generate, generate_uncached
    made = []

    def block(name):
        made.append(name)
        return jnn.decoder_block(2, 32, attention_bias=lambda q, k: alibi_bias(2, q, k), name=name)

    lm = jnn.decoder_lm(7, 3, 2, 16, 32, 16, block=block)
    plain = jnn.decoder_lm(7, 3, 2, 16, 32, 16, attention_bias=lambda q, k: alibi_bias(2, q, k))
    assert len(made) == 3
    prompt = jnp.array([[1, 2, 3]])
    params, state = lm.init(jax.random.key(0), prompt)
    # the factory's blocks are the blocks the hook builds: same params, same logits
    assert np.allclose(lm.apply(params, state, prompt)[0], plain.apply(params, state, prompt)[0], atol=1e-6)
    cached = generate(lm, params, prompt, 8, key=jax.random.key(1), temperature=0.0)
    assert (cached == generate_uncached(lm, params, prompt, 8, key=jax.random.key(1), temperature=0.0)).all()


def test_decoder_lm_block_factory_without_a_cache_generates_uncached_only():
    from jnn.generate import generate, generate_uncached

    def block(name):   # a residual MLP block: no init_cache/decode methods
        return jnn.residual(jnn.serial(jnn.layer_norm(), jnn.dense(16), jnn.gelu()), name=name)

    lm = jnn.decoder_lm(7, 2, 2, 16, 32, 16, block=block)
    prompt = jnp.array([[1, 2, 3]])
    params, _ = lm.init(jax.random.key(0), prompt)
    assert generate_uncached(lm, params, prompt, 4, key=jax.random.key(1)).shape == (1, 7)
    with pytest.raises(TypeError, match="no cached decode path"):
        generate(lm, params, prompt, 4, key=jax.random.key(1))


@pytest.mark.parametrize("block, error, words", [
    (3, TypeError, "decoder_lm: block must be a function \\(name\\) -> Layer, got int"),
    (lambda name: "not a layer", TypeError, "decoder_lm block: expected a jnn.Layer, got str"),
])
def test_decoder_lm_block_factory_misuse(block, error, words):
    with pytest.raises(error, match=words):
        jnn.decoder_lm(7, 2, 2, 16, 32, 16, block=block)
