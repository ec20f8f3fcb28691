"""Compiled memory of one train step over a 2048-example batch, with and without gradient
accumulation (jnn.train.make_train_step(accumulate=k): k micro-batches in a lax.scan, one update):

    python benchmarks/accumulate_memory.py
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jnn


def main(batch: int = 2048):
    model = jnn.serial(jnn.dense(1024), jnn.relu(), jnn.dense(1024), jnn.relu(), jnn.dense(10))
    opt = optax.adam(1e-3)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jax.ShapeDtypeStruct((1, 256), jnp.float32))
    data = (jax.ShapeDtypeStruct((batch, 256), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32))
    print(f"{jax.devices()[0].device_kind}: MLP 256-1024-1024-10, Adam, batch {batch}")
    for k in (1, 2, 4, 8, 16):
        step = jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, accumulate=k))
        mem = step.lower(ts, data).compile().memory_analysis()
        print(f"accumulate={k:<3d} micro-batch {batch // k:5d}: temp {mem.temp_size_in_bytes / 2**20:7.2f} MiB, "
              f"arguments {mem.argument_size_in_bytes / 2**20:6.2f} MiB")


if __name__ == "__main__":
    main()
