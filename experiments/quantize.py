"""Weight-only int8 (``jnn.quantize``): accuracy and memory before and after, for the MNIST MLP and
CNN (trained on the first 20,000 training images, tested on the official 10,000) and the char
transformer (Tiny Shakespeare, validation nats/char), plus the size of each exported ``.jnnx``.

    python experiments/quantize.py                       # small budgets: about 2-3 minutes on 2 CPU cores
    python experiments/quantize.py --epochs 10 --lm-steps 3000

Every weight named ``w`` (dense, conv, attention, MLP) is stored as int8 with one float32 scale per
output channel; biases, norms and the (tied) character embedding stay float32, and
``--embedding`` quantizes the embedding too.
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
import char_lm
import char_transformer
import mnist_cnn
import mnist_mlp
from common import parse_config


@dataclasses.dataclass
class Config:
    """int8 weights: accuracy and memory on the MNIST MLP/CNN and the char transformer."""
    train_limit: int = 20000         # the first N MNIST training images
    test_limit: int = 0              # the first N test images (0: all 10,000)
    epochs: int = 3                  # MNIST epochs (MLP and CNN)
    cnn_features: tuple[int, ...] = (32, 64)   # the CNN's conv widths (mnist_cnn.py)
    lm_steps: int = 300              # char transformer training steps
    lm_layers: int = 4               # char transformer layers and width (4 heads, MLP 4x width)
    lm_features: int = 128
    embedding: bool = False          # also quantize the embedding (tied output head)
    seed: int = 0


def _export_bytes(model, params, state, example) -> int:
    path = pathlib.Path(tempfile.mkdtemp()) / "model.jnnx"
    jnn.export.export_model(path, model, params, state, example, platforms=("cpu",))
    return path.stat().st_size


def _report(name, model, params, state, example, evaluate, include) -> dict:
    """Float vs int8: ``evaluate(model, params, state) -> {metric: value}``, bytes, export size."""
    qmodel, qparams = jnn.quantize.wrap(model), jnn.quantize.quantize(params, include=include)
    row = {"model": name}
    for tag, (m, p) in {"float32": (model, params), "int8": (qmodel, qparams)}.items():
        row |= {f"{tag} {k}": v for k, v in evaluate(m, p, state).items()}
        row[f"{tag} param bytes"] = jnn.quantize.nbytes(p)
        row[f"{tag} .jnnx bytes"] = _export_bytes(m, p, state, example)
    print("  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v:,}" if isinstance(v, int) else str(v)
                    for k, v in row.items()), flush=True)
    return row


def mnist(config: Config) -> list[dict]:
    (x, y), (xt, yt) = jnn.data.load_mnist("train"), jnn.data.load_mnist("test")
    x, y = x[: config.train_limit], y[: config.train_limit]
    xt, yt = (xt[: config.test_limit], yt[: config.test_limit]) if config.test_limit else (xt, yt)

    def evaluate(model, params, state):
        logits = jnn.train.predict(model, params, state, xt)
        return {"test accuracy": float(jnp.mean(jnp.argmax(logits, -1) == yt)),
                "test loss": float(jnn.losses.softmax_cross_entropy(logits, yt))}

    rows = []
    for name, model in (("MNIST MLP 784-128-64-10", mnist_mlp.model((128, 64))),
                        (f"MNIST CNN {'-'.join(map(str, config.cnn_features))} conv",
                         mnist_cnn.model(mnist_cnn.Config(features=config.cnn_features), augmented=False))):
        tick = time.perf_counter()
        result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(1e-3), (x, y),
                               key=jax.random.key(config.seed), epochs=config.epochs, batch_size=128, verbose=0)
        print(f"{name}: trained {config.epochs} epochs on {len(x):,} images in {time.perf_counter() - tick:.0f} s; "
              f"testing on {len(xt):,}")
        ts = result.train_state
        rows.append(_report(name, model, ts.params, ts.state, xt[:1], evaluate, "w"))
    return rows


def char_lm_row(config: Config) -> dict:
    lm_config = char_transformer.Config(layers=config.lm_layers, features=config.lm_features,
                                        mlp_dim=4 * config.lm_features, epochs=1, steps_per_epoch=config.lm_steps,
                                        warmup_steps=min(30, config.lm_steps // 2), out="")
    text = jnn.data.load_tiny_shakespeare()
    vocab = jnn.data.CharVocab(text)
    train_text, val_text = char_lm.split_text(text, lm_config.val_fraction)
    net = char_transformer.model(vocab.size, lm_config)
    opt = char_lm.optimizer(lm_config)
    example = jax.ShapeDtypeStruct((lm_config.batch_size, lm_config.seq_len), jnp.int32)
    ts = jnn.train.init_train_state(net, opt, jax.random.key(config.seed), example)
    tick = time.perf_counter()
    ts, _ = char_lm.make_epoch(net, opt, jnp.asarray(vocab.encode(train_text)), lm_config)(ts)
    print(f"char transformer: {config.lm_steps} steps in {time.perf_counter() - tick:.0f} s")
    val = jnn.data.lm_windows(vocab.encode(val_text), lm_config.seq_len)

    def evaluate(model, params, state):
        loss = jnn.train.make_eval_fn(model, jnn.losses.softmax_cross_entropy, batch_size=256)(params, state, val)
        return {"val nats/char": float(loss["loss"])}

    include = ("w", "embedding") if config.embedding else "w"
    return _report(f"char transformer {config.lm_layers}x{config.lm_features}", net, ts.params, ts.state, jnp.zeros((1, lm_config.seq_len), jnp.int32),
                   evaluate, include)


def main(config: Config) -> list[dict]:
    start = time.perf_counter()
    rows = mnist(config) + [char_lm_row(config)]
    print("\n| model | float32 | int8 | param bytes float32 -> int8 | .jnnx bytes float32 -> int8 |")
    print("|---|---|---|---|---|")
    for row in rows:
        metric = next(k.split(" ", 1)[1] for k in row if k.startswith("float32 ") and "bytes" not in k)
        pb, xb = (f"{row['float32 ' + k]:,} -> {row['int8 ' + k]:,} ({row['float32 ' + k] / row['int8 ' + k]:.1f}x)"
                  for k in ("param bytes", ".jnnx bytes"))
        print(f"| {row['model']} | {metric} {row['float32 ' + metric]:.4f} | {row['int8 ' + metric]:.4f} | {pb} | {xb} |")
    print(f"total {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main(parse_config(Config))
