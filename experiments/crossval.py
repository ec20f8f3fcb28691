"""Cross-validated comparison of two regularization settings of the overfitting chapter
(experiments/overfitting.py: an over-parameterized MLP, plain vs dropout), with intervals.

    python experiments/crossval.py [--train-size 1000 --folds 5 --seeds 2 --epochs 15]

The 2 configs x folds x seeds members train as one vmapped program (jnn.train.cross_validate);
then the same runs one after another with ``fit`` (each on its fold alone), timed in the same
process, must give the same held-out scores. Prints each config's held-out accuracy and loss with
95% t-intervals (plain, and Nadeau-Bengio corrected) and the paired test dropout - plain.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import load_mnist_standardized, parse_config, run_dir, save_json

LOSS = jnn.losses.softmax_cross_entropy


@dataclasses.dataclass
class Config:
    """Plain vs dropout MLP on a small MNIST subset, k-fold x seeds, as one population."""
    train_size: int = 1000
    hidden: int = 256
    depth: int = 2
    dropout: float = 0.5
    folds: int = 5
    seeds: int = 2
    epochs: int = 15
    batch_size: int = 100
    learning_rate: float = 1e-3
    clip_norm: float = 1.0
    sequential: bool = True          # also run every member alone with fit (time and agreement)
    seed: int = 0
    out: str = "runs"


def make_model(config: Config):
    def build(hp):
        layers = [jnn.flatten()]
        for _ in range(config.depth):
            layers += [jnn.dense(config.hidden, w_init="he_normal"), jnn.relu(), jnn.dropout(hp["dropout"])]
        return jnn.serial(*layers, jnn.dense(10))
    return build


def main(config: Config) -> dict:
    x, y, _, _ = load_mnist_standardized(config.train_size)
    build = make_model(config)
    make_opt = lambda hp: optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.learning_rate))
    hparams = {"dropout": jnp.array([0.0, config.dropout])}
    kwargs = dict(epochs=config.epochs, batch_size=config.batch_size)
    start = time.perf_counter()
    cv = jnn.train.cross_validate(build, LOSS, make_opt, (x, y), key=jax.random.key(config.seed), folds=config.folds,
                                  seeds=config.seeds, hparams=hparams, **kwargs)
    cv_s = time.perf_counter() - start
    members = 2 * config.folds * config.seeds
    print(f"{members} members (2 configs x {config.folds} folds x {config.seeds} seeds), {len(x)} images, "
          f"{config.epochs} epochs: {cv_s:.1f} s as one program")
    rows = {}
    for c, name in enumerate(["plain", f"dropout {config.dropout}"]):
        for metric in ("val_accuracy", "val_loss"):
            plain, wide = cv.interval(metric, config=c), cv.interval(metric, config=c, corrected=True)
            rows[f"{name} {metric}"] = (plain, wide)
            print(f"  {name:12s} {metric:13s} {plain.mean:.4f}  95% CI [{plain.low:.4f}, {plain.high:.4f}]  "
                  f"corrected [{wide.low:.4f}, {wide.high:.4f}]")
    for metric in ("val_accuracy", "val_loss"):
        d, dw = cv.compare(metric), cv.compare(metric, corrected=True)
        rows[f"dropout - plain {metric}"] = (d, dw)
        print(f"  dropout - plain {metric:13s} {d.mean:+.4f}  95% CI [{d.low:+.4f}, {d.high:+.4f}]  p {d.p_value:.2g}"
              f"  (corrected: [{dw.low:+.4f}, {dw.high:+.4f}], p {dw.p_value:.2g})")
    summary = {"config": dataclasses.asdict(config), "cv_s": cv_s,
               "intervals": {k: [v._asdict() for v in pair] for k, pair in rows.items()}}
    if config.sequential:
        start, diffs = time.perf_counter(), []
        for c in range(2):
            hp = {"dropout": float(hparams["dropout"][c])}
            for f in range(config.folds):
                train, held_out = cv.fold(f, (x, y))
                for s in range(config.seeds):
                    run = jnn.train.fit(build(hp), LOSS, make_opt(hp), train, key=cv.keys[s], val_data=held_out,
                                        verbose=0, **kwargs)
                    diffs.append(abs(run.history["val_loss"][-1] - cv.scores["val_loss"][c, f, s]))
        seq_s = time.perf_counter() - start
        print(f"the same {members} runs one after another with fit: {seq_s:.1f} s (speed-up {seq_s / cv_s:.2f}x); "
              f"largest held-out loss difference {max(diffs):.1e}")
        summary.update(sequential_s=seq_s, max_val_loss_diff=max(diffs))
    out = run_dir(config.out, "crossval")
    if out:
        save_json(out / "results.json", summary)
        print(f"saved to {out}")
    return summary


if __name__ == "__main__":
    main(parse_config(Config))
