"""Three attention variants of one character LM on Tiny Shakespeare, trained with gradient
accumulation, each sampled with and without the key/value cache.

    python experiments/attention_variants.py                 # default: about 2 minutes on 2 cores
    python experiments/attention_variants.py --steps 2000 --accumulate 4

Variants of ``jnn.decoder_lm`` (same size, same data order, same optimizer):
- ``learned``: learned positions only (the default model);
- ``alibi``: plus an ALiBi bias on every self-attention (``attention_bias=`` hook with
  ``jnn.layers.attention.alibi_bias``);
- ``window``: plus a causal sliding window of ``window`` characters (``sliding_window_mask``).

Each step draws ``batch_size`` random windows of ``seq_len`` characters and applies one update
from ``accumulate`` micro-batches (``make_train_step(accumulate=k)``); ``steps_per_epoch`` steps
run as one ``lax.scan``. Validation: mean cross-entropy (nats per character) over the first
``val_windows`` non-overlapping windows of the last 10% of the text. Then each model samples
``sample_length`` characters greedily with ``jnn.generate.generate`` (the cache) and
``generate_uncached``; the two must agree token for token.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import optax

import jnn
from common import parse_config
from jnn.generate import generate, generate_uncached
from jnn.layers.attention import alibi_bias, sliding_window_mask


@dataclasses.dataclass
class Config:
    """Attention variants (learned positions, ALiBi, sliding window) of a character LM."""
    layers: int = 2
    heads: int = 4
    features: int = 128
    mlp_dim: int = 512
    seq_len: int = 64
    batch_size: int = 32            # examples per update
    accumulate: int = 2             # micro-batches per update
    steps: int = 600
    steps_per_epoch: int = 100
    learning_rate: float = 2e-3
    window: int = 16
    val_windows: int = 256
    sample_length: int = 48
    seed: int = 0
    variants: tuple[str, ...] = ("learned", "alibi", "window")


def hooks(config: Config) -> dict:
    return {"learned": None, "alibi": lambda q, k: alibi_bias(config.heads, q, k),
            "window": lambda q, k: sliding_window_mask(q, k, config.window)}


def windows(ids: jax.Array, key: jax.Array, batch: int, seq_len: int):
    """``batch`` random ``(inputs, targets)`` windows of ``seq_len`` characters."""
    start = jax.random.randint(key, (batch,), 0, ids.shape[0] - seq_len - 1)
    take = jax.vmap(lambda s: jax.lax.dynamic_slice(ids, (s,), (seq_len + 1,)))(start)
    return take[:, :-1], take[:, 1:]


def train_variant(lm: jnn.Layer, train_ids, val_ids, config: Config) -> dict:
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(config.learning_rate))
    step = jnn.train.make_train_step(lm, jnn.losses.softmax_cross_entropy, opt, metrics={},
                                     accumulate=config.accumulate)

    @jax.jit
    def epoch(ts):
        def body(ts, _):
            batch = windows(train_ids, jnn.train.step_key(ts), config.batch_size, config.seq_len)
            return step(ts, batch)
        return jax.lax.scan(body, ts, None, length=config.steps_per_epoch)

    n = min(config.val_windows, (val_ids.shape[0] - 1) // config.seq_len)
    cut = val_ids[:n * config.seq_len + 1]
    val = (cut[:-1].reshape(n, config.seq_len), cut[1:].reshape(n, config.seq_len))
    evaluate = jax.jit(lambda p, s: jnn.losses.softmax_cross_entropy(lm.apply(p, s, val[0])[0], val[1]))
    ts = jnn.train.init_train_state(lm, opt, jax.random.key(config.seed), val[0][:1])
    start, curve = time.perf_counter(), []
    for _ in range(config.steps // config.steps_per_epoch):
        ts, logs = epoch(ts)
        curve.append(float(evaluate(ts.params, ts.state)))
    seconds = time.perf_counter() - start
    prompt = val[0][:1, :8]
    cached = generate(lm, ts.params, prompt, config.sample_length, key=jax.random.key(1), temperature=0.0)
    uncached = generate_uncached(lm, ts.params, prompt, config.sample_length, key=jax.random.key(1),
                                 temperature=0.0)
    return {"val_loss": curve, "train_loss": float(logs["loss"][-1]), "seconds": seconds,
            "updates": int(ts.step), "cached_equals_uncached": bool((cached == uncached).all()),
            "sample": cached[0].tolist()}


def main(config: Config) -> dict:
    text = jnn.data.load_tiny_shakespeare()
    chars = sorted(set(text))
    ids = jnp.asarray([chars.index(c) for c in text], jnp.int32)
    split = int(0.9 * ids.shape[0])
    results = {}
    for variant in config.variants:
        lm = jnn.decoder_lm(len(chars), config.layers, config.heads, config.features, config.mlp_dim,
                            max_len=config.seq_len, attention_bias=hooks(config)[variant], name=variant)
        results[variant] = r = train_variant(lm, ids[:split], ids[split:], config)
        r["sample"] = "".join(chars[i] for i in r["sample"])
        print(f"{variant:8s} val {r['val_loss'][-1]:.3f} nats/char after {r['updates']} updates "
              f"(x{config.accumulate} micro-batches), {r['seconds']:.0f} s, "
              f"cached == uncached: {r['cached_equals_uncached']}")
    return results


if __name__ == "__main__":
    main(parse_config(Config))
