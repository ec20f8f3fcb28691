"""One 3x3 convolution's forward + backward, twice: two jitted calls against one jitted lax.scan
of length 2 (jax-ml/jax#12868: XLA CPU runs convolutions inside loops far slower). No pooling is
involved, so the tiled max_pool does not change this; it decides whether conv nets can train in
fused (scanned) epochs on a backend.

    python benchmarks/conv_in_scan.py [--repeats 5]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from common import block, machine, time_interleaved

DN = ("NHWC", "HWIO", "NHWC")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = jax.random.normal(jax.random.key(0), (2, 64, 14, 14, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 64)) * 0.1
    grad = jax.grad(lambda w, xb: jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(xb, w, (1, 1), "SAME",
                                                                                 dimension_numbers=DN))))
    step = jax.jit(grad)
    scanned = jax.jit(lambda w, xs: jax.lax.scan(lambda c, xb: (c + grad(w, xb), None), jnp.zeros_like(w), xs)[0])
    block(step(w, x[0]))
    block(scanned(w, x))
    print(machine())
    times = time_interleaved({"2 calls outside a scan": lambda: block([step(w, x[0]), step(w, x[1])]),
                              "2 steps inside one scan": lambda: block(scanned(w, x))},
                             repeats=args.repeats, warmup=1)
    for name, t in times.items():
        print(f"  {name:24s} {t * 1e3:9.2f} ms")
    print(f"  inside / outside = {times['2 steps inside one scan'] / times['2 calls outside a scan']:.1f}x")


if __name__ == "__main__":
    main()
