"""A decoder-only (GPT-style) language model with a key/value-cached decode path."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn import core
from jnn import _checks as checks
from jnn.core import Layer, shape_of
from jnn.layers.dropout import dropout
from jnn.layers.norm import layer_norm, rms_norm
from jnn.layers.transformer import BLOCK_RULES, decoder_block
from jnn.nets.stack import LM_RULES, block_stack, decoding, token_embedder

__all__ = ["decoder_lm"]

@checks.declare(**LM_RULES, **BLOCK_RULES, embedding_scale=checks.optional(checks.finite_number),
                block=checks.optional(checks.satisfies(callable, "a function (name) -> Layer", TypeError,
                                                       lambda value: type(value).__name__)))
def decoder_lm(vocab_size: int, num_layers: int, num_heads: int, features: int, mlp_dim: int, max_len: int,
               tied: bool = True, *, dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
               num_kv_heads: int | None = None, positional: str = "learned", scan_layers: bool = False,
               remat: str | None = None, attention_bias=None, norm: str = "layer", norm_epsilon: float = 1e-5,
               mlp: str = "gelu", use_bias: bool = True, embedding_scale: float | None = None,
               rope_base: float = 10000.0, rope_scaling: dict | None = None, block=None,
               name: str | None = None) -> Layer:
    """A decoder-only (GPT-style) language model: token ids ``[B, T]`` -> logits ``[B, T, V]``.

    Embedding (times ``embedding_scale``, default ``sqrt(features)``) plus positions, dropout,
    ``num_layers`` decoder blocks (:func:`jnn.decoder_block`), a final norm and a tied or untied head
    (biased if ``use_bias``). GPT-2 and Llama layouts: :mod:`jnn.hub`. Params:
    ``{"embedding", "position" (learned only), "block_0", ... (or stacked "blocks" with
    scan_layers), "final_norm", "head" (untied only)}``. ``methods``: ``init_cache`` and
    ``decode_step`` (see :func:`jnn.generate.is_decoder`).

    Args:
      vocab_size, num_layers, num_heads, features, mlp_dim, max_len: sizes (> 0); ``features``
        must be divisible by ``num_heads``.
      tied: share the embedding table with the output head.
      dropout_rate: dropout on embeddings and on each residual branch.
      attention_dropout_rate: dropout on attention weights.
      num_kv_heads: grouped key/value heads.
      positional: ``"learned"``, ``"sinusoidal"`` or ``"rope"`` (rotary, in every attention layer).
      scan_layers: stack the blocks and scan over them (compile time independent of depth).
      remat: ``None``, or a :func:`jnn.remat` policy applied to every block (``"nothing"``: keep
        only each block's input for the backward pass).
      attention_bias: every self-attention's bias or mask hook (:func:`jnn.multi_head_attention`;
        e.g. ALiBi, docs: guides/custom_attention.md); cached decoding keeps it.
      norm, norm_epsilon, mlp, use_bias, rope_base, rope_scaling: the blocks' style
        (:func:`jnn.encoder_block`; ``norm`` also for the final norm).
      embedding_scale: the embedding's factor (``None``: ``sqrt(features)``; transformers': 1.0).
      block: a factory ``block(name) -> Layer`` used for every layer instead of
        :func:`jnn.decoder_block` (whose options above then do not apply): ``[B, T, features]`` in
        and out; cached generation needs the ``methods`` ``init_cache`` and ``decode`` that
        ``decoder_block`` declares (docs: guides/custom_attention.md).
      name: optional explicit key for this model.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.decoder_lm(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16, max_len=16)
      >>> tokens = jnp.zeros((2, 5), jnp.int32)
      >>> params, state = lm.init(jax.random.key(0), tokens)
      >>> lm.apply(params, state, tokens)[0].shape
      (2, 5, 11)
      >>> deep = jnn.decoder_lm(11, 8, 1, 8, 16, 16, scan_layers=True)  # one compiled block for any depth
      >>> deep.init(jax.random.key(0), tokens)[0]["blocks"]["attention"]["query"]["w"].shape
      (8, 8, 8)
    """
    label = name or "decoder_lm"
    checks.divides(label, "num_heads", num_heads, features, "features")
    final_norm = (layer_norm if norm == "layer" else rms_norm)(epsilon=norm_epsilon)
    embedder = token_embedder(label, vocab_size, features, max_len, tied, positional, head_bias=use_bias,
                              norm=final_norm, embedding_scale=embedding_scale)
    style = dict(norm=norm, norm_epsilon=norm_epsilon, mlp=mlp, use_bias=use_bias, rope_base=rope_base,
                 rope_scaling=rope_scaling)
    block = block or (lambda block_label: decoder_block(
        num_heads, mlp_dim, dropout_rate, attention_dropout_rate=attention_dropout_rate, num_kv_heads=num_kv_heads,
        rope=positional == "rope", attention_bias=attention_bias, name=block_label, **style))
    stack = block_stack(lambda block_label: core.ensure_layer(f"{label} block", block(block_label)), num_layers,
                        scan=scan_layers, remat_policy=remat, label=label)
    residual_dropout = dropout(dropout_rate)

    def init(key, example):
        tokens = shape_of(example)
        embedder.methods["check_tokens"](tokens)
        embed_key, stack_key = jax.random.split(key)
        params, _ = embedder.init(embed_key, tokens)
        x = jax.ShapeDtypeStruct((*tokens.shape, features), params["embedding"]["embedding"].dtype)
        return {**params, **stack.init(stack_key, x)[0]}, {}

    def apply(params, state, tokens, *, key=None, train=False, **unknown):
        core.check_keywords(label, frozenset(), unknown)
        checks.key_for(label, train and dropout_rate > 0, key)
        stack_key, drop_key = core.split_key(key, 2)
        x = residual_dropout.apply({}, {}, embedder.apply(params, {}, tokens)[0], key=drop_key, train=train)[0]
        x, _ = stack.apply({k: params[k] for k in stack.children}, {}, x, key=stack_key, train=train)
        return embedder.methods["head"](params, x), state

    def init_cache(batch, length=None, dtype=None):
        length = max_len if length is None else length
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype  # as the embedding
        return stack.methods["init_cache"](batch, length, features, dtype)

    methods = {"init_cache": init_cache, "decode_step": decoding(embedder, stack.methods["decode"])} \
        if "decode" in stack.methods else {}      # a custom block without a cache: generate_uncached only
    return Layer(init, apply, "decoder_lm", name, methods=methods)
