"""A small decoder-only (GPT-style) transformer on Tiny Shakespeare, and text sampled from it.

    python experiments/char_transformer.py                     # stops at 1.88 validation nats/char
    python experiments/char_transformer.py --target-loss 0 --epochs 30   # all 3,000 steps
    python experiments/char_transformer.py --prompt "JULIET:" --temperature 0.7 --top-k 10

Data and training as in ``char_rnn.py`` (both use ``char_lm.py``): the first 90% of the text
trains, the last 10% validates; every step draws ``batch_size`` fresh windows of ``seq_len``
characters; each "epoch" of ``steps_per_epoch`` steps is one jitted ``lax.scan``; Adam with
warm-up + cosine decay and gradient clipping. After each epoch a strided subset of
``check_windows`` validation windows is scored; training stops once the mean cross-entropy over
all the non-overlapping ``seq_len`` validation windows (nats per character, each position seeing
only the characters before it in its window) is at most ``target_loss``.

Network: ``jnn.decoder_lm``: character embedding (tied with the output head), ``layers``
pre-norm causal decoder blocks (``heads``-head attention, GELU MLP of ``mlp_dim``), a final layer
norm; rotary position embeddings (``--positional learned`` or ``sinusoidal`` instead).
Default: 4 layers, 128 features, 4 heads, MLP 512 (802k params), 16 windows x 64 characters,
Adam 4e-3 (beta2 0.99), up to 800 steps; figures in benchmarks/RESULTS.md ("Time to a result").

Sampling uses the key/value cache (``jnn.generate.generate``): the prompt fills the cache in one
pass and each new character costs one decode step. Samples longer than the model's context
(``seq_len``) slide: each further chunk restarts from the last ``seq_len // 2`` characters.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import jnn
from char_lm import LMConfig, run
from common import parse_config
from jnn.generate import generate


@dataclasses.dataclass
class Config(LMConfig):
    """Character-level decoder-only transformer on Tiny Shakespeare."""
    layers: int = 4
    heads: int = 4
    features: int = 128
    mlp_dim: int = 512
    dropout: float = 0.0
    positional: str = "rope"        # rope, learned or sinusoidal
    seq_len: int = 64
    batch_size: int = 16
    epochs: int = 8
    steps_per_epoch: int = 100
    learning_rate: float = 4e-3
    warmup_steps: int = 50
    beta2: float = 0.99
    target_loss: float = 1.88
    weight_decay: float = 0.0       # AdamW decay on weight matrices (0: plain Adam)
    top_k: int = 0                  # sample among the k likeliest characters (0: all)
    budget_minutes: float = 10.0


def model(vocab_size: int, config: Config):
    return jnn.decoder_lm(vocab_size, config.layers, config.heads, config.features, config.mlp_dim,
                          max_len=config.seq_len, dropout_rate=config.dropout,
                          positional=config.positional, name="gpt")


def make_sampler(lm, context: int, sample_length: int, top_k: int = 0):
    """``(params, prompt_ids [P], key, temperature) -> ids [sample_length]`` with the KV cache.

    Chunks of at most ``context`` tokens: each starts from the last ``context // 2`` tokens so
    far (the prompt's, for the first) and fills the rest of the context; each chunk draws with a
    fresh key split off ``key``. A few shapes compile (first, full and last chunk), once each.
    """
    keep = max(1, context // 2)

    def sample(params, prompt_ids, key, temperature):
        tokens = jnp.asarray(prompt_ids, jnp.int32)
        start = tokens.shape[0]
        while tokens.shape[0] - start < sample_length:
            key, chunk_key = jax.random.split(key)
            window = tokens[-keep:]
            n = min(sample_length - (tokens.shape[0] - start), context - window.shape[0])
            out = generate(lm, params, window[None], n, key=chunk_key, temperature=float(temperature),
                           top_k=top_k or None)
            tokens = jnp.concatenate([tokens, out[0, window.shape[0]:]])
        return tokens[start:]

    return sample


def main(config: Config) -> dict:
    if config.top_k < 0:
        raise ValueError(f"char_transformer: --top-k must be >= 0 (0: all), got {config.top_k}")

    def build(vocab_size):
        lm = model(vocab_size, config)
        return lm, make_sampler(lm, config.seq_len, config.sample_length, config.top_k)

    return run("char_transformer", config, build)


if __name__ == "__main__":
    main(parse_config(Config))
