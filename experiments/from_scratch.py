"""The course's network from scratch: sigmoid layers and hand-written backpropagation in NumPy,
trained on XOR, then checked against ``jax.grad`` of the same network written in jnn.

    python experiments/from_scratch.py [--sizes 2,4,1 --epochs 5000 --learning-rate 2.0]

Loss: mean squared error over all outputs, ``L = mean((a_L - y) ** 2)`` (``jnn.losses.mse``).
Backpropagation, with ``a_0 = x``, ``z_l = a_{l-1} W_l + b_l``, ``a_l = sigmoid(z_l)``:
``delta_L = dL/da_L * a_L (1 - a_L)`` with ``dL/da_L = 2 (a_L - y) / y.size``;
``dW_l = a_{l-1}^T delta_l``, ``db_l = sum over examples of delta_l``;
``delta_{l-1} = (delta_l W_l^T) * a_{l-1} (1 - a_{l-1})``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jnn
from common import parse_config


@dataclasses.dataclass
class Config:
    """NumPy backpropagation on XOR, checked against jax.grad."""
    sizes: tuple[int, ...] = (2, 4, 1)
    epochs: int = 5000
    learning_rate: float = 2.0
    seed: int = 0


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def init(sizes, seed=0) -> list[dict[str, np.ndarray]]:
    """Glorot-normal weights, zero biases, float64: ``[{"w": [in, out], "b": [out]}, ...]``."""
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(0.0, np.sqrt(2.0 / (n_in + n_out)), (n_in, n_out)), "b": np.zeros(n_out)}
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def forward(params, x) -> list[np.ndarray]:
    """Activations of every layer, ``[x, a_1, ..., a_L]``."""
    activations = [x]
    for layer in params:
        activations.append(sigmoid(activations[-1] @ layer["w"] + layer["b"]))
    return activations


def loss_and_grads(params, x, y):
    """MSE and its gradient for every parameter, by hand-written backpropagation."""
    activations = forward(params, x)
    out = activations[-1]
    loss = np.mean((out - y) ** 2)
    delta = 2.0 * (out - y) / y.size * out * (1 - out)
    grads = [None] * len(params)
    for l in reversed(range(len(params))):
        a_prev = activations[l]
        grads[l] = {"w": a_prev.T @ delta, "b": delta.sum(axis=0)}
        if l:
            delta = (delta @ params[l]["w"].T) * a_prev * (1 - a_prev)
    return loss, grads


def jnn_model(sizes) -> jnn.Layer:
    """The same network in jnn: ``dense -> sigmoid`` per layer."""
    layers = []
    for width in sizes[1:]:
        layers += [jnn.dense(width), jnn.sigmoid()]
    return jnn.serial(*layers)


def to_jnn(params) -> dict:
    """NumPy layer list -> jnn params tree (``dense_i/w``, ``dense_i/b``)."""
    return {f"dense_{i}": {"w": jnp.asarray(p["w"]), "b": jnp.asarray(p["b"])} for i, p in enumerate(params)}


def jax_grads(params, x, y):
    """``jax.grad`` of the jnn network's MSE at the same params (float64)."""
    sizes = [params[0]["w"].shape[0]] + [p["w"].shape[1] for p in params]
    model = jnn_model(sizes)
    loss = lambda p: jnn.losses.mse(model.apply(p, {}, jnp.asarray(x))[0], jnp.asarray(y))
    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(loss)(to_jnn(params))
        return float(value), jax.tree_util.tree_map(np.asarray, grads)


def main(config: Config) -> dict:
    x, y = (a.astype(np.float64) for a in jnn.data.xor())
    params = init(config.sizes, config.seed)
    for epoch in range(1, config.epochs + 1):
        loss, grads = loss_and_grads(params, x, y)
        for layer, grad in zip(params, grads):
            layer["w"] -= config.learning_rate * grad["w"]
            layer["b"] -= config.learning_rate * grad["b"]
        if epoch % (config.epochs // 5) == 0 or epoch == 1:
            print(f"epoch {epoch:5d}  mse {loss:.6f}")
    out = forward(params, x)[-1]
    print("predictions:", out[:, 0].round(3).tolist(), "targets:", y[:, 0].tolist())
    loss, grads = loss_and_grads(params, x, y)
    jax_loss, reference = jax_grads(params, x, y)
    diff = max(float(np.max(np.abs(g[k] - reference[f"dense_{i}"][k])))
               for i, g in enumerate(grads) for k in ("w", "b"))
    print(f"hand-written backprop vs jax.grad (float64): loss {loss:.3e} vs {jax_loss:.3e}, "
          f"max |gradient difference| = {diff:.2e}")
    return {"accuracy": float(np.mean((out > 0.5) == (y > 0.5))), "max_grad_diff": diff}


if __name__ == "__main__":
    main(parse_config(Config))
