"""Per-token sampling time of a decoder LM: key/value-cached (jnn.generate.generate) against the
uncached reference that re-runs the whole sequence for every token (generate_uncached).

Both are jitted (a lax.scan / fori_loop over new tokens); each is called once to compile, then
timed interleaved (medians). The tokens of the two are checked to be identical for the same key.

    python benchmarks/generation.py [--layers 4] [--features 128] [--prompt 16] [--new 112]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from common import block, machine, time_interleaved
from jnn.generate import generate, generate_uncached
from jnn.nets import decoder_lm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine())

    total = args.prompt + args.new
    lm = decoder_lm(args.vocab, args.layers, args.heads, args.features, 4 * args.features, total)
    prompt = jax.random.randint(jax.random.key(1), (args.batch, args.prompt), 0, args.vocab)
    params, _ = lm.init(jax.random.key(0), prompt)
    key = jax.random.key(2)
    run = {"cached": lambda: block(generate(lm, params, prompt, args.new, key=key, top_k=20)),
           "uncached": lambda: block(generate_uncached(lm, params, prompt, args.new, key=key, top_k=20))}
    compile_s = {}
    for name, fn in run.items():
        start = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - start
    same = bool(jnp.array_equal(run["cached"](), run["uncached"]()))
    times = time_interleaved(run, repeats=args.repeats, warmup=1)
    per_token = {k: v / args.new * 1e3 for k, v in times.items()}
    print(f"\n{args.layers} layers, features {args.features}, vocab {args.vocab}, batch {args.batch}: "
          f"prompt {args.prompt} + {args.new} new tokens (median of {args.repeats})")
    for name in run:
        print(f"  {name:9s} {per_token[name]:8.3f} ms/token   (first call incl. compile {compile_s[name]:.2f} s)")
    print(f"  speedup cached vs uncached = {per_token['uncached'] / per_token['cached']:.2f}x")
    print(f"  same tokens for the same key: {same}")


if __name__ == "__main__":
    main()
