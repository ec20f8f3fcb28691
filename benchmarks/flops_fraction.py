"""A transformer language model's train step: tokens/s and achieved FLOP/s as a share of the device's
dense bfloat16 peak.

FLOPs per step come from XLA's ``cost_analysis()`` of the compiled jnn train step (forward,
backward and the optimizer), time from the median of ``--repeats`` runs of ``--steps`` steps after
warm-up; tokens/s = batch * seq / seconds; share = FLOPs / seconds / peak. The model runs under
``jnn.precision.mixed_bfloat16()`` (float32 params, bfloat16 compute). The peak comes from the
device kind (PEAK_TFLOPS: NVIDIA's data-sheet dense bfloat16 tensor-core figures, no sparsity)
or ``--peak-tflops``; on a CPU there is none and ``--tiny`` only checks the script.
``--gpt`` adds the small character GPTs of ``gpt_vs_torch.py`` (its sizes, batch, context,
vocabulary and AdamW recipe with clipping) after the large model.

    python benchmarks/flops_fraction.py [--layers 12 --features 1024 --heads 16 --seq 1024 --batch 16]
    python benchmarks/flops_fraction.py --gpt 0.8M,3M,10M
    python benchmarks/flops_fraction.py --tiny --gpt 0.8M
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
import gpt_vs_torch  # noqa: E402
from common import block, machine  # noqa: E402

PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0}   # dense bf16; the first match wins


def peak_tflops(kind: str) -> float | None:
    """The dense bfloat16 peak of a device kind such as ``"NVIDIA H100 80GB HBM3"``; None if unknown."""
    return next((peak for name, peak in PEAK_TFLOPS.items() if name in kind), None)


def measure(lm, opt, batch, seq, vocab, steps, repeats):
    """(FLOPs per step, median seconds per step) of ``lm``'s mixed-bfloat16 train step with ``opt``."""
    model = jnn.precision.with_policy(lm, jnn.precision.mixed_bfloat16())
    step = jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={}))
    x = jax.random.randint(jax.random.key(1), (batch, seq), 0, vocab)
    data = (x, jnp.roll(x, -1, axis=1))
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x)
    cost = step.lower(ts, data).compile().cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    ts, _ = block(step(ts, data))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            ts, _ = step(ts, data)
        block(ts)
        times.append((time.perf_counter() - start) / steps)
    return flops, statistics.median(times)


def report(title, flops, seconds, tokens, peak):
    achieved = flops / seconds
    share = (f" = {achieved / (peak * 1e12):.2%} of the {peak:g} TFLOP/s dense bf16 peak" if peak
             else " (no bf16 peak known for this device: --peak-tflops sets one)")
    return [title, f"  XLA cost_analysis FLOPs per step: {flops:.4g}; median step time {seconds * 1e3:.3f} ms",
            f"  {tokens / seconds:,.0f} tokens/s; {achieved / 1e12:.3f} TFLOP/s{share}"]


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
    parser.add_argument("--gpt", default="", help=f"small GPT sizes of gpt_vs_torch.py, from {sorted(gpt_vs_torch.SIZES)}")
    parser.add_argument("--gpt-steps", type=int, default=50, help="steps per timed run of a small GPT")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: from the device kind")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (a CPU check of the script)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.layers, args.features, args.heads, args.seq, args.batch, args.vocab = 2, 64, 2, 32, 4, 256
        args.steps, args.repeats, args.gpt_steps = 2, 2, 2
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or peak_tflops(kind)
    print(machine(), flush=True)
    lm = jnn.decoder_lm(args.vocab, args.layers, args.heads, args.features, 4 * args.features, args.seq)
    flops, seconds = measure(lm, optax.adam(1e-4), args.batch, args.seq, args.vocab, args.steps, args.repeats)
    shares = {"large": flops / seconds / (peak or float("nan")) / 1e12}
    print("\n".join(report(f"decoder LM train step (mixed bfloat16, Adam): layers {args.layers}, features "
                           f"{args.features}, heads {args.heads}, seq {args.seq}, batch {args.batch}, vocab "
                           f"{args.vocab} ({args.repeats} runs of {args.steps} steps)",
                           flops, seconds, args.batch * args.seq, peak)), flush=True)
    batch, seq, vocab = gpt_vs_torch.BATCH, gpt_vs_torch.SEQ, gpt_vs_torch.VOCAB
    for size in filter(None, args.gpt.split(",")):
        layers, width, heads = gpt_vs_torch.SIZES[size]
        lm = gpt_vs_torch.jnn_model(layers, width, heads)
        flops, seconds = measure(lm, gpt_vs_torch.optax_recipe(10_000), batch, seq, vocab, args.gpt_steps,
                                 args.repeats)
        shares[size] = flops / seconds / (peak or float("nan")) / 1e12
        print("\n".join(report(f"small GPT {size} (gpt_vs_torch.py; mixed bfloat16, AdamW + clipping): layers "
                               f"{layers}, width {width}, heads {heads}, seq {seq}, batch {batch}, vocab {vocab} "
                               f"({args.repeats} runs of {args.gpt_steps} steps)",
                               flops, seconds, batch * seq, peak)), flush=True)
    return shares


if __name__ == "__main__":
    main()
