"""The scanned LSTM layer, jnn against a hand-written raw-JAX ``lax.scan`` LSTM, same process.

Contenders, each jitted, timed interleaved, medians after warm-up:
  jnn forward        : jnn.recurrent(jnn.lstm_cell(H)).apply on [B, T, F]
  raw forward        : a hand-written lax.scan LSTM with the same fused-gate math
                       (z = x_t @ W_i + b + h @ W_h, gates i, f, g, o; carry (c, h))
  jnn fwd+bwd        : jax.grad of sum(outputs * r) (r a fixed random [B, T, H] array, so the
                       cotangent is a real array as in training) w.r.t. the params and the
                       input, through jnn
  raw fwd+bwd        : the same through the raw scan
  raw hoisted fwd+bwd: (for information) the raw LSTM with the input projection x @ W_i done for
                       all steps at once before the scan, the usual CPU/GPU trick; not the same
                       math order as jnn's cell, so it is not in the ratio
Both use the same weights, and the outputs and gradients are checked to agree before timing.
The timing runs twice, the second time with the contenders in reverse order (which one follows
which matters on a busy machine); the reported time is the mean of the two medians. It also
reports whether XLA's compiled programs for jnn and raw have the same instruction counts.

    python benchmarks/lstm_layer.py [--batch 64 --time 50 --features 64 --hidden 256 --repeats 30]
    taskset -c 1 python benchmarks/lstm_layer.py --batch 128 --time 28 --features 28 --hidden 128 --cpu-time
"""
from __future__ import annotations

import argparse
import collections
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

import jnn
from common import block, machine, time_interleaved


def raw_lstm(params, x, hoist: bool = False):
    """``x: [B, T, F]`` -> ``[B, T, H]``; ``params`` as jnn's lstm_cell (``input.w/b``, ``hidden.w``)."""
    w_i, b, w_h = params["input"]["w"], params["input"]["b"], params["hidden"]["w"]
    H = w_h.shape[0]
    xs = jnp.swapaxes(x, 0, 1)                                                   # [T, B, F]
    if hoist:
        xs = xs @ w_i + b                                                        # [T, B, 4H]

    def step(carry, x_t):
        c, h = carry
        z = (x_t if hoist else x_t @ w_i + b) + h @ w_h
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    zeros = jnp.zeros((x.shape[0], H), x.dtype)
    _, ys = jax.lax.scan(step, (zeros, zeros), xs)
    return jnp.swapaxes(ys, 0, 1)


def op_counts(fn, *args) -> collections.Counter:
    """Instruction counts by opcode of the XLA-compiled program."""
    return collections.Counter(re.findall(r"= \S+ ([a-z][\w-]*)\(", jax.jit(fn).lower(*args).compile().as_text()))


def bench(B: int, T: int, F: int, H: int, repeats: int, clock=time.perf_counter) -> dict[str, float]:
    layer = jnn.recurrent(jnn.lstm_cell(H))
    kx, kp = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (B, T, F), jnp.float32)
    params, state = layer.init(kp, jax.ShapeDtypeStruct((B, T, F), jnp.float32))

    jnn_fwd = jax.jit(lambda p, x: layer.apply(p, state, x)[0])
    raw_fwd = jax.jit(raw_lstm)
    r = jax.random.normal(jax.random.key(1), (B, T, H), jnp.float32)
    grad = lambda f: jax.grad(lambda p, x: jnp.sum(f(p, x) * r), argnums=(0, 1))
    same_hlo = {"forward": op_counts(jnn_fwd, params, x) == op_counts(raw_lstm, params, x),
                "fwd+bwd": op_counts(grad(jnn_fwd), params, x) == op_counts(grad(raw_lstm), params, x)}
    jnn_grad, raw_grad = jax.jit(grad(jnn_fwd)), jax.jit(grad(raw_lstm))
    hoisted_grad = jax.jit(grad(lambda p, x: raw_lstm(p, x, hoist=True)))

    np.testing.assert_allclose(jnn_fwd(params, x), raw_fwd(params, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(jnn_grad(params, x)), jax.tree_util.tree_leaves(raw_grad(params, x))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    fns = {"jnn forward": lambda: block(jnn_fwd(params, x)),
           "raw forward": lambda: block(raw_fwd(params, x)),
           "jnn fwd+bwd": lambda: block(jnn_grad(params, x)),
           "raw fwd+bwd": lambda: block(raw_grad(params, x)),
           "raw hoisted fwd+bwd": lambda: block(hoisted_grad(params, x))}
    forward = time_interleaved(fns, repeats=repeats, warmup=3, clock=clock)
    backward = time_interleaved(dict(reversed(fns.items())), repeats=repeats, warmup=1, clock=clock)
    caches = {"jnn forward": jnn_fwd._cache_size(), "jnn fwd+bwd": jnn_grad._cache_size()}
    return {k: (forward[k] + backward[k]) / 2 * 1e3 for k in fns}, caches, same_hlo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cpu-time", action="store_true", help="time this process's CPU time (one core: taskset)")
    args = parser.parse_args()
    print(machine())
    ms, caches, same_hlo = bench(args.batch, args.time, args.features, args.hidden, args.repeats,
                                 time.process_time if args.cpu_time else time.perf_counter)
    print(f"\nLSTM layer B={args.batch} T={args.time} F={args.features} H={args.hidden}, float32: "
          f"ms per call (mean of two interleaved medians of {args.repeats}, in both orders)")
    for name, value in ms.items():
        print(f"  {name:20s} {value:8.3f}")
    print(f"  ratio forward   jnn/raw = {ms['jnn forward'] / ms['raw forward']:.3f}")
    print(f"  ratio fwd+bwd   jnn/raw = {ms['jnn fwd+bwd'] / ms['raw fwd+bwd']:.3f}")
    print(f"  hoisting x @ W_i out of the scan (raw): {ms['raw fwd+bwd'] / ms['raw hoisted fwd+bwd']:.2f}x "
          f"the speed of the per-step form")
    print(f"  same XLA instruction counts jnn vs raw: {same_hlo}")
    print(f"  compile cache sizes: {caches}  (1 = compiled once)")


if __name__ == "__main__":
    main()
