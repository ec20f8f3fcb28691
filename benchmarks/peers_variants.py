"""Variants of the peer benchmark's LSTM and CNN train steps (peers_jax.py), timed against each
other in one process, interleaved, medians of CPU time (run on one core: taskset), ratio to the first.

  lstm: the raw JAX LSTM step with ``hoist`` (x @ W_i + b for all steps before the scan) and/or
        ``u<k>`` (``lax.scan(unroll=k)``); ``base`` is peers_jax's raw step
  cnn:  jnn's step with ``fence`` (max pooling's JVP reads its input through an
        ``optimization_barrier``, so XLA cannot recompute the conv/relu in the backward),
        ``plain`` (plain ``jax.jit``: YNNPACK convolutions), ``noshift`` (the one-channel first
        convolution by XLA, not the shifted sum); ``jnn`` as fit compiles it; ``raw`` peers' raw JAX

    taskset -c 1 python benchmarks/peers_variants.py lstm base,hoist,hoist+u4,u4
    taskset -c 1 python benchmarks/peers_variants.py cnn jnn,fence,plain,noshift,raw
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jnn  # noqa: E402
import peers_jax as pj  # noqa: E402
from common import block, time_interleaved  # noqa: E402

pool = sys.modules["jnn.layers.pooling"]
convs = sys.modules["jnn.layers.conv"]


def lstm_logits(p, x, hoist=False, unroll=1):
    w_i, b, w_h = p["input"]["w"], p["input"]["b"], p["hidden"]["w"]
    xs = jnp.swapaxes(x, 0, 1)
    xs = xs @ w_i + b if hoist else xs

    def cell(carry, x_t):
        c, h = carry
        z = (x_t if hoist else x_t @ w_i + b) + h @ w_h
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return (c, jax.nn.sigmoid(o) * jnp.tanh(c)), None

    zeros = jnp.zeros((x.shape[0], pj.HIDDEN), x.dtype)
    (_, h), _ = jax.lax.scan(cell, (zeros, zeros), xs, unroll=unroll)
    return pj._apply_dense(p["out"], h)


def make_lstm(variant):
    parts = variant.split("+")
    unroll = next((int(p[1:]) for p in parts if p.startswith("u")), 1)
    opt, params = pj.optimizer(), pj.raw_init("lstm", jax.random.key(0))

    @jax.jit
    def step(carry, x, y):
        params, s = carry
        grads = jax.grad(lambda p: pj.cross_entropy(lstm_logits(p, x, "hoist" in parts, unroll), y))(params)
        updates, s = opt.update(grads, s, params)
        return optax.apply_updates(params, updates), s

    return step, (params, opt.init(params))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def fenced_max(x, window):
    return pool._tile_view(x, window).max(axis=pool._window_axes(window))


@fenced_max.defjvp
def _fenced_max_jvp(window, primals, tangents):
    (x,), (t,) = primals, tangents
    view, tangent = pool._tile_view(jax.lax.optimization_barrier(x), window), pool._tile_view(t, window)
    offsets = list(pool._offsets(window))
    best, out = view[offsets[0]], tangent[offsets[0]]
    for index in offsets[1:]:
        better = view[index] > best
        best, out = jnp.where(better, view[index], best), jnp.where(better, tangent[index], out)
    return view.max(axis=pool._window_axes(window)), out


def make_cnn(variant):
    if variant == "raw":
        return pj.make_raw("cnn", jax.random.key(0), 128)
    saved = pool._tiled_max, convs._convolve
    pool._tiled_max = fenced_max if "fence" in variant else saved[0]
    convs._convolve = (lambda x, w, *geometry: convs._xla_conv(x, w, *geometry)) if "noshift" in variant else saved[1]
    try:   # traced here, while patched
        model, opt = pj.jnn_model("cnn"), pj.optimizer()
        options = {} if "plain" in variant else jnn.train.compiler_options()
        step = jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={}),
                       compiler_options=options)
        ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((128, 28, 28, 1)))
        step(ts, (jnp.zeros((128, 28, 28, 1)), jnp.zeros(128, jnp.int32)))
    finally:
        pool._tiled_max, convs._convolve = saved
    return (lambda ts, x, y: step(ts, (x, y))[0]), ts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["lstm", "cnn"])
    parser.add_argument("variants")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = [(jnp.asarray(rng.uniform(size=(128, *pj.SHAPES[args.model])).astype(np.float32)),
                jnp.asarray(rng.integers(0, 10, 128).astype(np.int32))) for _ in range(args.steps)]
    fns = {}
    for variant in args.variants.split(","):
        step, carry = (make_lstm if args.model == "lstm" else make_cnn)(variant)
        box = {"c": carry}

        def run(step=step, box=box):
            c = box["c"]
            for x, y in batches:
                c = step(c, x, y)
            box["c"] = block(c)

        fns[variant] = run
    times = time_interleaved(fns, repeats=args.repeats, clock=time.process_time)
    first = next(iter(times.values()))
    for name, t in times.items():
        print(f"{args.model} {name:16s} {t / args.steps * 1e3:8.3f} ms CPU time per step  {t / first:.3f}")


if __name__ == "__main__":
    main()
