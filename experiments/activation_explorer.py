"""Activation-function explorer: the same network trained with each activation of the course.

    python experiments/activation_explorer.py [--epochs 5 --depth 8]

For each of step, sigmoid, tanh, relu, leaky_relu, elu, gelu and silu it reports
  * the gradient norm of every layer's weights at initialization in a deep, narrow MLP
    (``--depth`` hidden layers of ``--deep-width``): vanishing gradients show up as norms that
    shrink towards the input with sigmoid, and as exact zeros with step;
  * training the MNIST MLP (784-128-64-10 with that activation, Adam): final test accuracy and
    speed of convergence (the first epoch whose validation accuracy reaches ``--target``);
  * the fraction of dead hidden units after training (units whose output is 0 on every one of
    2,000 validation images; meaningful for relu);
  * the deep, narrow MLP trained the same way: its test accuracy shows what vanishing
    gradients cost in depth.
Saves ``activations.png`` (each function and its derivative) and ``curves.png`` (validation
accuracy per epoch for every activation).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

import jnn
from common import have_matplotlib, load_mnist_standardized, parse_config, run_dir, save_json

ACTIVATIONS = {
    "step": (jnn.step, jnn.heaviside),
    "sigmoid": (jnn.sigmoid, jax.nn.sigmoid),
    "tanh": (jnn.tanh, jnp.tanh),
    "relu": (jnn.relu, jax.nn.relu),
    "leaky_relu": (jnn.leaky_relu, jax.nn.leaky_relu),
    "elu": (jnn.elu, jax.nn.elu),
    "gelu": (jnn.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    "silu": (jnn.silu, jax.nn.silu),
}


@dataclasses.dataclass
class Config:
    """Train the same MLP with every activation; gradients at init in a deep network."""
    activations: tuple[str, ...] = tuple(ACTIVATIONS)
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    target: float = 0.95
    depth: int = 8
    deep_width: int = 64
    train_limit: int = 0
    seed: int = 0
    out: str = "runs"


def mlp(widths, make_activation, w_init="glorot_normal") -> jnn.Layer:
    layers = [jnn.flatten()]
    for width in widths:
        layers += [jnn.dense(width, w_init=w_init), make_activation()]
    return jnn.serial(*layers, jnn.dense(10, w_init=w_init))


def grad_norms_at_init(make_activation, x, y, depth, width, key) -> list[float]:
    """Norm of d loss / d W for each dense layer, input side first."""
    model = mlp([width] * depth, make_activation)
    params, state = model.init(key, x)
    grads = jax.grad(lambda p: jnn.losses.softmax_cross_entropy(model.apply(p, state, x)[0], y))(params)
    return [float(jnp.linalg.norm(grads[f"dense_{i}"]["w"])) for i in range(depth + 1)]


def dead_fraction(model_params, fn, x, widths) -> float:
    """Fraction of hidden units whose activation is 0 on every example of ``x``."""
    h, dead, total = x.reshape(len(x), -1), 0, 0
    for i in range(len(widths)):
        layer = model_params[f"dense_{i}"]
        h = fn(h @ layer["w"] + layer["b"])
        dead += int(jnp.sum(jnp.all(h == 0, axis=0)))
        total += h.shape[1]
    return dead / total


def plot_functions(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    z = jnp.linspace(-4, 4, 401)
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (_, fn) in ACTIVATIONS.items():
        ax_f.plot(z, fn(z), label=name)
        ax_d.plot(z, jax.vmap(jax.grad(fn))(z), label=name)
    ax_f.set_title("activation f(z)")
    ax_d.set_title("derivative f'(z)")
    for ax in (ax_f, ax_d):
        ax.grid(alpha=0.3)
        ax.set_xlabel("z")
    ax_f.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_val_curves(histories, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        ax.plot(history["epoch"], history["val_accuracy"], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(config: Config) -> dict:
    unknown = set(config.activations) - set(ACTIVATIONS)
    if unknown:
        raise ValueError(f"activation_explorer: unknown activations {sorted(unknown)}; choose from {list(ACTIVATIONS)}")
    x, y, x_test, y_test = load_mnist_standardized(config.train_limit)
    n_val = len(x) // 10
    train, val = (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
    key = jax.random.key(config.seed)
    rows, histories = {}, {}
    for name in config.activations:
        make, fn = ACTIVATIONS[name]
        norms = grad_norms_at_init(make, jnp.asarray(x[:256]), jnp.asarray(y[:256]), config.depth, config.deep_width, key)
        model = mlp(config.hidden, make)
        result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(config.learning_rate), train,
                               key=key, epochs=config.epochs, batch_size=config.batch_size, val_data=val,
                               verbose=0)
        ts = result.train_state
        evaluate = jax.jit(jnn.train.make_eval_fn(model, jnn.losses.softmax_cross_entropy,
                                                  metrics={"accuracy": jnn.metrics.accuracy}))
        test_acc = float(evaluate(ts.params, ts.state, (x_test, y_test))["accuracy"])
        reached = [e for e, a in zip(result.history["epoch"], result.history["val_accuracy"]) if a >= config.target]
        deep = mlp([config.deep_width] * config.depth, make)
        deep_ts = jnn.train.fit(deep, jnn.losses.softmax_cross_entropy, optax.adam(config.learning_rate), train,
                                key=key, epochs=config.epochs, batch_size=config.batch_size,
                                verbose=0).train_state
        deep_eval = jax.jit(jnn.train.make_eval_fn(deep, jnn.losses.softmax_cross_entropy,
                                                   metrics={"accuracy": jnn.metrics.accuracy}))
        deep_acc = float(deep_eval(deep_ts.params, deep_ts.state, (x_test, y_test))["accuracy"])
        rows[name] = {"test_accuracy": test_acc, "deep_test_accuracy": deep_acc, "epochs_to_target": reached[0] if reached else None,
                      "dead_fraction": dead_fraction(ts.params, fn, jnp.asarray(val[0][:2000]), config.hidden),
                      "grad_norms_at_init": norms}
        histories[name] = result.history
        print(f"{name}: test accuracy {test_acc:.2%}", flush=True)

    print(f"\nMNIST MLP {config.hidden}, {config.epochs} epochs:")
    print(f"{'activation':11s} {'test acc':>9s} {'epochs to ' + format(config.target, '.0%'):>14s} {'dead units':>11s}"
          f" {'deep net test acc':>18s}")
    for name, r in rows.items():
        reached = str(r["epochs_to_target"]) if r["epochs_to_target"] else "never"
        print(f"{name:11s} {r['test_accuracy']:9.2%} {reached:>14s} {r['dead_fraction']:11.1%}"
              f" {r['deep_test_accuracy']:18.2%}")
    print(f"\ngradient norm of each layer's weights at init, {config.depth} hidden layers of {config.deep_width} "
          "(input layer first):")
    for name, r in rows.items():
        print(f"{name:11s} " + " ".join(f"{g:8.1e}" for g in r["grad_norms_at_init"]))
    out = run_dir(config.out, "activation_explorer")
    if out:
        save_json(out / "results.json", {"config": dataclasses.asdict(config), "results": rows})
        if have_matplotlib():
            plot_functions(out / "activations.png")
            plot_val_curves(histories, out / "curves.png")
            print(f"plots: {out / 'activations.png'}, {out / 'curves.png'}")
    return rows


if __name__ == "__main__":
    main(parse_config(Config))
