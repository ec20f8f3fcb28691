"""jnn.nets.encoder_decoder and the scanned decoder_lm: cached generation equals uncached token for
token (the source encoded once into the cache), source padding is masked, the target is causal,
and scanned stacks equal the unrolled ones with the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.generate import generate, generate_uncached, is_decoder
from jnn.layers.repeat import stack_params, unstack_params
from jnn.nets import decoder_lm, encoder_decoder
from jnn.precision import with_policy

V, S = 11, 6
RNG = np.random.default_rng(0)
SOURCE = jnp.asarray(RNG.integers(1, V, (3, S)), jnp.int32)
LENGTHS = jnp.array([6, 4, 1])


def _model(scan_layers=True, **kw):
    model = encoder_decoder(V, 2, 2, 16, 32, 16, scan_layers=scan_layers, **kw)
    params, _ = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return model, params


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_generation_equals_uncached_token_for_token(scan_layers):
    model, params = _model(scan_layers, positional="learned")
    assert is_decoder(model)
    prompt = jnp.array([[1], [2], [3]], jnp.int32)
    for temperature, top_k in [(1.0, None), (0.0, None), (0.8, 4)]:
        kw = dict(key=jax.random.key(7), temperature=temperature, top_k=top_k, context=SOURCE, context_lengths=LENGTHS)
        cached = generate(model, params, prompt, 8, **kw)
        np.testing.assert_array_equal(cached, generate_uncached(model, params, prompt, 8, **kw))
    assert len(set(np.asarray(cached[:, 1:]).ravel().tolist())) > 2  # not a constant sequence


def test_the_source_is_encoded_into_the_cache_once():
    model, params = _model()
    cache = model.methods["init_cache"](3, 10, params=params, context=SOURCE, context_lengths=LENGTHS)
    assert cache["cross"]["blocks"]["key"].shape == (2, 3, S, 2, 8)  # [blocks, B, S, K, H]
    assert cache["self"]["blocks"]["key"].shape == (2, 3, 10, 2, 8)
    # decode_step sees no source at all: the cross keys/values in the cache are all it uses.
    tokens = jnp.array([[1, 2], [3, 4], [5, 6]])
    logits, new = model.methods["decode_step"](params, cache, tokens, 0)
    full = model.apply(params, {}, tokens, context=SOURCE, context_lengths=LENGTHS)[0]
    np.testing.assert_allclose(logits, full, atol=1e-5)
    assert new["cross"] is cache["cross"]
    with pytest.raises(ValueError, match=r"encoder_decoder: init_cache needs params= and context="):
        model.methods["init_cache"](3, 10)


def test_source_padding_is_masked_and_the_target_is_causal():
    model, params = _model()
    target = jnp.asarray(RNG.integers(1, V, (3, 5)), jnp.int32)
    logits = model.apply(params, {}, target, context=SOURCE, context_lengths=LENGTHS)[0]
    changed_pad = SOURCE.at[1, 4:].set(0).at[2, 1:].set(5)
    np.testing.assert_allclose(model.apply(params, {}, target, context=changed_pad, context_lengths=LENGTHS)[0],
                               logits, atol=1e-5)
    unmasked = model.apply(params, {}, target, context=changed_pad)[0]
    assert float(jnp.abs(unmasked[2] - logits[2]).max()) > 1e-3
    later = target.at[:, 3:].set(0)
    np.testing.assert_allclose(model.apply(params, {}, later, context=SOURCE, context_lengths=LENGTHS)[0][:, :3],
                               logits[:, :3], atol=1e-5)
    other_source = model.apply(params, {}, target, context=SOURCE[::-1], context_lengths=LENGTHS[::-1])[0]
    assert float(jnp.abs(other_source[0] - logits[0]).max()) > 1e-3  # the decoder does read the source


def test_scanned_and_unrolled_models_are_the_same_function():
    scanned, params = _model(True)
    unrolled, _ = _model(False)
    flat = {**params, "encoder": unstack_params(params["encoder"]["blocks"], "block"),
            "decoder": unstack_params(params["decoder"]["blocks"], "block")}
    target = jnp.asarray(RNG.integers(1, V, (3, 5)), jnp.int32)
    a = scanned.apply(params, {}, target, context=SOURCE, context_lengths=LENGTHS)[0]
    b = unrolled.apply(flat, {}, target, context=SOURCE, context_lengths=LENGTHS)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
    lm = decoder_lm(V, 3, 2, 16, 32, 16, scan_layers=True)
    lm_params, _ = lm.init(jax.random.key(0), target)
    blocks = lm_params.pop("blocks")
    lm_flat = {**lm_params, **unstack_params(blocks, "block")}
    np.testing.assert_allclose(lm.apply({**lm_params, "blocks": blocks}, {}, target)[0],
                               decoder_lm(V, 3, 2, 16, 32, 16).apply(lm_flat, {}, target)[0], atol=1e-5)
    back = stack_params({k: v for k, v in lm_flat.items() if k.startswith("block_")})
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), back, blocks))


def test_with_policy_keeps_the_encoder_decoder_cached_path():
    model, params = _model()
    wrapped = with_policy(model)
    assert is_decoder(wrapped)
    cache = wrapped.methods["init_cache"](3, 6, params=params, context=SOURCE)
    assert cache["cross"]["blocks"]["value"].dtype == jnp.bfloat16
    out = generate(wrapped, params, jnp.ones((3, 1), jnp.int32), 4, key=jax.random.key(0), context=SOURCE)
    assert out.shape == (3, 5)


def test_encoder_decoder_rejects_bad_input():
    model, params = _model()
    target = jnp.zeros((3, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"encoder_decoder: expected the source as apply\(..., context="):
        model.apply(params, {}, target)
    with pytest.raises(ValueError, match=r"encoder_decoder: expected integer source ids \(context=\) \[B, T\], "
                                         r"got float32\[3, 6\]"):
        model.apply(params, {}, target, context=jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"encoder_decoder: expected context_lengths as integers of shape \[3\]"):
        model.apply(params, {}, target, context=SOURCE, context_lengths=jnp.array([1, 2]))
    with pytest.raises(ValueError, match="encoder_decoder: the source has batch 3 but the target has 2"):
        model.apply(params, {}, target[:2], context=SOURCE)
    with pytest.raises(ValueError, match=r"encoder_decoder: positional must be one of 'learned', 'sinusoidal', 'rope'"):
        encoder_decoder(V, 1, 2, 16, 32, 16, positional="alibi")
    with pytest.raises(ValueError, match="encoder_decoder: scan_layers must be True or False, got 1"):
        encoder_decoder(V, 1, 2, 16, 32, 16, scan_layers=1)
    with pytest.raises(ValueError, match="decoder_block: got context= but this block has no cross-attention"):
        jnn.decoder_block(2, 8).apply(jnn.decoder_block(2, 8).init(jax.random.key(0), jnp.zeros((1, 2, 8)))[0], {},
                                      jnp.zeros((1, 2, 8)), context=jnp.zeros((1, 3, 8)))
