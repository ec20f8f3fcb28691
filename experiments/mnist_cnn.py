"""A small convolutional network on MNIST (the shipped data: the first 20k training images and
the official 10k test set), trained with on-device data augmentation, optionally also without.

    python experiments/mnist_cnn.py                    # augmented, 7 epochs
    python experiments/mnist_cnn.py --variants plain,augmented --epochs 10   # side by side

Network: two conv blocks (3x3 conv with 32, then 64 channels, ReLU, 2x2 max pooling), dropout,
a dense head (``--convs-per-block 2`` doubles the convs for a bigger, slower network).
Augmentation (random shifts of up to 2 pixels and small rotations/scalings) is the model's first
layer, ``jnn.data.augment.augment_layer``: it runs inside the compiled step on device and is the
identity at evaluation. Recipe: AdamW (weight decay on the weights only), linear warm-up then
cosine decay, batch 64, label smoothing 0.1. The last 10% of the training images validate (the
same 2,000 for every seed); the test set is evaluated once per variant after training. Saves
learning curves and a grid of misclassified test digits as PNGs.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from jnn.data import augment
from common import have_matplotlib, parse_config, plot_curves, run_dir, save_json, standardize


@dataclasses.dataclass
class Config:
    """Small CNN on MNIST, with and without augmentation."""
    epochs: int = 7
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_epochs: float = 0.3       # linear warm-up, then cosine decay to 0
    weight_decay: float = 0.05       # AdamW, on the weights only
    label_smoothing: float = 0.1
    val_fraction: float = 0.1        # the last 10% of the training images validate (2,000 of 20,000)
    features: tuple[int, ...] = (32, 64)
    convs_per_block: int = 1
    dense: int = 128
    dropout: float = 0.2
    max_shift: int = 2
    max_rotation: float = 10.0
    max_scale: float = 0.1
    variants: tuple[str, ...] = ("augmented",)   # plain and/or augmented
    train_limit: int = 0
    seed: int = 0
    out: str = "runs"
    progress: bool = True


def model(config: Config, augmented: bool) -> jnn.Layer:
    layers = []
    if augmented:
        layers.append(augment.augment_layer(augment.random_translate(config.max_shift),
                                            augment.random_affine(config.max_rotation, max_scale=config.max_scale)))
    for features in config.features:
        for _ in range(config.convs_per_block):
            layers += [jnn.conv(features, (3, 3), w_init="he_normal"), jnn.relu()]
        layers.append(jnn.max_pool((2, 2)))
    return jnn.serial(*layers, jnn.flatten(), jnn.dropout(config.dropout), jnn.dense(config.dense), jnn.relu(),
                      jnn.dropout(config.dropout), jnn.dense(10))


def save_misclassified(images, labels, predictions, path, limit=36):
    """Saves the first ``limit`` misclassified digits as one sheet, 9 a row, each captioned
    label→prediction (one image and one set of axes: a subplot a digit took 1.3 s to draw)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    wrong = np.flatnonzero(predictions != labels)[:limit]
    cols, caption = 9, 9                       # pixels of room above each digit for its caption
    rows = max(1, -(-len(wrong) // cols))
    h, w = images.shape[1:3]
    cell_h, cell_w = h + caption, w + 2
    sheet = np.full((rows * cell_h, cols * cell_w), np.nan)
    fig, ax = plt.subplots(figsize=(cols * 1.1, rows * 1.3))
    for n, i in enumerate(wrong):
        top, left = divmod(n, cols)
        top, left = top * cell_h, left * cell_w
        sheet[top + caption:top + caption + h, left + 1:left + 1 + w] = images[i, :, :, 0]
        ax.text(left + cell_w / 2, top + caption / 2, f"{labels[i]}→{predictions[i]}", ha="center",
                va="center", fontsize=8, color="crimson")
    ax.imshow(np.ma.masked_invalid(sheet), cmap="gray")   # the gaps (NaN) stay blank
    ax.axis("off")
    ax.set_title("misclassified test digits (label→prediction)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(config: Config) -> dict:
    if not set(config.variants) <= {"plain", "augmented"}:
        raise ValueError(f"mnist_cnn: --variants takes plain and/or augmented, got {config.variants}")
    x, y = jnn.data.load_mnist("train")
    raw_test, y_test = jnn.data.load_mnist("test")
    if config.train_limit:
        x, y = x[: config.train_limit], y[: config.train_limit]
    x, x_test = standardize(x, raw_test)
    out = run_dir(config.out, "mnist_cnn")
    results, histories = {}, {}
    for name in config.variants:
        net = model(config, name == "augmented")
        split = len(x) - int(config.val_fraction * len(x))
        per_epoch = split // config.batch_size
        steps, warmup = per_epoch * config.epochs, int(config.warmup_epochs * per_epoch)
        lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, steps) if warmup \
            else optax.cosine_decay_schedule(config.learning_rate, steps)
        opt = optax.adamw(lr, weight_decay=config.weight_decay, mask=jnn.tree.mask)
        loss = functools.partial(jnn.losses.softmax_cross_entropy, label_smoothing=config.label_smoothing)
        print(f"--- {name} ---", flush=True)
        start = time.perf_counter()
        result = jnn.train.fit(net, loss, opt, (x[:split], y[:split]), key=jax.random.key(config.seed),
                               epochs=config.epochs, batch_size=config.batch_size,
                               val_data=(x[split:], y[split:]) if split < len(x) else None,
                               verbose=1 if config.progress else 2)
        seconds = time.perf_counter() - start
        ts = result.train_state
        logits = jnn.train.predict(net, ts.params, ts.state, x_test)
        predictions = np.asarray(jnp.argmax(logits, -1))
        accuracy = float(np.mean(predictions == y_test))
        results[name] = {"test_accuracy": accuracy, "train_seconds": seconds,
                         "val_accuracy": result.history.get("val_accuracy", [None])[-1],
                         "seconds_per_epoch": seconds / config.epochs}
        histories[name] = result.history
        print(f"{name}: test accuracy {accuracy:.2%} ({config.epochs} epochs, {seconds:.0f} s)", flush=True)
        if out and have_matplotlib():
            save_misclassified(raw_test, y_test, predictions, out / f"misclassified_{name}.png")
    if len(results) == 2:
        delta = results["augmented"]["test_accuracy"] - results["plain"]["test_accuracy"]
        print(f"augmentation changes test accuracy by {delta:+.2%}")
    if out:
        save_json(out / "results.json", {"config": dataclasses.asdict(config), "results": results})
        plot_curves(histories, out / "curves.png")
        print(f"saved to {out}")
    return results


if __name__ == "__main__":
    main(parse_config(Config))
