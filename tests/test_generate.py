"""Tests for jnn.generate: cached == uncached sampling for the same key, sampling rules, errors."""
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.generate import generate, generate_uncached, sample_logits
from jnn.nets import decoder_lm

KEY = jax.random.key(0)
V = 13


_MODELS = {}


def lm_and_params(positional="learned"):
    if positional not in _MODELS:
        lm = decoder_lm(V, 1, 4, 8, 16, 24, num_kv_heads=2, positional=positional)
        _MODELS[positional] = lm, lm.init(KEY, jnp.zeros((2, 4), jnp.int32))[0]
    return _MODELS[positional]


PROMPT = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)


@pytest.mark.parametrize("positional,temperature,top_k", [("learned", 0.0, None), ("rope", 0.8, 4)])
def test_cached_generation_equals_uncached_for_the_same_key(positional, temperature, top_k):
    lm, params = lm_and_params(positional)
    key = jax.random.key(42)
    cached = generate(lm, params, PROMPT, 12, key=key, temperature=temperature, top_k=top_k)
    uncached = generate_uncached(lm, params, PROMPT, 12, key=key, temperature=temperature, top_k=top_k)
    assert cached.shape == (2, 16) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(cached[:, :4], PROMPT)
    np.testing.assert_array_equal(cached, uncached)
    assert int(jnp.min(cached)) >= 0 and int(jnp.max(cached)) < V
    if temperature == 0:  # greedy: each new token is the argmax of the full model's logits
        logits = jax.jit(lambda p, t: lm.apply(p, {}, t)[0])(params, cached)
        np.testing.assert_array_equal(jnp.argmax(logits[:, 3:-1], axis=-1), cached[:, 4:])
    else:  # a different key gives different samples
        other = generate(lm, params, PROMPT, 12, key=jax.random.key(7), temperature=temperature, top_k=top_k)
        assert not np.array_equal(other, cached)


def test_generate_compiles_once_per_configuration():
    gen_module = importlib.import_module("jnn.generate")
    lm, params = lm_and_params("rope")
    generate(lm, params, PROMPT, 12, key=KEY, temperature=0.8, top_k=4)
    size = gen_module._cached._cache_size()
    generate(lm, params, PROMPT + 1, 12, key=jax.random.key(5), temperature=0.8, top_k=4)
    assert gen_module._cached._cache_size() == size


def test_sample_logits_greedy_top_k_and_temperature():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    assert int(sample_logits(KEY, logits, temperature=0.0)[0]) == 3
    keys = jax.random.split(KEY, 10000)
    draw = lambda **kw: np.asarray(jax.jit(jax.vmap(lambda k: sample_logits(k, logits, **kw)[0]))(keys))
    counts = np.bincount(draw(temperature=1.0), minlength=4) / 10000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.3, 0.4], atol=0.02)
    counts = np.bincount(draw(top_k=2), minlength=4) / 10000
    assert counts[0] == 0 and counts[1] == 0
    np.testing.assert_allclose(counts, [0.0, 0.0, 3 / 7, 4 / 7], atol=0.02)
    cold = np.bincount(draw(temperature=0.1), minlength=4) / 10000   # p ** 10, renormalized
    assert cold[3] > 0.9


@pytest.mark.parametrize("kw,message", [
    ({"temperature": -1.0}, "temperature must be a finite number >= 0 (0 is greedy), got -1.0"),
    ({"temperature": "hot"}, "temperature must be a finite number >= 0 (0 is greedy), got 'hot'"),
    ({"top_k": 0}, "top_k must be None or a positive integer, got 0"),
    ({"top_k": True}, "top_k must be None or a positive integer, got True"),
    ({"top_k": 6}, "top_k=6 is larger than the vocabulary (5)"),
])
def test_sample_logits_arguments(kw, message):
    with pytest.raises(ValueError, match="^" + re.escape("sample_logits: " + message) + "$"):
        sample_logits(KEY, jnp.zeros((2, 5)), **kw)


def test_errors():
    lm, params = lm_and_params()
    with pytest.raises(ValueError, match=r"generate: expected a prompt of integer token ids \[B, P\] with "
                                         r"P >= 1, got float32\[2, 4\]"):
        generate(lm, params, PROMPT.astype(jnp.float32), 3, key=KEY)
    with pytest.raises(ValueError, match=r"generate: expected a prompt .* got int32\[4\]"):
        generate(lm, params, PROMPT[0], 3, key=KEY)
    with pytest.raises(ValueError, match=r"generate: num_new_tokens must be a positive integer, got 0"):
        generate(lm, params, PROMPT, 0, key=KEY)
    with pytest.raises(ValueError, match=r"generate_uncached: temperature must be a finite number >= 0 \(0 is "
                                         r"greedy\), got -1.0"):
        generate_uncached(lm, params, PROMPT, 3, key=KEY, temperature=-1.0)
    with pytest.raises(ValueError, match=r"generate: temperature must be a finite number >= 0 \(0 is greedy\), "
                                         r"got inf"):
        generate(lm, params, PROMPT, 3, key=KEY, temperature=float("inf"))
    with pytest.raises(ValueError, match=r"generate: top_k must be None or a positive integer, got 0"):
        generate(lm, params, PROMPT, 3, key=KEY, top_k=0)
    with pytest.raises(ValueError, match=r"generate: top_k=20 is larger than the vocabulary \(13\)"):
        generate(lm, params, PROMPT, 3, key=KEY, top_k=20)
    with pytest.raises(ValueError, match=r"decoder_lm: expected at most max_len=24 tokens, got 25"):
        generate(lm, params, PROMPT, 21, key=KEY)
    with pytest.raises(TypeError, match=r"generate: the model has no cached decode path \(init_cache/decode_step\)"):
        generate(jnn.serial(jnn.dense(2)), params, PROMPT, 3, key=KEY)


# ---- the decode path is declared in Layer.methods -----------------------------------------------

def test_the_decoders_methods_are_declared_and_survive_named_and_with_policy():
    lm, params = lm_and_params()
    assert {"init_cache", "decode_step"} <= set(lm.methods) and jnn.generate.is_decoder(lm)
    renamed = jnn.named("lm", lm)
    assert renamed.name == "lm" and renamed.methods == lm.methods and jnn.generate.is_decoder(renamed)
    np.testing.assert_array_equal(generate(renamed, params, PROMPT, 3, key=KEY),
                                  generate(lm, params, PROMPT, 3, key=KEY))
    mixed = jnn.precision.with_policy(lm)
    assert {"init_cache", "decode_step"} <= set(mixed.methods) and mixed.methods != lm.methods
    assert mixed.methods["init_cache"](2, 8)["block_0"]["key"].dtype == jnp.bfloat16
    logits, _ = mixed.methods["decode_step"](params, mixed.methods["init_cache"](2, 8), PROMPT[:, 0], 0)
    assert logits.dtype == jnp.float32 and logits.shape == (2, V)
    encdec = jnn.encoder_decoder(V, 1, 2, 8, 16, 12)
    assert jnn.generate.is_decoder(encdec) and jnn.generate.is_decoder(jnn.named("m", encdec))


def test_generate_on_a_layer_without_a_decode_path_says_what_to_do():
    lm, params = lm_and_params()
    plain = lm._replace(methods={})          # the same model without its declared methods
    assert not jnn.generate.is_decoder(plain) and not jnn.generate.is_decoder("not a layer")
    message = ("generate: the model has no cached decode path (init_cache/decode_step); its 'decoder_lm' layer "
               "declares methods [] in Layer.methods; build it with jnn.nets.decoder_lm or "
               "jnn.nets.encoder_decoder, or use generate_uncached")
    with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):
        generate(plain, params, PROMPT, 3, key=KEY)
    np.testing.assert_array_equal(generate_uncached(plain, params, PROMPT, 3, key=KEY, temperature=0.0),
                                  generate(lm, params, PROMPT, 3, key=KEY, temperature=0.0))
