"""Character-level encoder-decoder transformer that reverses digit strings.

Examples are generated on the fly (inside the compiled training step): a string of random digits
of length ``1..train_max_len`` (except the held-out ``holdout_len``) and its reversal. Tokens:
``0`` pad, ``1`` start, ``2`` end, ``3..12`` the digits. The model is ``jnn.encoder_decoder``
(scanned blocks); decoding is greedy with the key/value cache (``jnn.generate.generate`` with
``context=``: the source is encoded once). Reports exact-match accuracy per length: trained
lengths, the held-out length inside the range, and lengths longer than any seen in training.

Usage: python experiments/seq2seq.py [--steps 1500] [--out runs]
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jnn  # noqa: E402
from common import parse_config, run_dir, save_json  # noqa: E402
from jnn.generate import generate  # noqa: E402

PAD, START, END, DIGIT0 = 0, 1, 2, 3
VOCAB = DIGIT0 + 10


@dataclasses.dataclass(frozen=True)
class Config:
    """Encoder-decoder transformer reversing digit strings (exact answers, generated on the fly)."""
    layers: int = 2
    heads: int = 4
    features: int = 64
    mlp_dim: int = 128
    positional: str = "sinusoidal"
    train_max_len: int = 8
    holdout_len: int = 5
    eval_max_len: int = 12
    batch_size: int = 64
    steps: int = 1500
    steps_per_chunk: int = 100
    learning_rate: float = 3e-3
    eval_examples: int = 200
    seed: int = 0
    out: str = ""


def make_batch(key, batch: int, lengths_allowed: jax.Array, width: int):
    """Source ``[B, width]``, its lengths, decoder input and target ``[B, width + 1]``, target mask."""
    len_key, digit_key = jax.random.split(key)
    lengths = jax.random.choice(len_key, lengths_allowed, (batch,))
    digits = jax.random.randint(digit_key, (batch, width), DIGIT0, VOCAB)
    pos = jnp.arange(width)
    valid = pos[None, :] < lengths[:, None]
    source = jnp.where(valid, digits, PAD)
    # reversed: position t holds source[L - 1 - t]
    rev_index = jnp.clip(lengths[:, None] - 1 - pos[None, :], 0, width - 1)
    reversed_ = jnp.where(valid, jnp.take_along_axis(source, rev_index, axis=1), PAD)
    answer = jnp.concatenate([reversed_, jnp.zeros((batch, 1), jnp.int32)], axis=1)
    answer = answer.at[jnp.arange(batch), lengths].set(END)  # digits then END
    decoder_in = jnp.concatenate([jnp.full((batch, 1), START, jnp.int32), answer[:, :-1]], axis=1)
    mask = jnp.arange(width + 1)[None, :] <= lengths[:, None]
    return source, lengths, decoder_in, answer, mask


def build(config: Config):
    return jnn.encoder_decoder(VOCAB, config.layers, config.heads, config.features, config.mlp_dim,
                               max_len=config.eval_max_len + 2, positional=config.positional)


def train(config: Config, model, log=print):
    width = config.train_max_len
    allowed = jnp.asarray([n for n in range(1, width + 1) if n != config.holdout_len], jnp.int32)
    params, _ = model.init(jax.random.key(config.seed), jnp.zeros((1, width + 1), jnp.int32))
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, min(100, config.steps // 10),
                                                  config.steps)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))

    def loss_fn(params, key):
        source, lengths, decoder_in, answer, mask = make_batch(key, config.batch_size, allowed, width)
        logits = model.apply(params, {}, decoder_in, context=source, context_lengths=lengths)[0]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, answer)
        return jnp.sum(losses * mask) / jnp.sum(mask)

    @jax.jit
    def chunk(params, opt_state, key):
        def step(carry, key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, key)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                                   jax.random.split(key, config.steps_per_chunk))
        return params, opt_state, losses.mean()

    opt_state = opt.init(params)
    keys = jax.random.split(jax.random.key(config.seed + 1), max(1, config.steps // config.steps_per_chunk))
    history = []
    for i, key in enumerate(keys):
        params, opt_state, loss = chunk(params, opt_state, key)
        history.append(float(loss))
        log(f"step {(i + 1) * config.steps_per_chunk:5d}  loss {history[-1]:.4f}")
    return params, history


def decode_strings(tokens) -> list[str]:
    out = []
    for row in np.asarray(tokens):
        chars = []
        for t in row:
            if t == END:
                break
            chars.append(str(t - DIGIT0) if t >= DIGIT0 else "?")
        out.append("".join(chars))
    return out


def evaluate(config: Config, model, params, length: int, key):
    width = config.eval_max_len
    source, lengths, _, answer, _ = make_batch(key, config.eval_examples, jnp.asarray([length]), width)
    out = generate(model, params, jnp.full((config.eval_examples, 1), START, jnp.int32), length + 1,
                   key=key, temperature=0.0, context=source, context_lengths=lengths)
    predicted, expected = decode_strings(out[:, 1:]), decode_strings(answer)
    sources = ["".join(str(t - DIGIT0) for t in row if t >= DIGIT0) for row in np.asarray(source)]
    accuracy = float(np.mean([p == e for p, e in zip(predicted, expected)]))
    return accuracy, list(zip(sources, expected, predicted))


def main(config: Config) -> dict:
    if not 1 <= config.holdout_len <= config.train_max_len < config.eval_max_len:
        raise ValueError("seq2seq: need 1 <= holdout_len <= train_max_len < eval_max_len, got "
                         f"{config.holdout_len}, {config.train_max_len}, {config.eval_max_len}")
    model = build(config)
    load0, start = os.getloadavg()[0], time.perf_counter()
    params, history = train(config, model)
    train_s = time.perf_counter() - start
    print(f"trained {config.steps} steps in {train_s:.1f} s (load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    results, examples = {}, {}
    for length in range(1, config.eval_max_len + 1):
        acc, rows = evaluate(config, model, params, length, jax.random.key(1000 + length))
        kind = ("held out" if length == config.holdout_len else
                "trained" if length <= config.train_max_len else "longer")
        results[length] = acc
        wrong = [r for r in rows if r[1] != r[2]]
        examples[length] = (rows[:2], wrong[:2])
        print(f"length {length:2d} ({kind:8s}) exact match {acc:6.1%}   e.g. {rows[0][0]} -> {rows[0][2]}"
              + (f"   wrong: {wrong[0][0]} -> {wrong[0][2]} (want {wrong[0][1]})" if wrong else ""))
    trained = [results[n] for n in range(1, config.train_max_len + 1) if n != config.holdout_len]
    longer = [results[n] for n in range(config.train_max_len + 1, config.eval_max_len + 1)]
    summary = {"in_distribution": float(np.mean(trained)), "held_out_length": results[config.holdout_len],
               "longer": float(np.mean(longer)), "per_length": results, "train_seconds": train_s,
               "final_loss": history[-1], "history": history, "load_average_start": load0}
    print(f"exact match: trained lengths {summary['in_distribution']:.1%}, held-out length "
          f"{config.holdout_len}: {summary['held_out_length']:.1%}, longer ({config.train_max_len + 1}.."
          f"{config.eval_max_len}): {summary['longer']:.1%}")
    path = run_dir(config.out, "seq2seq")
    if path is not None:
        save_json(path / "result.json", {**summary, "config": dataclasses.asdict(config)})
    return summary


if __name__ == "__main__":
    main(parse_config(Config))
