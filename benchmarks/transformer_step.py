"""One pre-norm transformer block's train step (grad + Adam): jnn against hand-written raw JAX.

Contenders, timed interleaved (medians after warm-up), each call running ``--steps`` jitted steps:
  jnn block : jax.jit(jnn.train.make_train_step(serial(decoder_block(...)), mse, adam))
  raw block : a hand-written LN -> attention -> residual -> LN -> MLP(GELU) -> residual block with
              the same params, the same kernel (jax.nn.dot_product_attention), loss and optax.adam
Both start from the same params; the first losses are compared to show they compute the same thing.

    python benchmarks/transformer_step.py [--batch 8] [--seq 128] [--features 256] [--heads 4]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import jnn
from common import block, machine, time_interleaved
from jnn.layers.transformer import decoder_block


def layer_norm(x, p, eps=1e-5):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["offset"]


def raw_block(p, x, heads):
    b, t, f = x.shape
    h = layer_norm(x, p["norm_0"])
    a = p["attention"]
    q, k, v = ((h @ a[n]["w"] + a[n]["b"]).reshape(b, t, heads, -1) for n in ("query", "key", "value"))
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, f)
    x = x + o @ a["out"]["w"] + a["out"]["b"]
    m = p["mlp"]
    h = jax.nn.gelu(layer_norm(x, p["norm_1"]) @ m["dense_0"]["w"] + m["dense_0"]["b"], approximate=False)
    return x + h @ m["dense_1"]["w"] + m["dense_1"]["b"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(machine())

    key = jax.random.key(0)
    x = jax.random.normal(key, (args.batch, args.seq, args.features))
    y = jax.random.normal(jax.random.key(1), x.shape)
    opt = optax.adam(1e-3)
    model = jnn.serial(decoder_block(args.heads, args.mlp))
    ts = jnn.train.init_train_state(model, opt, key, x)
    jnn_step = jax.jit(jnn.train.make_train_step(model, jnn.losses.mse, opt, metrics={}))

    raw_params = ts.params["decoder_block_0"]  # the same initial values

    @jax.jit
    def raw_step(carry, batch):
        params, opt_state = carry
        loss_fn = lambda p: jnp.mean(jnp.square(raw_block(p, batch[0], args.heads) - batch[1]))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    state = {"jnn": ts, "raw": (raw_params, opt.init(raw_params))}
    _, jnn_logs = jnn_step(ts, (x, y))
    _, raw_loss = raw_step(state["raw"], (x, y))
    print(f"first-step loss: jnn {float(jnn_logs['loss']):.6f}  raw {float(raw_loss):.6f}")

    def run_jnn():
        t = state["jnn"]
        for _ in range(args.steps):
            t, _ = jnn_step(t, (x, y))
        state["jnn"] = block(t)

    def run_raw():
        c = state["raw"]
        for _ in range(args.steps):
            c, _ = raw_step(c, (x, y))
        state["raw"] = block(c)

    times = time_interleaved({"jnn block": run_jnn, "raw block": run_raw}, repeats=args.repeats)
    ms = {k: v / args.steps * 1e3 for k, v in times.items()}
    print(f"\nbatch {args.batch}, seq {args.seq}, features {args.features}, heads {args.heads}, mlp {args.mlp}: "
          f"ms per train step (median of {args.repeats} calls of {args.steps} steps)")
    for name, value in ms.items():
        print(f"  {name:10s} {value:8.3f}")
    print(f"  ratio jnn/raw = {ms['jnn block'] / ms['raw block']:.3f}")
    print(f"  compile cache sizes: jnn {jnn_step._cache_size()}, raw {raw_step._cache_size()}")


if __name__ == "__main__":
    main()
