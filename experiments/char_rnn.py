"""A character-level LSTM language model on Tiny Shakespeare, and text sampled from it.

    python experiments/char_rnn.py                        # default: val < 1.8 nats/char in <= 6 min
    python experiments/char_rnn.py --layers 2 --hidden 512 --epochs 30   # bigger: slower, lower loss
    python experiments/char_rnn.py --prompt "ROMEO:" --temperature 0.6 --sample-length 600

Data: ``$JNN_DATA_DIR/tinyshakespeare/input.txt``; the first 90% of the characters train, the
last 10% validate; the vocabulary (``jnn.data.CharVocab``) is built from the whole text.

Network: ``embedding(V, E) -> recurrent(lstm_cell(H)) x layers -> dense(V)`` over ``[B, T]``
windows: every position predicts the next character. Training draws ``batch_size`` fresh windows
at random starts for every step (``jnn.data.random_windows``) inside a jitted ``lax.scan`` of
``steps_per_epoch`` steps, so Python runs once per "epoch"; Adam with warm-up + cosine decay
and gradient clipping by global norm. Validation loss is the mean cross-entropy, in nats per
character, over every position of the non-overlapping length-``seq_len`` windows that cover the
validation text (each window starts from a zero carry), measured after every epoch.

Default config, measured on the shared 2-core CPU (heavily loaded: ~0.5 s a step): 600 steps
of 64 windows x 64 characters, validation 1.704 nats/char (2.46 bits/char) in 320 s, inside the
stated 6-minute budget; the sample has speaker names in capitals with colons and verse lines.

Sampling is one jitted function: a ``lax.scan`` feeds the prompt through the cells step by step,
then a second ``lax.scan`` draws ``sample_length`` characters from ``softmax(logits / temperature)``
and feeds each back in, carrying the LSTM states.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import parse_config, plot_curves, run_dir, save_json
from jnn.data import CharVocab, lm_windows
from jnn.io import atomic_write
from jnn.train.history import HistoryWriter


@dataclasses.dataclass
class Config:
    """Character-level LSTM language model on Tiny Shakespeare."""
    hidden: int = 256
    layers: int = 1
    embed: int = 64
    seq_len: int = 64
    batch_size: int = 64
    epochs: int = 6                  # "epochs" of steps_per_epoch random-window steps
    steps_per_epoch: int = 100
    learning_rate: float = 4e-3
    warmup_steps: int = 50           # linear warm-up, then cosine decay to 0 over all steps
    clip_norm: float = 1.0           # gradient clipping by global norm (0: no clipping)
    val_fraction: float = 0.1        # the last 10% of the text validates
    budget_minutes: float = 6.0      # the stated wall-clock budget (reported, not enforced)
    prompt: str = "ROMEO:\n"
    sample_length: int = 500
    temperature: float = 0.8         # sampling temperature (0: greedy, always the likeliest)
    text_limit: int = 0              # use only the first N characters of the text (0: all)
    seed: int = 0
    out: str = "runs"                # run directory root ("" to save nothing)


class CharLSTM(NamedTuple):
    """The network and the pieces the sampler steps through one character at a time."""
    net: jnn.Layer            # [B, T] ids -> [B, T, V] logits
    embed: jnn.Layer
    cells: tuple              # one lstm_cell per recurrent layer, params under "lstm_{i}"
    head: jnn.Layer


def model(vocab_size: int, config: Config) -> CharLSTM:
    embed = jnn.embedding(vocab_size, config.embed, name="embed")
    cells = tuple(jnn.lstm_cell(config.hidden) for _ in range(config.layers))
    rnns = [jnn.recurrent(cell, name=f"lstm_{i}") for i, cell in enumerate(cells)]
    head = jnn.dense(vocab_size, name="head")
    return CharLSTM(jnn.serial(embed, *rnns, head), embed, cells, head)


def schedule(config: Config) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine decay to 0 at the last step."""
    total = config.epochs * config.steps_per_epoch
    warmup = min(config.warmup_steps, total - 1)
    if warmup > 0:
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total)
    return optax.cosine_decay_schedule(config.learning_rate, total)


def optimizer(config: Config) -> optax.GradientTransformation:
    if config.clip_norm < 0:
        raise ValueError(f"char_rnn: --clip-norm must be >= 0, got {config.clip_norm}")
    adam = optax.adam(schedule(config))
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam) if config.clip_norm else adam


def make_epoch(net: jnn.Layer, opt, train_ids: jax.Array, config: Config):
    """A jitted ``train_state -> (train_state, mean loss)`` running ``steps_per_epoch`` steps
    on fresh random windows inside one ``lax.scan``."""
    step = jnn.train.make_train_step(net, jnn.losses.softmax_cross_entropy, opt, metrics={})

    def body(ts, _):
        key, data_key = jax.random.split(ts.key)
        batch = jnn.data.random_windows(data_key, train_ids, config.seq_len, config.batch_size)
        ts, logs = step(ts._replace(key=key), batch)
        return ts, logs["loss"]

    @jax.jit
    def epoch(ts):
        ts, losses = jax.lax.scan(body, ts, None, length=config.steps_per_epoch)
        return ts, jnp.mean(losses)

    return epoch


def make_sampler(lm: CharLSTM, sample_length: int):
    """A jitted ``(params, prompt_ids [P], key, temperature) -> ids [sample_length]``.

    One ``lax.scan`` feeds the prompt through the cells, a second draws each new character from
    ``softmax(logits / temperature)`` (the arg-max when ``temperature == 0``) and feeds it back;
    the carries are the LSTMs' ``(c, h)``. ``temperature`` is traced: changing it does not
    recompile.
    """
    def advance(params, carries, token):
        x = lm.embed.apply(params["embed"], {}, token[None])[0]                      # [1, E]
        new = []
        for i, (cell, carry) in enumerate(zip(lm.cells, carries)):
            carry, x = cell.step(params[f"lstm_{i}"], carry, x)
            new.append(carry)
        return lm.head.apply(params["head"], {}, x)[0][0], tuple(new)                # [V]

    @jax.jit
    def sample(params, prompt_ids, key, temperature):
        carries = tuple(cell.initial_carry((1,)) for cell in lm.cells)
        logits = jnp.zeros(params["head"]["b"].shape, jnp.float32)
        (logits, carries), _ = jax.lax.scan(
            lambda state, token: (advance(params, state[1], token), None), (logits, carries), prompt_ids)

        def draw(state, k):
            logits, carries = state
            sampled = jax.random.categorical(k, logits / jnp.maximum(temperature, 1e-6))
            token = jnp.where(temperature > 0, sampled, jnp.argmax(logits)).astype(jnp.int32)
            return advance(params, carries, token), token

        return jax.lax.scan(draw, (logits, carries), jax.random.split(key, sample_length))[1]

    return sample


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"char_rnn: --val-fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def main(config: Config) -> dict:
    text = jnn.data.load_tiny_shakespeare()
    if config.text_limit:
        text = text[: config.text_limit]
    if config.temperature < 0:
        raise ValueError(f"char_rnn: --temperature must be >= 0 (0: greedy), got {config.temperature}")
    vocab = CharVocab(text)
    train_text, val_text = split_text(text, config.val_fraction)
    train_ids = jnp.asarray(vocab.encode(train_text))
    val_x, val_y = lm_windows(vocab.encode(val_text), config.seq_len)
    prompt_ids = jnp.asarray(vocab.encode(config.prompt))  # fails clearly on unknown characters
    lm = model(vocab.size, config)
    opt, lr_at = optimizer(config), schedule(config)
    total_steps = config.epochs * config.steps_per_epoch
    print(f"text: {len(text):,} characters, vocabulary {vocab.size}; train {len(train_text):,}, "
          f"validation {len(val_text):,} ({len(val_x)} windows of {config.seq_len})")
    print(jnn.summary(lm.net, jax.ShapeDtypeStruct((1, config.seq_len), jnp.int32)))
    print(f"budget: {total_steps} steps ({config.epochs} x {config.steps_per_epoch}) of "
          f"{config.batch_size} x {config.seq_len} characters; stated wall-clock budget "
          f"{config.budget_minutes:g} min")

    out = run_dir(config.out, "char_rnn")
    writer = HistoryWriter(out / "history.csv") if out else None
    ts = jnn.train.init_train_state(lm.net, opt, jax.random.key(config.seed),
                                    jax.ShapeDtypeStruct((config.batch_size, config.seq_len), jnp.int32))
    epoch_fn = make_epoch(lm.net, opt, train_ids, config)
    evaluate = jax.jit(jnn.train.make_eval_fn(lm.net, jnn.losses.softmax_cross_entropy, batch_size=256))
    history: dict[str, list[float]] = {}
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        tick = time.perf_counter()
        ts, loss = epoch_fn(ts)
        val_loss = float(evaluate(ts.params, ts.state, (val_x, val_y))["loss"])
        logs = {"loss": float(loss), "val_loss": val_loss, "bpc": float(loss) / math.log(2),
                "val_bpc": val_loss / math.log(2), "lr": float(lr_at(ts.step)),
                "time": time.perf_counter() - tick}
        for k, v in {"epoch": epoch, **logs}.items():
            history.setdefault(k, []).append(v)
        if writer:
            writer.write(history)
        print(f"epoch {epoch:3d}  step {epoch * config.steps_per_epoch:5d}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
    train_seconds = time.perf_counter() - start
    val_loss = history["val_loss"][-1]
    within = "within" if train_seconds <= 60 * config.budget_minutes else "OVER"
    print(f"validation loss: {val_loss:.4f} nats/char ({val_loss / math.log(2):.3f} bits/char) after "
          f"{total_steps} steps in {train_seconds:.1f} s ({within} the {config.budget_minutes:g} min budget)")

    sampler = make_sampler(lm, config.sample_length)
    tick = time.perf_counter()
    sample_ids = np.asarray(sampler(ts.params, prompt_ids, jax.random.key(config.seed + 1),
                                    jnp.float32(config.temperature)))
    sample = vocab.decode(sample_ids)
    print(f"--- sample (temperature {config.temperature:g}, {config.sample_length} characters, "
          f"{time.perf_counter() - tick:.2f} s incl. compile) ---\n{config.prompt}{sample}\n---")
    summary = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2), "train_seconds": train_seconds,
               "steps": total_steps, "vocab": vocab.chars, "sample": sample,
               "config": dataclasses.asdict(config)}
    if out:
        save_json(out / "result.json", summary)
        atomic_write(out / "sample.txt", config.prompt + sample + "\n")
        if plot_curves({"char_rnn": history}, out / "curves.png", keys=("loss", "bpc")):
            print(f"learning curves: {out / 'curves.png'}")
        print(f"saved to {out}")
    return {**summary, "sample_ids": sample_ids, "history": history}


if __name__ == "__main__":
    main(parse_config(Config))
