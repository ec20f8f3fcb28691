"""max_pool 2x2 forward + backward on [128, 28, 28, 32]: jnn's tiled path against reduce_window,
and against the plain reshape max whose gradient XLA splits among ties; interleaved medians.

    python benchmarks/pooling.py [--shape 128,28,28,32 --repeats 21]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import jnn
from common import block, machine, time_interleaved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="128,28,28,32")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    b, h, w, c = shape
    x = jax.random.normal(jax.random.key(0), shape)
    g = jax.random.normal(jax.random.key(1), (b, h // 2, w // 2, c))
    contenders = {
        "jnn max_pool (tiled, first max wins)": lambda v: jnn.max_pool((2, 2)).apply({}, {}, v)[0],
        "reduce_window": lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                                          "VALID"),
        "reshape + max (ties split)": lambda v: v.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4)),
    }
    fns = {}
    for name, pool in contenders.items():
        f = jax.jit(lambda v, ct, pool=pool: jax.vjp(pool, v)[1](ct)[0])
        block(f(x, g))
        fns[name] = lambda f=f: block(f(x, g))
    print(machine())
    times = time_interleaved(fns, repeats=args.repeats)
    base = times["reduce_window"]
    for name, t in times.items():
        print(f"  {name:38s} {t * 1e3:8.2f} ms  ({t / base:.2f} x reduce_window)")


if __name__ == "__main__":
    main()
