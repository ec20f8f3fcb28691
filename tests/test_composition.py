"""Open composition: keyword routing, children/get/capture, indexing, apply_child, contract errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.cells import lstm_cell

KEY = jax.random.key(0)


# --- 1. extra keywords routed by declaration -------------------------------------------------

def test_lengths_reach_a_bidirectional_lstm_inside_serial():
    birnn = jnn.bidirectional(lstm_cell(3))
    model = jnn.serial(jnn.dense(4), jnn.tanh(), birnn)
    assert model.keywords == {"lengths"} and jnn.dense(4).keywords == frozenset()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 2)), jnp.float32)
    lengths = jnp.array([6, 4, 1])
    params, state = model.init(KEY, x)
    y, _ = model.apply(params, state, x, lengths=lengths)
    # Independent reference: each sequence cut to its valid part and run without lengths,
    # zeros after its end (the backward direction must start at the sequence's own end).
    for b, n in enumerate(lengths.tolist()):
        ref, _ = model.apply(params, state, x[b:b + 1, :n])
        np.testing.assert_allclose(y[b, :n], ref[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y[b, n:], 0.0)
    # the keyword had an effect: without it the padded steps feed the backward direction
    full, _ = model.apply(params, state, x)
    assert not np.allclose(full[1, :4], y[1, :4], atol=1e-3)


def test_lengths_reach_an_encoder_block_inside_residual_and_fan_out():
    block = jnn.encoder_block(num_heads=2, mlp_dim=8)
    model = jnn.residual(block)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 4)), jnp.float32)
    lengths = jnp.array([5, 2])
    params, state = model.init(KEY, x)
    y, _ = model.apply(params, state, x, lengths=lengths)
    inner = params["serial_0"]["encoder_block_0"]
    direct, _ = block.apply(inner, {}, x, lengths=lengths)
    np.testing.assert_allclose(y, x + direct, rtol=1e-5, atol=1e-5)
    # example 1's first two outputs ignore its padding: same as the cut sequence
    cut, _ = model.apply(params, state, x[1:, :2])
    np.testing.assert_allclose(y[1, :2], cut[0], rtol=1e-5, atol=1e-5)


def test_a_misspelt_keyword_raises_naming_the_accepted_ones():
    model = jnn.serial(jnn.dense(4), jnn.recurrent(lstm_cell(3)))
    x = jnp.zeros((2, 5, 3))
    params, state = model.init(KEY, x)
    with pytest.raises(TypeError, match=r"serial: unexpected keyword argument 'lenghts'.*\['lengths'\]"):
        model.apply(params, state, x, lenghts=jnp.array([5, 3]))
    plain = jnn.fan_out(jnn.dense(2), jnn.dense(2), name="two_heads")
    p, s = plain.init(KEY, jnp.zeros((1, 3)))
    with pytest.raises(TypeError, match=r"two_heads: unexpected keyword argument 'lengths'.*no extra keywords"):
        plain.apply(p, s, jnp.zeros((1, 3)), lengths=jnp.array([1]))


# --- 2. inspection ---------------------------------------------------------------------------

def _nested():
    block = jnn.serial(jnn.dense(6), jnn.relu(), jnn.dense(5), jnn.tanh())
    return block, jnn.serial(jnn.named("block_0", block), jnn.named("head", jnn.dense(2)))


def test_children_indexing_and_get_return_the_sub_layer_and_its_params():
    block, model = _nested()
    assert list(model.children) == ["block_0", "head"]
    assert list(block.children) == ["dense_0", "relu_0", "dense_1", "tanh_0"]
    assert model[0].init is block.init and model["head"].kind == "dense" and model[-1] is model["head"]
    inner = jnn.get(model, "block_0/dense_1")
    assert inner.init is block.children["dense_1"].init
    params, state = model.init(KEY, jnp.zeros((1, 3)))
    p = jnn.get(params, "block_0/dense_1")
    assert p["w"].shape == (6, 5)
    h = jnp.ones((4, 6))
    np.testing.assert_allclose(inner.apply(p, {}, h)[0], h @ p["w"] + p["b"], rtol=1e-6)
    with pytest.raises(KeyError, match=r"get: block_0 \(serial\) has no child 'dense_9'; its children are "
                                       r"\['dense_0', 'relu_0', 'dense_1', 'tanh_0'\]"):
        jnn.get(model, "block_0/dense_9")
    with pytest.raises(KeyError, match=r"no key 'relu_0' at block_0 .*children without params"):
        jnn.get(params, "block_0/relu_0")


def test_indexing_never_returns_a_namedtuple_field():
    _, model = _nested()
    with pytest.raises(IndexError, match=r"serial: child index 2 out of range for its 2 children .*never the NamedTuple's fields"):
        model[2]
    with pytest.raises(TypeError, match=r"dense: a 'dense' layer has no children to index"):
        jnn.dense(2)[1]
    with pytest.raises(KeyError, match=r"no child 'dense_0'; its children are \['block_0', 'head'\]"):
        model["dense_0"]
    init, apply, *_ = model  # unpacking still reads the fields
    assert init is model.init and apply is model.apply
    renamed = model._replace(name="net")
    assert renamed.name == "net" and renamed.children == model.children


def test_capture_equals_applying_the_prefix_model_under_jit_and_vmap():
    block, model = _nested()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)), jnp.float32)
    params, state = model.init(KEY, x)
    run = jax.jit(lambda p, x: jnn.capture(model, p, state, x, ["block_0/relu_*", "block_0"]))
    y, _, out = run(params, x)
    assert sorted(out) == ["block_0", "block_0/relu_0"]
    prefix = jnn.serial(jnn.dense(6), jnn.relu())  # same keys as block_0's first two children
    ref, _ = prefix.apply({"dense_0": params["block_0"]["dense_0"]}, {}, x)   # extra keys are an error
    np.testing.assert_allclose(out["block_0/relu_0"], ref, rtol=1e-6)
    np.testing.assert_allclose(out["block_0"], block.apply(params["block_0"], {}, x)[0], rtol=1e-6)
    np.testing.assert_allclose(y, model.apply(params, state, x)[0], rtol=1e-6)
    per_example = jax.vmap(lambda xi: jnn.capture(model, params, state, xi, "relu_0")[2]["block_0/relu_0"])(x)
    np.testing.assert_allclose(per_example, ref, rtol=1e-6)
    with pytest.raises(ValueError, match=r"capture: no sub-layer of 'serial' matches \['relu_7'\]; its paths are"):
        jnn.capture(model, params, state, x, "relu_7")


def test_head_swap_keeps_the_body_bit_identical():
    _, model = _nested()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
    params, state = model.init(KEY, x)
    body = jnn.get(model, "block_0")  # keeps its name, so its params key stays "block_0"
    swapped = jnn.serial(body, jnn.named("head", jnn.dense(7)))
    new_params, _ = swapped.init(jax.random.key(5), x)
    new_params["block_0"] = jnn.get(params, "block_0")
    y, _, feats = jnn.capture(swapped, new_params, {}, x, "block_0")
    _, _, old_feats = jnn.capture(model, params, state, x, "block_0")
    np.testing.assert_array_equal(feats["block_0"], old_feats["block_0"])
    head = new_params["head"]
    np.testing.assert_allclose(y, feats["block_0"] @ head["w"] + head["b"], rtol=1e-5, atol=1e-6)
    assert y.shape == (4, 7)


# --- 3. public composites and contract errors ------------------------------------------------

def _gated(name=None):
    """A user composite written with jnn.apply_child, as in the README."""
    value, gate = jnn.dense(4), jnn.dense(4)

    def init(key, example):
        k1, k2 = jax.random.split(key)
        return {"value": value.init(k1, example)[0], "gate": gate.init(k2, example)[0]}, {}

    def apply(params, state, x, *, key=None, train=False):
        v, _ = jnn.apply_child("value", value, params, state, x, key=key, train=train)
        g, _ = jnn.apply_child("gate", gate, params, state, x, key=key, train=train)
        return v * jax.nn.sigmoid(g), state

    return jnn.Layer(init, apply, "gated", name, children=jnn.Children([("value", value), ("gate", gate)]))


def test_user_composite_via_apply_child_keeps_error_paths_and_summary_rows():
    model = jnn.serial(_gated(), jnn.dense(1))
    x = jnp.ones((2, 3))
    params, state = model.init(KEY, x)
    p = params["gated_0"]
    expected = (x @ p["value"]["w"] + p["value"]["b"]) * jax.nn.sigmoid(x @ p["gate"]["w"] + p["gate"]["b"])
    _, _, out = jnn.capture(model, params, state, x, "gated_0")
    np.testing.assert_allclose(out["gated_0"], expected, rtol=1e-5)
    text = jnn.summary(model, x)
    assert "gated_0/value" in text and "gated_0/gate" in text
    assert jnn.get(model, "gated_0/gate").kind == "dense"
    with pytest.raises(ValueError, match=r"\[gated_0/value\] dense: expected input of shape \[\.\.\., 3\]"):
        model.apply(params, state, jnp.ones((2, 5)))


def test_three_broken_user_layers_get_the_contract_quoted():
    def init_returns_params_only(key, example):
        return {"w": jnp.ones((example.shape[-1], 2))}

    def good_apply(params, state, x, *, key=None, train=False):
        return x @ params["w"], state

    bad_init = jnn.Layer(init_returns_params_only, good_apply, "bad_init")
    with pytest.raises(TypeError, match=r"\[bad_init_0\] serial: layer 'bad_init' breaks the layer contract: its init "
                                        r"returned a dict, expected a pair \(params, state\)\. Every layer has "
                                        r"init\(key, example\) -> \(params, state\)"):
        jnn.serial(jnn.dense(2), bad_init).init(KEY, jnp.zeros((1, 3)))

    def init(key, example):
        return {"w": jnp.ones((example.shape[-1], 2))}, {}

    def apply_returns_y_only(params, state, x, *, key=None, train=False):
        return x @ params["w"]

    bad_apply = jnn.Layer(init, apply_returns_y_only, "bad_apply")
    with pytest.raises(TypeError, match=r"layer 'bad_apply' breaks the layer contract: its apply returned a single "
                                        r"array of shape \(1, 2\), expected a pair \(y, new_state\)\. Every layer "
                                        r"has .*apply\(params, state, x, \*, key=None, train=False\)"):
        jnn.serial(bad_apply).init(KEY, jnp.zeros((1, 3)))

    def apply_without_keywords(params, state, x):
        return x @ params["w"], state

    with pytest.raises(TypeError, match=r"fan_out: layer 'no_key' breaks the layer contract: its apply takes no "
                                        r"keyword argument 'key', 'train'\. Every layer has"):
        jnn.fan_out(jnn.dense(2), jnn.Layer(init, apply_without_keywords, "no_key"))


def test_transformer_blocks_expose_their_sub_layers():
    """``get`` reaches inside a transformer block: its children, applied by hand, give what
    ``capture`` recorded inside the block's own apply."""
    block = jnn.layers.transformer.decoder_block(2, 16, cross_attention=True)
    assert list(block.children) == ["norm_0", "attention", "norm_cross", "cross_attention", "norm_1", "mlp"]
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 8)), jnp.float32)
    context = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 8)), jnp.float32)
    params, state = block.init(KEY, x)
    _, _, out = jnn.capture(block, params, state, x, ["norm_0", "attention", "norm_cross", "cross_attention"],
                            context=context)
    h = jnn.get(block, "norm_0").apply(jnn.get(params, "norm_0"), {}, x)[0]
    np.testing.assert_allclose(h, out["norm_0"], rtol=1e-5, atol=1e-6)
    attention = jnn.get(block, "attention")
    np.testing.assert_allclose(attention.apply(jnn.get(params, "attention"), {}, h)[0], out["attention"],
                               rtol=1e-5, atol=1e-6)
    cross = block["cross_attention"]
    np.testing.assert_allclose(cross.apply(params["cross_attention"], {}, out["norm_cross"], context=context)[0],
                               out["cross_attention"], rtol=1e-5, atol=1e-6)
    assert jnn.get(block, "mlp").kind == "mlp" and block["norm_1"].kind == "layer_norm"
