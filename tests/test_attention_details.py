"""jnn.layers.attention, the details its other tests left open (found by mutation testing,
tests/MUTATION.md): dtypes where the default float is float64, layers without biases, the
initializers and RoPE base a user passes, attention dropout per weight, decoding over a cache,
and the construction errors' labels. Layers are built inside the tests, so that mutation testing
sees the constructors' code run. References are NumPy (tests/test_attention.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.attention import attention_weights, multi_head_attention, reference_attention
from test_attention import _np_rope, _rand, _random_params, np_attention, np_mask

KEY = jax.random.key(0)


def _np_layer(params, x, heads, kv_heads=None, mask=None, rope_base=None):
    """The layer's forward pass in NumPy (float64); projections without a bias where params have none."""
    b, t, _ = x.shape
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def proj(name, n):
        y = np.asarray(x, np.float64) @ p[name]["w"] + (p[name]["b"] if "b" in p[name] else 0.0)
        return y.reshape(b, t, n, -1)

    kv_heads = kv_heads or heads
    q, k = proj("query", heads), proj("key", kv_heads)
    if rope_base is not None:
        q, k = _np_rope(q, np.arange(t), rope_base), _np_rope(k, np.arange(t), rope_base)
    out, _ = np_attention(q, k, proj("value", kv_heads), mask)
    return out.reshape(b, t, -1) @ p["out"]["w"] + (p["out"]["b"] if "b" in p["out"] else 0.0)


def test_attention_weights_without_and_with_a_mask_match_numpy():
    q, k, v = _rand((2, 4, 4, 3), 1), _rand((2, 6, 2, 3), 2), _rand((2, 6, 2, 3), 3)
    expected_out, expected = np_attention(q, k, v)
    np.testing.assert_allclose(attention_weights(q, k), expected, atol=1e-6)
    np.testing.assert_allclose(reference_attention(q, k, v), expected_out, atol=1e-5)
    mask = np.random.default_rng(4).random((2, 1, 4, 6)) < 0.6
    mask[..., 0] = True                                  # every row keeps a key
    _, expected_masked = np_attention(q, k, v, mask)
    np.testing.assert_allclose(attention_weights(q, k, mask), expected_masked, atol=1e-6)
    np.testing.assert_allclose(attention_weights(q, k, mask).sum(-1), 1.0, atol=1e-6)


def test_dtypes_where_the_default_float_is_float64():
    with jax.enable_x64(True):
        q32, k32 = _rand((1, 3, 2, 4), 1), _rand((1, 5, 2, 4), 2)
        mask = jnp.ones((1, 1, 3, 5), bool).at[..., -1].set(False)
        for m in (None, mask):
            assert attention_weights(q32, k32, m).dtype == jnp.float32
            assert attention_weights(q32.astype(jnp.float64), k32.astype(jnp.float64), m).dtype == jnp.float64
            assert attention_weights(q32.astype(jnp.bfloat16), k32.astype(jnp.bfloat16), m).dtype == jnp.float32
        q16 = q32.astype(jnp.bfloat16)
        assert reference_attention(q16, q16, q16).dtype == jnp.bfloat16
        attn = multi_head_attention(2, b_init="normal")
        for dtype in (jnp.float32, jnp.float64):
            x = _rand((2, 3, 4)).astype(dtype)
            params, _ = attn.init(KEY, x)
            assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(dtype)}
            assert attn.apply(params, {}, x)[0].dtype == dtype


def test_without_biases_the_layer_is_four_matrices():
    attn = multi_head_attention(2, use_bias=False, causal=True)
    x = _rand((2, 5, 6), 1)
    params, _ = attn.init(KEY, x)
    assert {name: sorted(p) for name, p in params.items()} == {n: ["w"] for n in ("query", "key", "value", "out")}
    params = _random_params(params)
    np.testing.assert_allclose(attn.apply(params, {}, x)[0], _np_layer(params, x, 2, mask=np_mask(True, None, 5)),
                               atol=1e-5)


def test_the_initializers_passed_are_used_and_each_bias_gets_its_own_key():
    attn = multi_head_attention(2, w_init="zeros", b_init="normal")
    x = _rand((1, 3, 4))
    params, _ = attn.init(KEY, x)
    assert all(not np.any(params[n]["w"]) for n in params)
    biases = [np.asarray(params[n]["b"]) for n in ("query", "key", "value", "out")]
    assert all(np.all(b != 0) for b in biases)
    assert len({b.tobytes() for b in biases}) == 4
    # all weights zero: the output is the output projection's bias at every position
    np.testing.assert_allclose(attn.apply(params, {}, x)[0], np.broadcast_to(biases[3], (1, 3, 4)), atol=1e-6)
    default = multi_head_attention(2).init(KEY, x)[0]
    assert all(not np.any(default[n]["b"]) for n in default) and all(np.std(default[n]["w"]) > 0.1 for n in default)


def test_rope_base_is_the_one_passed_and_defaults_to_10000():
    x = _rand((2, 4, 8), 2)
    for base, kwargs in ((500.0, {"rope_base": 500.0}), (10000.0, {})):
        attn = multi_head_attention(2, num_kv_heads=1, causal=True, rope=True, **kwargs)
        params = _random_params(attn.init(KEY, x)[0])
        np.testing.assert_allclose(attn.apply(params, {}, x)[0],
                                   _np_layer(params, x, 2, 1, np_mask(True, None, 4), rope_base=base), atol=1e-4)


def test_training_without_dropout_needs_no_key():
    attn = multi_head_attention(2)
    x = _rand((1, 3, 4))
    params = _random_params(attn.init(KEY, x)[0])
    np.testing.assert_allclose(attn.apply(params, {}, x, train=True)[0], attn.apply(params, {}, x)[0], atol=1e-6)


def test_attention_dropout_drops_each_weight_on_its_own():
    # With an identity output projection and no biases, the output is the mixed values: a single
    # kept-or-dropped decision for the whole tensor would give 2x the evaluation output or zeros.
    attn = multi_head_attention(2, dropout_rate=0.5, use_bias=False)
    x = _rand((2, 6, 4), 3)
    params = _random_params(attn.init(KEY, x)[0])
    params["out"]["w"] = jnp.eye(4)
    evaluated = np.asarray(attn.apply(params, {}, x)[0])
    for seed in range(3):
        y = np.asarray(attn.apply(params, {}, x, key=jax.random.key(seed), train=True)[0])
        assert not np.allclose(y, 2 * evaluated, atol=1e-5) and not np.allclose(y, 0.0, atol=1e-5)
    y16 = attn.apply(params, {}, x.astype(jnp.bfloat16), key=KEY, train=True)[0]
    assert y16.dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_decoding_one_position_at_a_time_equals_causal_attention(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        spec = multi_head_attention(4, num_kv_heads=2, causal=True)
        x = _rand((2, 5, 8), 5).astype(dtype)
        params = _random_params(spec.init(KEY, x)[0])
        params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
        full, _ = spec.apply(params, {}, x)
        cache = spec.methods["init_cache"](2, 7, 8, dtype)
        assert cache["key"].shape == cache["value"].shape == (2, 7, 2, 2)
        steps = []
        for t in range(5):
            y, cache = spec.methods["decode"](params, cache, x[:, t:t + 1], t)
            steps.append(y)
        np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
        assert not np.any(cache["key"][:, 5:]) and np.all(np.any(cache["key"][:, :5] != 0, axis=(-1, -2)))


def test_a_dropout_model_decodes_without_a_key():
    spec = multi_head_attention(2, causal=True, dropout_rate=0.5)
    x = _rand((1, 2, 4))
    params = spec.init(KEY, x)[0]
    y, _ = spec.methods["decode"](params, spec.methods["init_cache"](1, 2, 4, jnp.float32), x, 0)
    np.testing.assert_allclose(y, spec.apply(params, {}, x)[0], atol=1e-5)
    cross = multi_head_attention(2, dropout_rate=0.5, context_features=3)     # as a decoder block calls it
    context = _rand((1, 5, 3), 1)
    params = cross.init(KEY, x)[0]
    np.testing.assert_allclose(cross.methods["attend_kv"](params, x, cross.methods["cross_kv"](params, context)),
                               cross.apply(params, {}, x, context=context)[0], atol=1e-6)


def test_layer_identity_and_keywords():
    attn = multi_head_attention(2, name="self_attn")
    assert (attn.kind, attn.name, attn.keywords) == ("multi_head_attention", "self_attn",
                                                     frozenset({"lengths", "bias", "mask", "context",
                                                                "context_lengths"}))
    assert multi_head_attention(2).name is None


def test_errors_name_the_layer_and_what_was_wrong():
    with pytest.raises(ValueError, match=r"^attn: context_features must be a positive integer, got 0"):
        multi_head_attention(2, context_features=0, name="attn")
    with pytest.raises(ValueError, match=r"^multi_head_attention: use_bias must be True or False, got 1"):
        multi_head_attention(2, use_bias=1)
    with pytest.raises(ValueError, match=r"^multi_head_attention: rope must be True or False, got None"):
        multi_head_attention(2, rope=None)
    with pytest.raises(ValueError, match=r"^multi_head_attention: dropout_rate must be a Python number in "
                                         r"\[0, 1\), got \w*Tracer"):
        jax.make_jaxpr(lambda rate: multi_head_attention(2, dropout_rate=rate) and rate)(0.1)
    for what in ("w_init", "b_init"):
        with pytest.raises(ValueError, match=rf"^multi_head_attention {what}: unknown initializer"):
            multi_head_attention(2, **{what: "no_such_initializer"})
    assert multi_head_attention(2, implementation="cudnn").kind == "multi_head_attention"
    attn = multi_head_attention(2, head_size=3)                   # query width 6, input width 8
    params, _ = attn.init(KEY, jnp.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match=r"^multi_head_attention: expected input of shape \[B, T, 8\]"):
        attn.apply(params, {}, jnp.zeros((1, 2, 5)))
    for bad in (jnp.zeros((1, 2, 8), jnp.int32), jnp.zeros((1, 2, 8), bool)):
        with pytest.raises(ValueError, match=rf"^multi_head_attention: expected a floating-point sequence "
                                             rf"\[B, T, F\], got {bad.dtype}\[1, 2, 8\]"):
            attn.init(KEY, bad)
    with pytest.raises(ValueError, match=r"^multi_head_attention: context_lengths was given without context "
                                         r"\(it masks the context's padding in cross-attention; use lengths= "
                                         r"for self-attention\)"):
        attn.apply(params, {}, jnp.zeros((1, 2, 8)), context_lengths=jnp.array([1]))


def test_cross_attention_dropout_in_training_needs_a_key_and_averages_to_evaluation():
    attn = multi_head_attention(2, dropout_rate=0.5, context_features=3)
    x, context = _rand((1, 2, 4), 1), _rand((1, 5, 3), 2)
    params = _random_params(attn.init(KEY, x)[0])
    evaluated = attn.apply(params, {}, x, context=context)[0]
    train = jax.jit(jax.vmap(lambda k: attn.apply(params, {}, x, key=k, train=True, context=context)[0]))
    ys = train(jax.random.split(KEY, 2000))
    assert not np.allclose(ys[0], ys[1]) and not np.allclose(ys[0], evaluated)
    np.testing.assert_allclose(ys.mean(0), evaluated, atol=0.05)
    with pytest.raises(ValueError, match=r"^multi_head_attention: train=True with dropout_rate=0.5 needs a PRNG key"):
        attn.apply(params, {}, x, train=True, context=context)


def test_cross_attention_input_errors():
    attn = multi_head_attention(2, context_features=3, name="cross")
    x = _rand((2, 2, 4))
    params, _ = attn.init(KEY, x)
    for bad in (_rand((2, 5)), jnp.zeros((2, 5, 3), jnp.int32)):
        with pytest.raises(ValueError, match=rf"^cross: expected a floating-point context \[B, S, 3\] for "
                                             rf"cross-attention, got {bad.dtype}\[{', '.join(map(str, bad.shape))}\]"):
            attn.apply(params, {}, x, context=bad)
    with pytest.raises(ValueError, match=r"^cross: the context has batch 3 but the input has 2"):
        attn.apply(params, {}, x, context=_rand((3, 5, 3)))
    with pytest.raises(ValueError, match=r"^cross: lengths= masks self-attention keys; with context= pass "
                                         r"context_lengths= for the context's padding$"):
        attn.apply(params, {}, x, context=_rand((2, 5, 3)), lengths=jnp.array([1, 2]))
    for kwargs in ({"causal": True}, {"rope": True}):
        layer = multi_head_attention(2, context_features=3, name="cross", **kwargs)
        with pytest.raises(ValueError, match=r"^cross: cross-attention \(context=\) needs causal=False and "
                                             r"rope=False: the context's positions are not the queries'$"):
            layer.apply(params, {}, x, context=_rand((2, 5, 3)))


def test_bfloat16_cross_attention_and_a_bfloat16_cache():
    attn = multi_head_attention(2, context_features=3)
    x, context = _rand((1, 2, 4), 1), _rand((1, 5, 3), 2)
    params = _random_params(attn.init(KEY, x)[0])
    y16 = attn.apply(params, {}, x.astype(jnp.bfloat16), context=context.astype(jnp.bfloat16))[0]
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), attn.apply(params, {}, x, context=context)[0], atol=0.05)
    spec = multi_head_attention(2, causal=True)
    x = _rand((1, 3, 4), 3)
    params = _random_params(spec.init(KEY, x)[0])
    full = spec.apply(params, {}, x)[0]
    for x_dtype, cache_dtype in ((jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.bfloat16)):
        cache = spec.methods["init_cache"](1, 4, 4, cache_dtype)
        assert cache["key"].dtype == cache["value"].dtype == cache_dtype
        steps = []
        for t in range(3):
            y, cache = spec.methods["decode"](params, cache, x[:, t:t + 1].astype(x_dtype), t)
            steps.append(y)
        assert cache["key"].dtype == cache["value"].dtype == cache_dtype and steps[0].dtype == x_dtype
        np.testing.assert_allclose(jnp.concatenate(steps, 1).astype(jnp.float32), full, atol=0.05)


def test_the_spec_defaults_transformer_blocks_rely_on():
    spec = multi_head_attention(2)
    assert tuple(spec.config[k] for k in ("causal", "rope", "rope_base", "use_bias", "dropout_rate", "num_kv_heads",
                                          "context_features")) == (False, False, 10000.0, True, 0.0, None, None)
    assert spec.methods["init_cache"](1, 3, 8, jnp.float32)["key"].shape == (1, 3, 2, 4)  # num_kv_heads = num_heads
    x = _rand((1, 4, 8))
    for default, explicit in ((multi_head_attention(2, rope=True), multi_head_attention(2, rope=True, rope_base=10000.0)),
                              (multi_head_attention(2, rope=True), multi_head_attention(2, rope=True,
                                                                                         rope_base=10000.0))):
        params = _random_params(default.init(KEY, x)[0])
        np.testing.assert_array_equal(default.apply(params, {}, x)[0], explicit.apply(params, {}, x)[0])


def test_cross_attention_with_its_own_context_width_composes_in_serial():
    """serial's init learns each child's output shape by applying it without keywords; a layer
    built for a context of another width must still init there, and say so when applied
    without one."""
    from test_cross_attention import CONTEXT, CONTEXT_LENGTHS, FC, X, _numpy_reference
    model = jnn.serial(multi_head_attention(2, context_features=FC), jnn.named("head", jnn.dense(3)))
    params, state = model.init(KEY, X)
    assert params["multi_head_attention_0"]["key"]["w"].shape == (FC, 8)
    y, _ = model.apply(params, state, X, context=CONTEXT, context_lengths=CONTEXT_LENGTHS)
    attended = _numpy_reference(params["multi_head_attention_0"], X, CONTEXT, CONTEXT_LENGTHS)
    head = params["head"]
    np.testing.assert_allclose(y, attended @ np.asarray(head["w"]) + np.asarray(head["b"]), atol=1e-4)
    with pytest.raises(ValueError, match=r"^\[multi_head_attention_0\] multi_head_attention: built with "
                                         r"context_features=6 for cross-attention: call apply\(\.\.\., "
                                         r"context=\[B, S, 6\]\)$"):
        model.apply(params, state, X)


def test_context_features_equal_to_the_width_still_self_attends():
    """A layer whose context is as wide as its input serves both: without context= it self-attends."""
    from test_cross_attention import X
    attn = multi_head_attention(2, context_features=8)
    plain = multi_head_attention(2)
    params, _ = attn.init(KEY, X)
    np.testing.assert_allclose(attn.apply(params, {}, X)[0], plain.apply(params, {}, X)[0], rtol=1e-6)
    np.testing.assert_allclose(attn.apply(params, {}, X)[0], _np_layer(params, X, 2), atol=1e-4)
