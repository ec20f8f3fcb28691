"""Compile time and step time of a decoder LM against depth, unrolled vs scanned; remat memory.

Part 1: a training step (loss, gradients, SGD update; one ``jax.jit``) of ``decoder_lm`` at depths
2, 8 and 32, with ``scan_layers=False`` (a Python loop over blocks) and ``scan_layers=True``
(``jnn.repeat``: one ``lax.scan`` over stacked blocks). Prints compile seconds (``lower`` +
``compile``) and the median step time. Target: scanned compile time within 1.5x from 2 to 32.

Part 2: the same step for a 16-layer scanned model at a fixed batch, without remat and with
``remat="nothing"`` / ``"dots"``: peak temporary memory from ``compiled.memory_analysis()``
(target: "nothing" at most half of no remat) and the step-time cost.

Usage: python benchmarks/depth.py [--depths 2 8 32] [--features 64] [--batch 8] [--seq 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

import jnn


def make_step(model):
    def loss(params, tokens):
        logits = model.apply(params, {}, tokens[:, :-1])[0]
        return jnp.mean(jnn.losses.softmax_cross_entropy(logits, tokens[:, 1:]))

    def step(params, tokens):
        value, grads = jax.value_and_grad(loss)(params, tokens)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

    return jax.jit(step)


def measure(model, tokens, steps: int):
    params, _ = model.init(jax.random.key(0), tokens[:, :-1])
    step = make_step(model)
    t0 = time.perf_counter()
    compiled = step.lower(params, tokens).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    params, loss = compiled(params, tokens)  # warm-up
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, loss = compiled(params, tokens)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), temp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--remat-depth", type=int, default=16)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parts", choices=["all", "depth", "remat"], default="all")
    parser.add_argument("--scanned-only", action="store_true", help="skip the unrolled models")
    args = parser.parse_args(argv)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq + 1), 0, args.vocab)
    lm = lambda depth, **kw: jnn.decoder_lm(args.vocab, depth, args.heads, args.features, 4 * args.features,
                                            args.seq, **kw)
    print(f"jax {jax.__version__} on {jax.default_backend()}; load average {os.getloadavg()}")
    print(f"decoder_lm features={args.features} heads={args.heads} batch={args.batch} seq={args.seq}")
    if args.parts in ("all", "depth"):
        depth_part(args, lm, tokens)
    if args.parts in ("all", "remat"):
        remat_part(args, lm, tokens)
    print(f"load average after: {os.getloadavg()}")


def depth_part(args, lm, tokens):
    print(f"{'depth':>5} {'form':>9} {'compile s':>10} {'step ms':>9}", flush=True)
    compile_s = {}
    for depth in args.depths:
        for scan in (True,) if args.scanned_only else (False, True):
            c, t, _ = measure(lm(depth, scan_layers=scan), tokens, args.steps)
            compile_s[depth, scan] = c
            print(f"{depth:>5} {'scanned' if scan else 'unrolled':>9} {c:>10.2f} {t * 1e3:>9.2f}", flush=True)
    lo, hi = min(args.depths), max(args.depths)
    ratio = compile_s[hi, True] / compile_s[lo, True]
    print(f"scanned compile time {hi} vs {lo} layers: {ratio:.2f}x (target <= 1.5x: "
          f"{'met' if ratio <= 1.5 else 'NOT met'})")
    if not args.scanned_only:
        print(f"unrolled compile time {hi} vs {lo} layers: {compile_s[hi, False] / compile_s[lo, False]:.2f}x")


def remat_part(args, lm, tokens):
    print(f"\nremat, {args.remat_depth} scanned layers, batch {args.batch}:")
    print(f"{'remat':>8} {'temp MiB':>9} {'step ms':>9}")
    results = {}
    for policy in (None, "dots", "nothing"):
        _, t, temp = measure(lm(args.remat_depth, scan_layers=True, remat=policy), tokens, args.steps)
        results[policy] = (temp, t)
        print(f"{str(policy):>8} {temp / 2 ** 20:>9.2f} {t * 1e3:>9.2f}", flush=True)
    mem = results["nothing"][0] / results[None][0]
    cost = results["nothing"][1] / results[None][1]
    print(f"remat='nothing': temporary memory {mem:.2f}x of no remat (target <= 0.5: "
          f"{'met' if mem <= 0.5 else 'NOT met'}), step time {cost:.2f}x")


if __name__ == "__main__":
    main()
