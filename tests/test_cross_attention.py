"""Cross-attention in jnn.layers.attention: separate key/value input with a context padding mask,
against a NumPy einsum reference and flax.linen.MultiHeadDotProductAttention (same weights)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jnn.layers.attention import multi_head_attention

B, T, S, F, FC, N = 2, 3, 5, 8, 6, 2
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, T, F)).astype(np.float32)
CONTEXT = RNG.normal(size=(B, S, FC)).astype(np.float32)
CONTEXT_LENGTHS = np.array([5, 2])


def _layer(**kw):
    attn = multi_head_attention(N, context_features=FC, **kw)
    params, state = attn.init(jax.random.key(0), X)
    # Non-zero biases so that a bias applied to the wrong input shows.
    params = jax.tree.map(lambda a: a + 0.1 * RNG.normal(size=a.shape).astype(a.dtype), params)
    return attn, params, state


def _numpy_reference(params, x, context, lengths):
    p = jax.tree.map(np.asarray, params)
    h = F // N
    q = (x @ p["query"]["w"] + p["query"]["b"]).reshape(B, T, N, h)
    k = (context @ p["key"]["w"] + p["key"]["b"]).reshape(B, S, N, h)
    v = (context @ p["value"]["w"] + p["value"]["b"]).reshape(B, S, N, h)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    valid = (np.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    logits = np.where(valid, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnh->btnh", weights, v).reshape(B, T, N * h)
    return out @ p["out"]["w"] + p["out"]["b"]


def test_cross_attention_matches_numpy_einsum_reference_with_context_mask():
    attn, params, state = _layer()
    assert params["key"]["w"].shape == (FC, F) and params["query"]["w"].shape == (F, F)
    y, _ = attn.apply(params, state, X, context=CONTEXT, context_lengths=CONTEXT_LENGTHS)
    np.testing.assert_allclose(y, _numpy_reference(params, X, CONTEXT, CONTEXT_LENGTHS), atol=1e-5)
    # Padding in the context really is ignored: changing it changes nothing ...
    noisy = CONTEXT.copy()
    noisy[1, 2:] = 100.0
    y2, _ = attn.apply(params, state, X, context=noisy, context_lengths=CONTEXT_LENGTHS)
    np.testing.assert_allclose(y, y2, atol=1e-6)
    # ... and without the mask it would.
    y3, _ = attn.apply(params, state, X, context=noisy)
    assert float(jnp.abs(y3[1] - y[1]).max()) > 1e-2


def test_cross_attention_matches_flax_multi_head_dot_product_attention():
    nn = pytest.importorskip("flax.linen")
    attn, params, state = _layer()
    flax_attn = nn.MultiHeadDotProductAttention(num_heads=N, qkv_features=F, out_features=F)
    h = F // N
    flax_params = {"params": {
        "query": {"kernel": params["query"]["w"].reshape(F, N, h), "bias": params["query"]["b"].reshape(N, h)},
        "key": {"kernel": params["key"]["w"].reshape(FC, N, h), "bias": params["key"]["b"].reshape(N, h)},
        "value": {"kernel": params["value"]["w"].reshape(FC, N, h), "bias": params["value"]["b"].reshape(N, h)},
        "out": {"kernel": params["out"]["w"].reshape(N, h, F), "bias": params["out"]["b"]}}}
    shapes = jax.eval_shape(lambda: flax_attn.init(jax.random.key(0), X, CONTEXT))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, flax_params)
    mask = (np.arange(S)[None, :] < CONTEXT_LENGTHS[:, None])[:, None, None, :]
    expected = flax_attn.apply(flax_params, X, CONTEXT, mask=jnp.asarray(mask))
    y, _ = attn.apply(params, state, X, context=CONTEXT, context_lengths=CONTEXT_LENGTHS)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_cross_attention_gradients_match_finite_differences():
    with jax.enable_x64(True):
        attn = multi_head_attention(N, context_features=FC)
        x, context = jnp.asarray(X, jnp.float64), jnp.asarray(CONTEXT, jnp.float64)
        params, state = attn.init(jax.random.key(0), x)
        f = lambda p, x, c: attn.apply(p, state, x, context=c, context_lengths=jnp.asarray(CONTEXT_LENGTHS))[0]
        check_grads(f, (params, x, context), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_cross_attention_with_grouped_kv_heads_and_default_width():
    attn = multi_head_attention(4, num_kv_heads=2)
    params, state = attn.init(jax.random.key(0), X)
    context = RNG.normal(size=(B, S, F)).astype(np.float32)
    y, _ = attn.apply(params, state, X, context=context)
    q = (X @ params["query"]["w"] + params["query"]["b"]).reshape(B, T, 4, 2)
    k = (context @ params["key"]["w"] + params["key"]["b"]).reshape(B, S, 2, 2)
    v = (context @ params["value"]["w"] + params["value"]["b"]).reshape(B, S, 2, 2)
    k, v = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(2)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    out = np.einsum("bnts,bsnh->btnh", w / w.sum(-1, keepdims=True), v).reshape(B, T, 8)
    np.testing.assert_allclose(y, out @ params["out"]["w"] + params["out"]["b"], atol=1e-5)


def test_cross_attention_rejects_bad_calls():
    attn, params, state = _layer()
    with pytest.raises(ValueError, match=r"multi_head_attention: expected a floating-point context \[B, S, 6\] "
                                         r"for cross-attention, got float32\[2, 5, 8\]"):
        attn.apply(params, state, X, context=np.zeros((B, S, F), np.float32))
    with pytest.raises(ValueError, match="multi_head_attention: context_lengths was given without context"):
        attn.apply(params, state, X, context_lengths=CONTEXT_LENGTHS)
    with pytest.raises(ValueError, match="multi_head_attention: lengths= masks self-attention keys; with context="):
        attn.apply(params, state, X, context=CONTEXT, lengths=np.array([3, 3]))
    with pytest.raises(ValueError, match=r"multi_head_attention: expected lengths as integers of shape \[2\]"):
        attn.apply(params, state, X, context=CONTEXT, context_lengths=np.array([1, 2, 3]))
    causal = multi_head_attention(N, causal=True, context_features=FC)
    with pytest.raises(ValueError, match=r"multi_head_attention: cross-attention \(context=\) needs causal=False"):
        causal.apply(causal.init(jax.random.key(0), X)[0], {}, X, context=CONTEXT)
    with pytest.raises(ValueError, match="multi_head_attention: context_features must be a positive integer, got 0"):
        multi_head_attention(N, context_features=0)
