"""Tests for jnn.precision: a bfloat16 policy is close to float32, keeps float32 params, gives
float32 losses and gradients, and works with the train step, fit and cached generation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.generate import generate, generate_uncached
from jnn.generate import is_decoder
from jnn.nets import decoder_lm
from jnn.precision import Policy, cast_floating, mixed_bfloat16, with_policy

KEY = jax.random.key(0)


def _dtypes(tree):
    return {a.dtype for a in jax.tree_util.tree_leaves(tree)}


def test_bf16_forward_is_close_to_f32_and_computes_in_bf16():
    seen = []
    probe = jnn.stateless("probe", lambda x: (seen.append(x.dtype), x)[1])
    lm = decoder_lm(17, 1, 2, 16, 32, 12)
    model = jnn.serial(jnn.dense(16), probe, jnn.layer_norm(), jnn.dense(5))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    params, state = model.init(KEY, x)
    mixed = with_policy(model)
    y32, _ = model.apply(params, state, x)
    assert seen[-1] == jnp.float32
    y16, _ = mixed.apply(params, state, x)
    assert seen[-1] == jnp.bfloat16 and y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, atol=0.05, rtol=0.05)
    assert not np.array_equal(y16, y32)                         # it really ran in bfloat16
    tokens = jax.random.randint(KEY, (2, 12), 0, 17)
    lm_params, _ = lm.init(KEY, tokens)
    logits32 = jax.jit(lambda p: lm.apply(p, {}, tokens)[0])(lm_params)
    logits16 = jax.jit(lambda p: with_policy(lm).apply(p, {}, tokens)[0])(lm_params)
    assert logits16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(logits32)))
    assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.05 * scale
    np.testing.assert_array_equal(jnp.argmax(logits16, -1)[jnp.max(jax.nn.softmax(logits32), -1) > 0.5],
                                  jnp.argmax(logits32, -1)[jnp.max(jax.nn.softmax(logits32), -1) > 0.5])


def test_params_stay_float32_and_loss_and_grads_are_float32():
    lm = with_policy(decoder_lm(11, 1, 2, 8, 16, 8))
    x = jax.random.randint(KEY, (4, 8), 0, 11)
    y = jnp.roll(x, -1, axis=1)
    opt = optax.adam(1e-2)
    ts = jnn.train.init_train_state(lm, opt, KEY, x)
    assert _dtypes(ts.params) == {jnp.dtype(jnp.float32)}
    f32 = {jnp.dtype(jnp.float32)}
    # Dtypes by tracing only (jax.eval_shape): nothing is compiled.
    loss = lambda p: jnn.losses.softmax_cross_entropy(lm.apply(p, {}, x)[0], y)
    value, grads = jax.eval_shape(jax.value_and_grad(loss), ts.params)
    assert value.dtype == jnp.float32 and _dtypes(grads) == f32
    step = jnn.train.make_train_step(lm, jnn.losses.softmax_cross_entropy, opt)
    new_ts, logs = jax.eval_shape(step, ts, (x, y))
    assert logs["loss"].dtype == jnp.float32 and _dtypes(new_ts.params) == _dtypes(new_ts.opt_state[0].mu) == f32


def test_fit_with_policy_and_batch_norm_state_keeps_its_dtype():
    model = with_policy(jnn.serial(jnn.dense(8), jnn.batch_norm(), jnn.tanh(), jnn.dense(1)))
    x, y = jnn.data.xor()
    result = jnn.train.fit(model, jnn.losses.binary_cross_entropy_with_logits, optax.adam(0.05), (x, y),
                           key=KEY, epochs=3, batch_size=4, metrics={}, verbose=0)
    ts = result.train_state
    assert _dtypes(ts.params) == _dtypes(ts.state) == {jnp.dtype(jnp.float32)}
    assert len(result.history["loss"]) == 3 and np.isfinite(result.history["loss"]).all()


def test_decoder_lm_keeps_its_cached_path_under_the_policy():
    lm = with_policy(decoder_lm(11, 1, 2, 8, 16, 12, positional="rope"))
    assert is_decoder(lm) and lm.kind == "decoder_lm"
    params, _ = lm.init(KEY, jnp.zeros((1, 4), jnp.int32))
    cache = lm.methods["init_cache"](1, 8)
    assert cache["block_0"]["key"].dtype == jnp.bfloat16
    prompt = jnp.array([[1, 2, 3]])
    cached = generate(lm, params, prompt, 4, key=KEY)
    np.testing.assert_array_equal(cached, generate_uncached(lm, params, prompt, 4, key=KEY))


def test_cast_floating_and_policy_errors():
    tree = {"w": jnp.ones(2), "ids": jnp.arange(2), "s": jax.ShapeDtypeStruct((3,), jnp.float32)}
    cast = cast_floating(tree, jnp.bfloat16)
    assert cast["w"].dtype == jnp.bfloat16 and cast["ids"].dtype == tree["ids"].dtype
    assert cast["s"] == jax.ShapeDtypeStruct((3,), jnp.bfloat16)
    assert mixed_bfloat16() == Policy(jnp.float32, jnp.bfloat16, jnp.float32)
    with pytest.raises(ValueError, match=r"Policy: compute_dtype must be a floating dtype, got <class "
                                         r"'jax.numpy.int32'>"):
        with_policy(jnn.dense(2), Policy(jnp.float32, jnp.int32, jnp.float32))
    with pytest.raises(ValueError, match=r"Policy: output_dtype must be a floating dtype, got 'float33'"):
        with_policy(jnn.dense(2), Policy(jnp.float32, jnp.bfloat16, "float33"))
    with pytest.raises(TypeError, match=r"with_policy: expected a jnn.precision.Policy, got str"):
        with_policy(jnn.dense(2), "bf16")
    with pytest.raises(TypeError, match=r"with_policy: expected a jnn.Layer, got function \(did you forget "
                                         r"to call it"):
        with_policy(jnn.dense)
