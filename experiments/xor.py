"""XOR with the course's 2-4-1 sigmoid network, trained by full-batch gradient descent.

    python experiments/xor.py --epochs 2000 --print-every 200
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

import jnn
from common import parse_config


@dataclasses.dataclass
class Config:
    """XOR with a 2-4-1 sigmoid network."""
    hidden: int = 4
    epochs: int = 2000
    learning_rate: float = 0.1
    print_every: int = 200
    seed: int = 0


def model(hidden: int) -> jnn.Layer:
    return jnn.serial(jnn.dense(hidden, w_init="glorot_normal"), jnn.sigmoid(), jnn.dense(1), jnn.sigmoid())


def main(config: Config) -> dict:
    x, y = jnn.data.xor()
    net = model(config.hidden)

    def report(epoch, ts, logs):
        if epoch % config.print_every == 0 or epoch == 1:
            print(f"epoch {epoch:5d}  mse {logs['loss']:.5f}")

    result = jnn.train.fit(net, jnn.losses.mse, optax.adam(config.learning_rate), (x, y),
                           key=jax.random.key(config.seed), epochs=config.epochs, batch_size=4, metrics={},
                           verbose=0, callbacks=[report])
    ts = result.train_state
    probs = np.asarray(net.apply(ts.params, ts.state, x)[0])
    predictions = (probs > 0.5).astype(np.float32)
    for xi, pi, yi in zip(x, probs[:, 0], y[:, 0]):
        print(f"  {xi.astype(int)} -> {pi:.3f}  (predicted {int(pi > 0.5)}, target {int(yi)})")
    accuracy = float(np.mean(predictions == y))
    print(f"accuracy: {accuracy:.0%}")
    return {"accuracy": accuracy, "final_loss": result.history["loss"][-1], "probabilities": probs}


if __name__ == "__main__":
    main(parse_config(Config))
