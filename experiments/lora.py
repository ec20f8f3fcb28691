"""LoRA vs full fine-tuning: the char transformer pretrained on the first half of Tiny Shakespeare,
then adapted to the second half (its last 10% validates), both ways, from the same pretrained params.

    python experiments/lora.py                        # small budget: about 2 minutes on 2 CPU cores
    python experiments/lora.py --pretrain-steps 3000 --adapt-steps 1000 --rank 16

Reported for each way: validation loss on the second half (nats/char) before and after, trainable
parameters, optimizer-state bytes (Adam: two moments per trainable parameter), adapter file bytes,
and training time. LoRA adapts every weight matrix named ``w`` (attention and MLP); embeddings,
norms and biases stay frozen; merged adapters give the same loss as the adapted model.
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

import jnn
import char_lm
import char_transformer
from common import parse_config


@dataclasses.dataclass
class Config:
    """Char transformer: pretrain on Tiny Shakespeare's first half, adapt to the second (full vs LoRA)."""
    layers: int = 4                  # the char transformer: layers, width (4 heads, MLP 4x width)
    features: int = 128
    pretrain_steps: int = 300
    adapt_steps: int = 200
    rank: int = 8
    alpha: float = 16.0
    full_lr: float = 1e-3            # Adam, constant, for full fine-tuning
    lora_lr: float = 5e-3            # Adam, constant, for the adapters
    include: str = "w"               # which weights get adapters (jnn.tree patterns, comma-separated)
    seed: int = 0


def _train(net, opt, ids, lm_config, steps, key, params=None):
    """Trains ``net`` for ``steps`` random-window steps (one compiled scan); returns the state and
    (wall, CPU) seconds of training, compilation excluded."""
    example = jax.ShapeDtypeStruct((lm_config.batch_size, lm_config.seq_len), jnp.int32)
    ts = jnn.train.init_train_state(net, opt, key, example)
    if params is not None:
        ts = ts._replace(params=params, opt_state=opt.init(params))
    epoch = char_lm.make_epoch(net, opt, ids, dataclasses.replace(lm_config, steps_per_epoch=steps))
    epoch = epoch.lower(ts).compile()                    # the time below leaves compilation out
    tick, cpu = time.perf_counter(), time.process_time()
    ts, _ = epoch(ts)
    jax.block_until_ready(ts.params)
    return ts, (time.perf_counter() - tick, time.process_time() - cpu)


def main(config: Config) -> dict:
    lm = char_transformer.Config(layers=config.layers, features=config.features, mlp_dim=4 * config.features,
                                 warmup_steps=min(30, config.pretrain_steps // 2), out="")
    text = jnn.data.load_tiny_shakespeare()
    vocab = jnn.data.CharVocab(text)
    first, second = text[: len(text) // 2], text[len(text) // 2:]
    second_train, second_val = char_lm.split_text(second, 0.1)
    ids = lambda t: jnp.asarray(vocab.encode(t))
    val = jnn.data.lm_windows(vocab.encode(second_val), lm.seq_len)
    net = char_transformer.model(vocab.size, lm)

    def val_loss(model, params, state):
        fn = jnn.train.make_eval_fn(model, jnn.losses.softmax_cross_entropy, batch_size=256)
        return float(fn(params, state, val)["loss"])

    pre_lm = dataclasses.replace(lm, epochs=1, steps_per_epoch=config.pretrain_steps)
    pre, seconds = _train(net, char_lm.optimizer(pre_lm), ids(first), pre_lm, config.pretrain_steps,
                          jax.random.key(config.seed))
    base, state = pre.params, pre.state
    before = val_loss(net, base, state)
    print(f"pretrained {config.pretrain_steps} steps on the first half ({len(first):,} chars) in {seconds[0]:.0f} s; "
          f"second-half validation {before:.4f} nats/char")

    key = jax.random.key(config.seed + 1)
    full, full_s = _train(net, optax.adam(config.full_lr), ids(second_train), lm, config.adapt_steps, key, base)
    adapted = jnn.lora.wrap(net, base, state, rank=config.rank, alpha=config.alpha, include=config.include.split(","))
    lora, lora_s = _train(adapted, optax.adam(config.lora_lr), ids(second_train), lm, config.adapt_steps, key)
    lora_loss = val_loss(adapted, lora.params, lora.state)
    merged_loss = val_loss(net, jnn.lora.merge(adapted, lora.params), state)
    folder = pathlib.Path(tempfile.mkdtemp())
    for name, tree in (("full", full.params), ("lora", lora.params)):
        jnn.io.save_params(folder / f"{name}.safetensors", tree)
    count = lambda t: sum(a.size for a in jax.tree_util.tree_leaves(t))
    rows = {"full fine-tuning": (val_loss(net, full.params, state), full.params, full.opt_state, full_s, "full"),
            f"LoRA rank {config.rank}": (lora_loss, lora.params, lora.opt_state, lora_s, "lora")}
    print(f"\n{config.adapt_steps} steps of {lm.batch_size} x {lm.seq_len} characters on the second half; "
          f"validation before adapting: {before:.4f} nats/char")
    print("| way | val nats/char | trainable params | optimizer-state bytes | saved file bytes | train wall / CPU s |")
    print("|---|---|---|---|---|---|")
    for name, (loss, params, opt_state, secs, file) in rows.items():
        print(f"| {name} | {loss:.4f} | {count(params):,} | {jnn.quantize.nbytes(opt_state):,} | "
              f"{(folder / f'{file}.safetensors').stat().st_size:,} | {secs[0]:.1f} / {secs[1]:.1f} |")
    print(f"LoRA merged into the base: {merged_loss:.4f} nats/char (adapted: {lora_loss:.4f})")
    return {"before": before, "full": rows["full fine-tuning"][0], "lora": lora_loss, "merged": merged_loss,
            "trainable": {k: count(v[1]) for k, v in rows.items()},
            "opt_bytes": {k: jnn.quantize.nbytes(v[2]) for k, v in rows.items()}}


if __name__ == "__main__":
    main(parse_config(Config))
