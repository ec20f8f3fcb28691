"""Minimal reproductions of where XLA CPU loses to PyTorch eager in the small GPT's step.

Each case is a few lines of jax.numpy (jitted forward + backward) beside the same PyTorch ops,
timed interleaved on the GPT's activation shapes ([B*T, F] = [768, 128] at 0.8M params):

  ln            layer norm, forward and backward (jax.grad of the two-pass formula)
  ln_vjp        the same with jnn's layer norm (its hand-written tangent, fenced on CPU)
  ln_dense      layer norm then a dense layer, forward and backward for x and w (the block's pattern:
                XLA fuses the layer-norm backward into the transposed operand of the weight gradient)
  ln_dense_vjp  the same with jnn's layer norm
  res_ln        four residual layers x + LN(x) @ w_i, forward and backward (the residual stream)
  res_ln_vjp    the same with jnn's layer norm
  gelu          exact GELU (erf) forward and backward on [768, 4F]
  gelu_fast     the same compiled with xla_cpu_enable_fast_math
  matmul        [768, F] @ [F, 4F] forward and backward (for scale)
  transpose     [12, 64, F] -> [F, 768], the copy XLA puts before a weight gradient's product
  weight_grad   x^T @ g for x [768, F], g [768, 4F] (a dense layer's weight gradient)
  mlp_bt        dense [F] -> [4F], tanh, dense [4F] -> [F] over x [B, 64, F], forward and backward (the
                weight gradients contract two axes, B and T); mlp_flat: the same over x [B * 64, F]
  wgrad_wide    g^T @ x [4F, F] (the weight gradient of a dense layer [4F] -> [F]); wgrad_wide_t:
                (x^T @ g)^T with an optimization_barrier before the transpose

Run on one core for steady figures (CPU time of this process):

    taskset -c 0 python benchmarks/xla_cpu_repro.py [--features 128] [--repeats 20] [--cpu-time]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import block, machine, time_interleaved  # noqa: E402
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's jnn
import jnn  # noqa: E402


def ln(x, g, b):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b


def ln_vjp(x, g, b):
    return jnn.layer_norm().apply({"scale": g, "offset": b}, {}, x)[0]


def residual_ln(norm, x, g, b, w):
    """Four pre-norm residual layers ``x + norm(x) @ w[i]``: the GPT's residual stream without attention/MLP."""
    for i in range(w.shape[0]):
        x = x + norm(x, g, b) @ w[i]
    return x


def cases(rows, f):
    """name -> (jax function of numpy args, torch function of tensors, args)."""
    import torch
    from torch.nn import functional as F
    rng = np.random.default_rng(0)
    x, ct = rng.normal(size=(rows, f)).astype(np.float32), rng.normal(size=(rows, f)).astype(np.float32)
    g, b = np.ones(f, np.float32), np.zeros(f, np.float32)
    w = (rng.normal(size=(f, 4 * f)) / np.sqrt(f)).astype(np.float32)
    w2 = (rng.normal(size=(4, f, f)) / np.sqrt(f)).astype(np.float32)
    ct4 = rng.normal(size=(rows, 4 * f)).astype(np.float32)
    h = rng.normal(size=(rows, 4 * f)).astype(np.float32)
    wt = np.ascontiguousarray(w.T)

    def grad(fn, argnums, options=None):
        """The forward's output and the gradients (as a train step needs both)."""
        def both(*a):
            out, pullback = jax.vjp(lambda *p: fn(*p), *a[:-1])
            grads = pullback(a[-1])
            return out, [grads[i] for i in (argnums if isinstance(argnums, tuple) else (argnums,))]
        return jax.jit(both, compiler_options=options)

    def tgrad(fn):
        cache = {}

        def run(*args):
            if "leaves" not in cache:
                cache["leaves"] = [torch.tensor(a, requires_grad=i < len(args) - 1) for i, a in enumerate(args)]
            leaves = cache["leaves"]
            for t in leaves[:-1]:
                t.grad = None
            fn(*leaves[:-1]).backward(leaves[-1])
            return [t.grad for t in leaves[:-1]]
        return run

    tensors = {}
    torch_t = lambda a: tensors.setdefault(id(a), torch.from_numpy(a))
    tln = lambda x, g, b: F.layer_norm(x, (f,), g, b, 1e-5)
    return {
        "ln": (grad(ln, (0, 1, 2)), tgrad(tln), (x, g, b, ct)),
        "ln_vjp": (grad(ln_vjp, (0, 1, 2)), tgrad(tln), (x, g, b, ct)),
        "ln_dense": (grad(lambda x, g, b, w: ln(x, g, b) @ w, (0, 1, 2, 3)),
                     tgrad(lambda x, g, b, w: tln(x, g, b) @ w), (x, g, b, w, ct4)),
        "ln_dense_vjp": (grad(lambda x, g, b, w: ln_vjp(x, g, b) @ w, (0, 1, 2, 3)),
                         tgrad(lambda x, g, b, w: tln(x, g, b) @ w), (x, g, b, w, ct4)),
        "res_ln": (grad(lambda x, g, b, w: residual_ln(ln, x, g, b, w), (0, 1, 2, 3)),
                   tgrad(lambda x, g, b, w: residual_ln(tln, x, g, b, w)), (x, g, b, w2, ct)),
        "res_ln_vjp": (grad(lambda x, g, b, w: residual_ln(ln_vjp, x, g, b, w), (0, 1, 2, 3)),
                       tgrad(lambda x, g, b, w: residual_ln(tln, x, g, b, w)), (x, g, b, w2, ct)),
        "gelu": (grad(lambda h: jax.nn.gelu(h, approximate=False), 0), tgrad(F.gelu), (h, ct4)),
        "gelu_fast": (grad(lambda h: jax.nn.gelu(h, approximate=False), 0, {"xla_cpu_enable_fast_math": True}),
                      tgrad(F.gelu), (h, ct4)),
        "matmul": (grad(lambda x, w: x @ w, (0, 1)), tgrad(lambda x, w: x @ w), (x, w, ct4)),
        "transpose": (jax.jit(lambda a: jnp.transpose(a.reshape(12, -1, f), (2, 0, 1)).reshape(f, -1)),
                      lambda a: torch_t(a).reshape(12, -1, f).permute(2, 0, 1).contiguous(), (x,)),
        "weight_grad": (jax.jit(lambda a, c: jnp.einsum("rf,rg->fg", a, c)),
                        lambda a, c: torch_t(a).T @ torch_t(c), (x, ct4)),
        "mlp_bt": (grad(lambda x, w, w2: (jnp.tanh(x.reshape(-1, 64, f) @ w) @ w2).reshape(rows, f), (0, 1, 2)),
                   tgrad(lambda x, w, w2: (torch.tanh(x.reshape(-1, 64, f) @ w) @ w2).reshape(rows, f)),
                   (x, w, wt, ct)),
        "mlp_flat": (grad(lambda x, w, w2: jnp.tanh(x @ w) @ w2, (0, 1, 2)),
                     tgrad(lambda x, w, w2: torch.tanh(x @ w) @ w2), (x, w, wt, ct)),
        "wgrad_wide": (jax.jit(lambda a, c: c.T @ a), lambda a, c: torch_t(c).T @ torch_t(a), (x, ct4)),
        "wgrad_wide_t": (jax.jit(lambda a, c: jax.lax.optimization_barrier(a.T @ c).T),
                         lambda a, c: torch_t(c).T @ torch_t(a), (x, ct4)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--rows", type=int, default=768, help="B * T")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed sample")
    parser.add_argument("--cpu-time", action="store_true")
    parser.add_argument("--cases", default="")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    print(machine(), f"; torch {torch.__version__}, 1 thread; load average {os.getloadavg()[0]:.1f}", flush=True)
    lines = [f"[{args.rows}, {args.features}]: microseconds per forward+backward call (median of {args.repeats} "
             f"interleaved samples of {args.calls} calls; {'CPU' if args.cpu_time else 'wall'} time)"]
    for name, (jfn, tfn, inputs) in cases(args.rows, args.features).items():
        if args.cases and name not in args.cases.split(","):
            continue
        jargs = [jnp.asarray(a) for a in inputs]
        block(jfn(*jargs))

        def run_jax():
            for _ in range(args.calls):
                out = jfn(*jargs)
            block(out)

        def run_torch():
            for _ in range(args.calls):
                tfn(*inputs)

        t = time_interleaved({"jax": run_jax, "torch": run_torch}, repeats=args.repeats,
                             clock=time.process_time if args.cpu_time else time.perf_counter)
        j, p = (t[k] / args.calls * 1e6 for k in ("jax", "torch"))
        lines.append(f"  {name:14s} XLA {j:8.1f} us   PyTorch {p:8.1f} us   XLA/PyTorch {j / p:5.2f}")
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
