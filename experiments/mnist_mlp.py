"""The digit recognizer: a 784-128-64-10 ReLU MLP on MNIST, softmax cross-entropy, Adam.

    python experiments/mnist_mlp.py                       # MNIST if available, else 8x8 digits
    python experiments/mnist_mlp.py --dataset mnist       # insist on MNIST
    python experiments/mnist_mlp.py --epochs 20 --hidden 256,128 --schedule cosine   # >= 97%

Data: MNIST is read from $JNN_DATA_DIR/mnist (default ~/.cache/jnn/mnist) and downloaded with
checksum verification if missing. With no --dataset flag and no MNIST to be had, it falls back
to scikit-learn's bundled 8x8 digits and says so. Inputs are standardized with the training
set's pixel mean and standard deviation. The test set is evaluated once, after training.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import optax

import jnn
from common import parse_config, run_dir, save_run, standardize, test_metrics


@dataclasses.dataclass
class Config:
    """MNIST digit recognizer (784-128-64-10 ReLU MLP, Adam)."""
    dataset: str = "auto"            # "auto" (MNIST, else 8x8 digits), "mnist" or "digits"
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    schedule: str = "constant"       # "constant" or "cosine" (decay to 0 over all steps)
    val_split: float = 0.1
    train_limit: int = 0             # use only the first N training images (0: all)
    seed: int = 0
    out: str = "runs"                # run directory root ("" to save nothing)
    progress: bool = True


def load(config: Config):
    """``(x_train, y_train), (x_test, y_test), name`` for the configured dataset."""
    if config.dataset not in ("auto", "mnist", "digits"):
        raise ValueError(f"mnist_mlp: --dataset must be auto, mnist or digits, got {config.dataset!r}")
    if config.dataset == "mnist" or (config.dataset == "auto" and _mnist_obtainable()):
        train, test = jnn.data.load_mnist("train"), jnn.data.load_mnist("test")
        name = "mnist"
    else:
        if config.dataset == "auto":
            print(f"notice: MNIST is not in {jnn.data.data_dir() / 'mnist'} and could not be downloaded; "
                  "falling back to scikit-learn's 8x8 digits (1,797 images). Set JNN_DATA_DIR or use "
                  "--dataset mnist to insist on MNIST.")
        x, y = jnn.data.load_digits()
        order = np.random.default_rng(0).permutation(len(x))
        test_idx, train_idx = order[:360], order[360:]
        train, test, name = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), "digits"
    if config.train_limit:
        train = (train[0][: config.train_limit], train[1][: config.train_limit])
    return train, test, name


def _mnist_obtainable() -> bool:
    if jnn.data.mnist_available():
        return True
    try:
        jnn.data.load_mnist("test")
        jnn.data.load_mnist("train")
        return True
    except jnn.data.DatasetUnavailableError:
        return False


def model(hidden: tuple[int, ...], classes: int = 10) -> jnn.Layer:
    layers = [jnn.flatten()]
    for width in hidden:
        layers += [jnn.dense(width), jnn.relu()]
    return jnn.serial(*layers, jnn.dense(classes))


def optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    if config.schedule == "constant":
        lr = config.learning_rate
    elif config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch)
    else:
        raise ValueError(f"mnist_mlp: --schedule must be constant or cosine, got {config.schedule!r}")
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def main(config: Config) -> dict:
    (x, y), (x_test, y_test), name = load(config)
    x, x_test = standardize(x, x_test)
    net = model(config.hidden)
    print(f"dataset: {name} ({len(x)} training images incl. validation, {len(x_test)} test)")
    print(jnn.summary(net, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)))
    steps_per_epoch = int(len(x) * (1 - config.val_split)) // config.batch_size
    out = run_dir(config.out, f"mnist_mlp-{name}")
    start = time.perf_counter()
    result = jnn.train.fit(
        net, jnn.losses.softmax_cross_entropy, optimizer(config, steps_per_epoch), (x, y),
        key=jax.random.key(config.seed), epochs=config.epochs, batch_size=config.batch_size,
        val_split=config.val_split, verbose=1 if config.progress else 2,
        callbacks=[jnn.train.callbacks.HistoryFile(out / "history.csv")] if out else [])
    train_seconds = time.perf_counter() - start
    test = test_metrics(net, result.train_state, x_test, y_test)
    print(f"test accuracy: {test['accuracy']:.2%}  test loss: {test['loss']:.4f}  "
          f"({config.epochs} epochs in {train_seconds:.1f} s)")
    summary = {"dataset": name, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "train_seconds": train_seconds, "config": dataclasses.asdict(config)}
    save_run(out, summary, {name: result.history})
    return {**summary, "history": result.history}


if __name__ == "__main__":
    main(parse_config(Config))
