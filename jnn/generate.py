"""Autoregressive sampling, jitted: :func:`generate` (key/value cache) and :func:`generate_uncached`
(re-runs the model per token); token ``i`` uses ``jax.random.split(key, num_new_tokens)[i]``; a
``temperature`` below ``GREEDY_BELOW`` takes the argmax."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn.core import Layer

__all__ = ["is_decoder", "generate", "generate_uncached", "sample_logits", "GREEDY_BELOW"]

GREEDY_BELOW = 1e-6  # temperatures below this sample greedily (logits / T would overflow)

_SAMPLING = dict(temperature=checks.finite_at_least(0, " (0 is greedy)"), top_k=checks.none_or_positive_int)


def is_decoder(model) -> bool:
    """Whether ``model`` has ``init_cache(batch, length=None, dtype=None, **context)`` and
    ``decode_step(params, cache, tokens, position) -> (logits, cache)`` in its ``methods``.

    Example:
      >>> import jnn
      >>> lm = jnn.decoder_lm(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16, max_len=16)
      >>> jnn.generate.is_decoder(lm), jnn.generate.is_decoder(jnn.dense(3))
      (True, False)
    """
    return isinstance(model, Layer) and {"init_cache", "decode_step"} <= set(model.methods)


@checks.declare(**_SAMPLING)
def sample_logits(key, logits: jax.Array, *, temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
    """One int32 token per row of ``logits[..., V]``: argmax if ``temperature < GREEDY_BELOW``, else a
    sample of ``softmax(logits / temperature)`` over the ``top_k`` largest logits (``None``: all).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> sample_logits(jax.random.key(0), jnp.array([[0.0, 5.0, 1.0]]), temperature=0.0)
      Array([1], dtype=int32)
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1:
        raise ValueError(f"sample_logits: logits must have a vocabulary axis last, [..., V], got shape ()")
    _check_vocab("sample_logits", logits, top_k)
    logits = logits.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32)
    if temperature < GREEDY_BELOW:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits / jnp.asarray(temperature, logits.dtype), axis=-1).astype(jnp.int32)


def _check(where: str, model, prompt, cached: bool):
    if not isinstance(model, Layer):
        raise TypeError(f"{where}: expected a jnn.Layer as the model, got {type(model).__name__}")
    if cached and not is_decoder(model):
        raise TypeError(f"{where}: the model has no cached decode path (init_cache/decode_step); its "
                        f"{model.kind!r} layer declares methods {sorted(model.methods)} in Layer.methods; build "
                        f"it with jnn.nets.decoder_lm or jnn.nets.encoder_decoder, or use generate_uncached")
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"{where}: expected a prompt of integer token ids [B, P] with P >= 1, got "
                         f"{prompt.dtype}{list(prompt.shape)}")
    return prompt.astype(jnp.int32)


def _check_vocab(where: str, logits, top_k):
    if top_k is not None and top_k > logits.shape[-1]:
        raise ValueError(f"{where}: top_k={top_k} is larger than the vocabulary ({logits.shape[-1]})")


def _check_prompt_ids(where: str, model, params, state, prompt, context: dict):
    """Prompts are concrete: ids outside the model's vocabulary (its logits' width) fail here."""
    vocab = jax.eval_shape(lambda t: model.apply(params, state, t, **context)[0], prompt).shape[-1]
    checks.ids_in_range(where, prompt, vocab, what="prompt token ids")


_STATIC = ("model", "num_new_tokens", "temperature", "top_k")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _cached(model, params, prompt, key, num_new_tokens, temperature, top_k, context):
    batch, p = prompt.shape
    # Checks max_len (and everything else about the input) for the whole sequence, at trace time.
    jax.eval_shape(lambda t: model.apply(params, {}, t, **context),
                   jax.ShapeDtypeStruct((batch, p + num_new_tokens), jnp.int32))
    keys = jax.random.split(key, num_new_tokens)
    extra = dict(params=params, **context) if context else {}
    decode_step = model.methods["decode_step"]
    cache = model.methods["init_cache"](batch, p + num_new_tokens, **extra)  # an encoder runs here, once
    logits, cache = decode_step(params, cache, prompt, 0)  # prefill: the prompt in one pass
    _check_vocab("generate", logits, top_k)
    first = sample_logits(keys[0], logits[:, -1], temperature=temperature, top_k=top_k)

    def body(carry, i):
        cache, token = carry
        logits, cache = decode_step(params, cache, token, p + i - 1)
        token = sample_logits(keys[i], logits, temperature=temperature, top_k=top_k)
        return (cache, token), token

    _, rest = jax.lax.scan(body, (cache, first), jnp.arange(1, num_new_tokens))
    return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _uncached(model, params, state, prompt, key, num_new_tokens, temperature, top_k, context):
    batch, p = prompt.shape
    keys = jax.random.split(key, num_new_tokens)
    tokens = jnp.concatenate([prompt, jnp.zeros((batch, num_new_tokens), jnp.int32)], axis=1)
    _check_vocab("generate_uncached", jax.eval_shape(lambda t: model.apply(params, state, t, **context)[0], tokens),
                 top_k)

    def body(i, tokens):
        # Causal model: the zeros after position p + i - 1 do not change its logits.
        logits = model.apply(params, state, tokens, **context)[0]
        logits = jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False)
        token = sample_logits(keys[i], logits, temperature=temperature, top_k=top_k)
        return jax.lax.dynamic_update_index_in_dim(tokens, token, p + i, axis=1)

    return jax.lax.fori_loop(0, num_new_tokens, body, tokens)


def _context(context, context_lengths) -> dict:
    checks.require(context is not None or context_lengths is None, "generate",
                   "context_lengths was given without context")
    given = {"context": context, "context_lengths": context_lengths}
    return {k: jnp.asarray(v) for k, v in given.items() if v is not None}


@checks.declare(num_new_tokens=checks.positive_int, **_SAMPLING)
def generate(model, params, prompt, num_new_tokens: int, *, key, temperature: float = 1.0,
             top_k: int | None = None, context=None, context_lengths=None) -> jax.Array:
    """The prompt ``[B, P]`` (int ids) followed by ``num_new_tokens`` sampled tokens, ``[B, P + N]``
    int32, with the key/value cache of a model that :func:`is_decoder` (``P + N <= max_len``).
    ``temperature=0`` is greedy; ``context`` ``[B, S]`` and ``context_lengths`` ``[B]`` feed an
    encoder-decoder (encoded once).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.decoder_lm(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16, max_len=16)
      >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      >>> jnn.generate.generate(lm, params, jnp.array([[1, 2]]), 3, key=jax.random.key(1), top_k=5).shape
      (1, 5)
    """
    prompt = _check("generate", model, prompt, cached=True)
    context = _context(context, context_lengths)
    _check_prompt_ids("generate", model, params, {}, prompt, context)
    return _cached(model, params, prompt, key, num_new_tokens, temperature, top_k, context)


@checks.declare(num_new_tokens=checks.positive_int, **_SAMPLING)
def generate_uncached(model: Layer, params, prompt, num_new_tokens: int, *, key, temperature: float = 1.0,
                      top_k: int | None = None, state=None, context=None, context_lengths=None) -> jax.Array:
    """:func:`generate` for any causal ids-to-logits model: each step re-runs ``model.apply`` on the
    whole buffer. Same key, same tokens as :func:`generate`.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> from jnn.generate import generate, generate_uncached
      >>> lm = jnn.decoder_lm(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16, max_len=16)
      >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      >>> prompt, key = jnp.array([[1, 2]]), jax.random.key(1)
      >>> bool((generate_uncached(lm, params, prompt, 3, key=key) == generate(lm, params, prompt, 3, key=key)).all())
      True
    """
    prompt = _check("generate_uncached", model, prompt, cached=False)
    context = _context(context, context_lengths)
    _check_prompt_ids("generate_uncached", model, params, {} if state is None else state, prompt, context)
    return _uncached(model, params, {} if state is None else state, prompt, key, num_new_tokens,
                     temperature, top_k, context)
