"""A transformer language model's train step: achieved FLOP/s as a fraction of the device's peak.

FLOPs per step come from XLA's ``cost_analysis()`` of the compiled jnn train step (forward,
backward and Adam), time from the median of ``--repeats`` runs of ``--steps`` steps after
warm-up; fraction = FLOPs / seconds / peak. The model runs under
``jnn.precision.mixed_bfloat16()`` (float32 params, bfloat16 compute). The peak is ``--peak-tflops``
(default: 989 TFLOP/s, the H200's / H100 SXM's dense bfloat16 tensor-core figure from NVIDIA's data
sheet; no sparsity). On a CPU the fraction is meaningless; ``--tiny`` there only checks the script.

    python benchmarks/flops_fraction.py [--layers 12 --features 1024 --heads 16 --seq 1024 --batch 16]
    python benchmarks/flops_fraction.py --tiny
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import statistics

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jnn  # noqa: E402
from common import block, machine  # noqa: E402

H200_DENSE_BF16_TFLOPS = 989.0


def build(args):
    lm = jnn.decoder_lm(args.vocab, args.layers, args.heads, args.features, 4 * args.features, args.seq)
    model = jnn.precision.with_policy(lm, jnn.precision.mixed_bfloat16())
    opt = optax.adam(1e-4)
    step = jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={}))
    tokens = jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), tokens)
    return step, ts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=H200_DENSE_BF16_TFLOPS)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (a CPU check of the script)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.layers, args.features, args.heads, args.seq, args.batch, args.vocab = 2, 64, 2, 32, 4, 256
        args.steps, args.repeats = 2, 2
    step, ts = build(args)
    key = jax.random.key(1)
    x = jax.random.randint(key, (args.batch, args.seq), 0, args.vocab)
    batch = (x, jnp.roll(x, -1, axis=1))
    compiled = step.lower(ts, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
    ts, _ = block(step(ts, batch))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            ts, _ = step(ts, batch)
        block(ts)
        times.append((time.perf_counter() - start) / args.steps)
    seconds = statistics.median(times)
    achieved = flops / seconds
    lines = [machine(),
             f"decoder LM train step (mixed bfloat16, Adam): layers {args.layers}, features {args.features}, "
             f"heads {args.heads}, seq {args.seq}, batch {args.batch}, vocab {args.vocab}",
             f"  XLA cost_analysis FLOPs per step: {flops:.4g}",
             f"  median step time: {seconds * 1e3:.3f} ms ({args.repeats} runs of {args.steps} steps)",
             f"  achieved: {achieved / 1e12:.2f} TFLOP/s = {achieved / (args.peak_tflops * 1e12):.1%} of the "
             f"{args.peak_tflops:g} TFLOP/s peak used (dense bf16)"]
    print("\n".join(lines))
    return achieved / (args.peak_tflops * 1e12)


if __name__ == "__main__":
    main()
