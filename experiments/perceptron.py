"""A single neuron (dense(1) + step) with the perceptron learning rule: it learns AND and OR,
and cannot learn XOR, which is not linearly separable.

    python experiments/perceptron.py
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
    """The perceptron on AND, OR and XOR."""
    epochs: int = 50
    learning_rate: float = 0.1
    seed: int = 0


def neuron() -> jnn.Layer:
    return jnn.serial(jnn.dense(1, w_init="zeros"), jnn.step())


def train_perceptron(x, y, config: Config):
    """Rosenblatt's rule, ``w += lr * (target - output) * x``, one epoch per scan over the points."""
    model = neuron()
    params, state = model.init(jax.random.key(config.seed), x)

    def update(params, example):
        xi, yi = example
        out, _ = model.apply(params, state, xi[None])
        error = (yi - out)[0]
        dense = params["dense_0"]
        return {"dense_0": {"w": dense["w"] + config.learning_rate * xi[:, None] * error,
                            "b": dense["b"] + config.learning_rate * error}}, None

    @jax.jit
    def epoch(params, _):
        params, _ = jax.lax.scan(update, params, (x, y))
        return params, jnp.mean(model.apply(params, state, x)[0] == y)

    params, accuracies = jax.lax.scan(epoch, params, None, length=config.epochs)
    outputs = np.asarray(model.apply(params, state, x)[0])
    return params, outputs, float(accuracies[-1])


def main(config: Config) -> dict:
    results = {}
    for name, (x, y) in {"AND": jnn.data.and_gate(), "OR": jnn.data.or_gate(), "XOR": jnn.data.xor()}.items():
        params, outputs, accuracy = train_perceptron(jnp.asarray(x), jnp.asarray(y), config)
        results[name] = accuracy
        w, b = np.asarray(params["dense_0"]["w"])[:, 0], float(params["dense_0"]["b"][0])
        print(f"{name}: outputs {outputs[:, 0].astype(int).tolist()} targets {y[:, 0].astype(int).tolist()}  "
              f"accuracy {accuracy:.0%}  (w = {[round(float(v), 2) for v in w]}, b = {b:.2f})")
    if results["XOR"] < 1.0:
        print("XOR is not learned: a single neuron draws one straight line, w.x + b = 0, through the plane, "
              "and no line puts (0,1) and (1,0) on one side with (0,0) and (1,1) on the other. "
              "XOR is not linearly separable; it needs a hidden layer (see experiments/xor.py).")
    return results


if __name__ == "__main__":
    main(parse_config(Config))
