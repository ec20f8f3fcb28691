"""Overfitting and its cures: an over-parameterized MLP on 1,000 MNIST images, trained five ways.

    python experiments/overfitting.py [--train-size 1000 --epochs 150]

Variants: plain; dropout; L2 penalty; early stopping (on validation loss, restoring the best
epoch); and all three together. Validation images are the next 2,000 of the training file
(disjoint from the 1,000), the test set is the official 10,000. Prints final train /
validation / test accuracy and loss, and the generalization gap in both (test - train loss;
train - test accuracy) for each, and saves all train/validation curves as one PNG.
"""
from __future__ import annotations

import dataclasses

import jax
import optax

import jnn
from common import parse_config, plot_curves, run_dir, save_json, standardize


@dataclasses.dataclass
class Config:
    """An over-parameterized MLP on a small MNIST subset: plain vs regularized."""
    train_size: int = 1000
    val_size: int = 2000
    hidden: int = 512
    depth: int = 2
    epochs: int = 150
    batch_size: int = 100
    learning_rate: float = 1e-3
    dropout: float = 0.5
    l2: float = 1e-3
    patience: int = 10
    clip_norm: float = 1.0
    seed: int = 0
    out: str = "runs"


def model(config: Config, dropout: float) -> jnn.Layer:
    layers = [jnn.flatten()]
    for _ in range(config.depth):
        layers += [jnn.dense(config.hidden, w_init="he_normal"), jnn.relu()]
        if dropout:
            layers.append(jnn.dropout(dropout))
    return jnn.serial(*layers, jnn.dense(10))


def variants(config: Config) -> dict[str, dict]:
    stop = jnn.train.EarlyStopping("val_loss", patience=config.patience, restore_best=True)
    l2 = jnn.train.penalty(l2=config.l2)
    return {
        "plain": {},
        "dropout": {"dropout": config.dropout},
        "l2": {"regularizer": l2},
        "early stopping": {"early_stopping": stop},
        "all three": {"dropout": config.dropout, "regularizer": l2, "early_stopping": stop},
    }


def main(config: Config) -> dict:
    x, y = jnn.data.load_mnist("train")
    x_test, y_test = jnn.data.load_mnist("test")
    n, v = config.train_size, config.val_size
    x_train, x_val, x_test = standardize(x[:n], x[n:n + v], x_test)
    train, val, test = (x_train, y[:n]), (x_val, y[n:n + v]), (x_test, y_test)
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.learning_rate))
    rows, histories = {}, {}
    for name, options in variants(config).items():
        net = model(config, options.pop("dropout", 0.0))
        result = jnn.train.fit(net, jnn.losses.softmax_cross_entropy, optimizer, train, key=jax.random.key(config.seed),
                               epochs=config.epochs, batch_size=config.batch_size, val_data=val,
                               verbose=0, **options)
        ts = result.train_state
        evaluate = jax.jit(jnn.train.make_eval_fn(net, jnn.losses.softmax_cross_entropy,
                                                  metrics={"accuracy": jnn.metrics.accuracy}))
        m = {split: {k: float(v) for k, v in evaluate(ts.params, ts.state, data).items()}
             for split, data in (("train", train), ("val", val), ("test", test))}
        rows[name] = {"train_acc": m["train"]["accuracy"], "val_acc": m["val"]["accuracy"],
                      "test_acc": m["test"]["accuracy"], "acc_gap": m["train"]["accuracy"] - m["test"]["accuracy"],
                      "train_loss": m["train"]["loss"], "test_loss": m["test"]["loss"],
                      "loss_gap": m["test"]["loss"] - m["train"]["loss"],
                      "epochs": len(result.history["epoch"]), "best_epoch": result.best_epoch}
        histories[name] = result.history
        print(f"{name}: done ({rows[name]['epochs']} epochs)", flush=True)
    print("\nvariant          train acc  val acc  test acc  acc gap   train loss  test loss  loss gap  epochs")
    for name, r in rows.items():
        print(f"{name:15s}  {r['train_acc']:8.2%}  {r['val_acc']:7.2%}  {r['test_acc']:8.2%}  {r['acc_gap']:+7.2%}"
              f"  {r['train_loss']:10.4f}  {r['test_loss']:9.4f}  {r['loss_gap']:+8.4f}  {r['epochs']:6d}")
    out = run_dir(config.out, "overfitting")
    if out:
        save_json(out / "results.json", {"config": dataclasses.asdict(config), "results": rows})
        if plot_curves(histories, out / "curves.png"):
            print(f"curves: {out / 'curves.png'}")
    return rows


if __name__ == "__main__":
    main(parse_config(Config))
