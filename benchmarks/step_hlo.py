"""Instruction count of the compiled MNIST MLP train step (jnn.train.make_train_step + Adam,
``metrics={}``: the loss alone, as the step computed by default before it logged accuracy for
classification losses), to compare one commit's compiled program with another's:

    python benchmarks/step_hlo.py
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

import jnn


def main():
    model = jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(64), jnn.relu(), jnn.dense(10))
    optimizer = optax.adam(1e-3)
    example = jax.ShapeDtypeStruct((128, 28, 28, 1), jnp.float32)
    ts = jnn.train.init_train_state(model, optimizer, jax.random.key(0), example)
    step = jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, optimizer, metrics={}))
    batch = (jnp.zeros((128, 28, 28, 1)), jnp.zeros((128,), jnp.int32))
    text = step.lower(ts, batch).compile().as_text()
    count = sum(1 for line in text.splitlines() if re.match(r"\s+(ROOT )?%?[\w.\-]+ = ", line))
    print(f"compiled MNIST train step: {count} HLO instructions, {len(text)} characters of HLO text")


if __name__ == "__main__":
    main()
