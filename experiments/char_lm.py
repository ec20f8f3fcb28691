"""What the character-level language-model experiments share: Tiny Shakespeare split into
train/validation text, Adam with warm-up + cosine decay and clipping, epochs of random-window
steps fused in one ``lax.scan``, validation in nats/char, a sample, and the saved run.

``char_rnn.py`` (an LSTM) and ``char_transformer.py`` (a decoder-only transformer) each give
:func:`run` their config (a dataclass with the :class:`LMConfig` fields) and a ``build(vocab_size)``
returning the network ``[B, T] ids -> [B, T, V] logits`` and its sampler.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import plot_curves, run_dir, save_json
from jnn.data import CharVocab, lm_windows
from jnn.io import atomic_write
from jnn.train.callbacks import HistoryFile

__all__ = ["LMConfig", "split_text", "schedule", "optimizer", "make_epoch", "run"]

# A sampler: (params, prompt ids [P], key, temperature) -> new ids [sample_length].
Sampler = Callable[[dict, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class LMConfig:
    """The fields every character-level LM experiment has (its own config adds the model's)."""
    seq_len: int = 64
    batch_size: int = 64
    epochs: int = 6                  # "epochs" of steps_per_epoch random-window steps
    steps_per_epoch: int = 100
    learning_rate: float = 4e-3
    warmup_steps: int = 50           # linear warm-up, then cosine decay to 0 over all steps
    beta2: float = 0.999             # Adam's second-moment decay
    clip_norm: float = 1.0           # gradient clipping by global norm (0: no clipping)
    val_fraction: float = 0.1        # the last 10% of the text validates
    budget_minutes: float = 6.0      # the stated wall-clock budget (reported, not enforced)
    prompt: str = "ROMEO:\n"
    sample_length: int = 500
    temperature: float = 0.8         # sampling temperature (0: greedy, always the likeliest)
    text_limit: int = 0              # use only the first N characters of the text (0: all)
    check_windows: int = 256         # per-epoch validation on about this many evenly spaced windows (0: all)
    target_loss: float = 0.0         # stop once the full validation loss is at most this (0: never)
    seed: int = 0
    out: str = "runs"                # run directory root ("" to save nothing)


def split_text(text: str, val_fraction: float, who: str = "char_lm") -> tuple[str, str]:
    """The first ``1 - val_fraction`` of ``text`` trains, the rest validates."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"{who}: --val-fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def schedule(config) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine decay to 0 at the last step."""
    total = config.epochs * config.steps_per_epoch
    warmup = min(config.warmup_steps, total - 1)
    if warmup > 0:
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total)
    return optax.cosine_decay_schedule(config.learning_rate, total)


def optimizer(config, who: str = "char_lm") -> optax.GradientTransformation:
    """Adam (AdamW when the config has ``weight_decay > 0``, applied to weight matrices only) on
    :func:`schedule`, after clipping gradients by global norm when ``clip_norm > 0``."""
    if config.clip_norm < 0:
        raise ValueError(f"{who}: --clip-norm must be >= 0, got {config.clip_norm}")
    decay = getattr(config, "weight_decay", 0.0)
    if decay < 0:
        raise ValueError(f"{who}: --weight-decay must be >= 0, got {decay}")
    b2 = getattr(config, "beta2", 0.999)
    adam = (optax.adamw(schedule(config), b2=b2, weight_decay=decay, mask=jnn.tree.mask)
            if decay else optax.adam(schedule(config), b2=b2))
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam) if config.clip_norm else adam


def make_epoch(net: jnn.Layer, opt, train_ids: jax.Array, config):
    """A jitted ``train_state -> (train_state, mean loss)`` running ``steps_per_epoch`` steps
    on fresh random windows inside one ``lax.scan``."""
    step = jnn.train.make_train_step(net, jnn.losses.softmax_cross_entropy, opt, metrics={})

    def body(ts, _):
        key, data_key = jax.random.split(ts.key)
        batch = jnn.data.random_windows(data_key, train_ids, config.seq_len, config.batch_size)
        ts, logs = step(ts._replace(key=key), batch)
        return ts, logs["loss"]

    @functools.partial(jax.jit, compiler_options=jnn.train.compiler_options())
    def epoch(ts):
        ts, losses = jax.lax.scan(body, ts, None, length=config.steps_per_epoch)
        return ts, jnp.mean(losses)

    return epoch


def run(name: str, config, build: Callable[[int], tuple[jnn.Layer, Sampler]]) -> dict:
    """Trains ``build(vocab_size)``'s network on Tiny Shakespeare as ``config`` says, reports
    validation nats/char on about ``check_windows`` windows after every epoch and on all of them
    at the end (or once ``target_loss`` is met, which stops training), samples
    ``config.sample_length`` characters after ``config.prompt``, and saves ``history.csv``,
    ``result.json``, ``sample.txt`` and ``curves.png`` under ``config.out/name``."""
    text = jnn.data.load_tiny_shakespeare()
    if config.text_limit:
        text = text[: config.text_limit]
    if config.temperature < 0:
        raise ValueError(f"{name}: --temperature must be >= 0 (0: greedy), got {config.temperature}")
    vocab = CharVocab(text)
    train_text, val_text = split_text(text, config.val_fraction, name)
    train_ids = jnp.asarray(vocab.encode(train_text))
    val_x, val_y = lm_windows(vocab.encode(val_text), config.seq_len)
    prompt_ids = jnp.asarray(vocab.encode(config.prompt))  # fails clearly on unknown characters
    net, sampler = build(vocab.size)
    opt, lr_at = optimizer(config, name), schedule(config)
    total_steps = config.epochs * config.steps_per_epoch
    print(f"text: {len(text):,} characters, vocabulary {vocab.size}; train {len(train_text):,}, "
          f"validation {len(val_text):,} ({len(val_x)} windows of {config.seq_len})")
    print(jnn.summary(net, jax.ShapeDtypeStruct((1, config.seq_len), jnp.int32)))
    print(f"budget: {total_steps} steps ({config.epochs} x {config.steps_per_epoch}) of "
          f"{config.batch_size} x {config.seq_len} characters; stated wall-clock budget "
          f"{config.budget_minutes:g} min")

    out = run_dir(config.out, name)
    writer = HistoryFile(out / "history.csv") if out else None
    ts = jnn.train.init_train_state(net, opt, jax.random.key(config.seed),
                                    jax.ShapeDtypeStruct((config.batch_size, config.seq_len), jnp.int32))
    epoch_fn = make_epoch(net, opt, train_ids, config)
    evaluate = jax.jit(jnn.train.make_eval_fn(net, jnn.losses.softmax_cross_entropy, batch_size=256),
                       compiler_options=jnn.train.compiler_options())
    history: dict[str, list[float]] = {}
    stride = max(1, len(val_x) // config.check_windows) if config.check_windows else 1
    check = (val_x[::stride], val_y[::stride])
    full = lambda: float(evaluate(ts.params, ts.state, (val_x, val_y))["loss"])  # noqa: E731
    start, val_loss = time.perf_counter(), None
    for epoch in range(1, config.epochs + 1):
        tick = time.perf_counter()
        ts, loss = epoch_fn(ts)
        check_loss = float(evaluate(ts.params, ts.state, check)["loss"])
        val_loss = full() if config.target_loss and check_loss <= config.target_loss else None
        logs = {"loss": float(loss), "val_loss": check_loss, "bpc": float(loss) / math.log(2),
                "val_bpc": check_loss / math.log(2), "lr": float(lr_at(ts.step)),
                "time": time.perf_counter() - tick}
        for k, v in {"epoch": epoch, **logs}.items():
            history.setdefault(k, []).append(v)
        if writer:
            writer.write(history)
        print(f"epoch {epoch:3d}  step {epoch * config.steps_per_epoch:5d}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
        if val_loss is not None and val_loss <= config.target_loss:
            print(f"target {config.target_loss:g} reached: full validation {val_loss:.4f} nats/char", flush=True)
            break
    val_loss = full() if val_loss is None else val_loss
    train_seconds, steps = time.perf_counter() - start, epoch * config.steps_per_epoch
    within = "within" if train_seconds <= 60 * config.budget_minutes else "OVER"
    print(f"validation loss (all {len(val_x)} windows): {val_loss:.4f} nats/char ({val_loss / math.log(2):.3f} "
          f"bits/char) after {steps} steps in {train_seconds:.1f} s ({within} the {config.budget_minutes:g} min "
          "budget)")

    tick = time.perf_counter()
    sample_ids = np.asarray(sampler(ts.params, prompt_ids, jax.random.key(config.seed + 1),
                                    jnp.float32(config.temperature)))
    sample = vocab.decode(sample_ids)
    print(f"--- sample (temperature {config.temperature:g}, {config.sample_length} characters, "
          f"{time.perf_counter() - tick:.2f} s incl. compile) ---\n{config.prompt}{sample}\n---")
    summary = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2), "train_seconds": train_seconds,
               "steps": steps, "vocab": vocab.chars, "sample": sample,
               "config": dataclasses.asdict(config)}
    if out:
        save_json(out / "result.json", summary)
        atomic_write(out / "sample.txt", config.prompt + sample + "\n")
        if plot_curves({name: history}, out / "curves.png", keys=("loss", "bpc")):
            print(f"learning curves: {out / 'curves.png'}")
        print(f"saved to {out}")
    return {**summary, "sample_ids": sample_ids, "history": history, "params": ts.params}
