"""A small character-level GPT's train step: jnn against raw JAX and PyTorch eager, interleaved.

The model and recipe of nanoGPT's CPU example (4 layers, 128 wide, 4 heads, 64-token context,
batch 12, vocabulary 65, tied embedding, exact GELU, AdamW beta2=0.99 with weight decay 0.1 on the
weight matrices, warm-up + cosine learning rate, gradients clipped to global norm 1):

  jnn         jax.jit(jnn.train.make_train_step(jnn.decoder_lm(...), softmax_cross_entropy, opt)), as shipped
  raw JAX     the same GPT written out in jax.numpy over the same params (:func:`raw_forward`)
  PyTorch Nt  a nanoGPT-style eager model written here (fused QKV Linear, F.scaled_dot_product_attention,
              exact GELU, tied head), torch.optim.AdamW (foreach), clip_grad_norm_, on N threads
              (one contender per ``--torch-threads`` entry)

All start from the same initial values (jnn's init, copied), so the first losses agree. Prints ms
per step at three sizes (``--sizes``), medians of interleaved calls of ``--steps`` steps, with the
ratios to PyTorch; then trains jnn and PyTorch ``--val-steps`` steps on Tiny Shakespeare
(JNN_DATA_DIR) and prints both validation losses.

    python benchmarks/gpt_vs_torch.py [--sizes 0.8M,3M,10M] [--val-steps 300]
    taskset -c 1 python benchmarks/gpt_vs_torch.py --torch-threads 1 --cpu-time   # one core, CPU time (loaded machine)
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's jnn
from common import block, machine, time_interleaved  # noqa: E402

import jnn  # noqa: E402

SIZES = {"0.8M": (4, 128, 4), "3M": (4, 256, 4), "10M": (6, 384, 6)}   # layers, width, heads
BATCH, SEQ, VOCAB = 12, 64, 65


# ---------------------------------------------------------------- data and recipe

def shakespeare_ids():
    """(train ids, val ids, vocab size): characters of Tiny Shakespeare, 90/10 split (nanoGPT's)."""
    text = jnn.data.load_tiny_shakespeare()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in chars], np.int32)[np.searchsorted(chars, list(text))]
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], len(chars)


def random_batches(ids, n, seed=0):
    """``n`` batches (x, y) of BATCH random windows of SEQ tokens (y is x shifted by one)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - SEQ - 1, size=(n, BATCH))
    x = np.stack([np.stack([ids[s:s + SEQ] for s in row]) for row in starts])
    y = np.stack([np.stack([ids[s + 1:s + SEQ + 1] for s in row]) for row in starts])
    return x.astype(np.int32), y.astype(np.int32)


def learning_rate(step, total, peak=1e-3, warmup=100):
    """nanoGPT's schedule: linear warm-up, cosine decay to peak / 10 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    ratio = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak / 10 + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - peak / 10)


def optax_recipe(total):
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(_schedule(total), b1=0.9, b2=0.99, weight_decay=0.1, mask=jnn.tree.mask))


# ---------------------------------------------------------------- jnn

def jnn_model(layers, width, heads):
    return jnn.decoder_lm(VOCAB, layers, heads, width, 4 * width, SEQ)


def jnn_step(model, opt):
    return jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={}))


# ---------------------------------------------------------------- raw JAX

def raw_forward(params, tokens, heads):
    """The GPT of :func:`jnn_model` written out in jax.numpy over jnn's params."""
    table = params["embedding"]["embedding"]
    b, t = tokens.shape
    ln = lambda p, x: ((x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) * p["scale"]
                       + p["offset"])
    x = jnp.take(table, tokens, axis=0) * math.sqrt(table.shape[1]) + params["position"]["embedding"][:t]
    for i in range(sum(k.startswith("block_") for k in params)):
        p = params[f"block_{i}"]
        a, m, h = p["attention"], p["mlp"], ln(p["norm_0"], x)
        q, k, v = ((h @ a[n]["w"] + a[n]["b"]).reshape(b, t, heads, -1) for n in ("query", "key", "value"))
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, -1)
        x = x + o @ a["out"]["w"] + a["out"]["b"]
        h = jax.nn.gelu(ln(p["norm_1"], x) @ m["dense_0"]["w"] + m["dense_0"]["b"], approximate=False)
        x = x + h @ m["dense_1"]["w"] + m["dense_1"]["b"]
    return ln(params["final_norm"], x) @ table.T


def raw_step(heads, opt):
    """A jitted ``((params, opt_state), x, y) -> ((params, opt_state), loss)``."""
    def loss_fn(params, x, y):
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(raw_forward(params, x, heads), y))

    @jax.jit
    def step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def _schedule(total):
    """:func:`learning_rate` for optax (traced step)."""
    return lambda step: jnp.where(
        step < 100, 1e-3 * (step + 1) / 101,
        1e-4 + 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(1.0, (step - 100) / max(1, total - 100)))) * 9e-4)


# ---------------------------------------------------------------- PyTorch eager (nanoGPT-style)

def torch_model(params, heads, threads=2):
    """A nanoGPT-style GPT in PyTorch with jnn's initial ``params`` copied in."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    torch.set_num_threads(threads)
    t = lambda a: torch.tensor(np.asarray(a))

    def linear(pw, pb=None):
        layer = nn.Linear(pw.shape[0], pw.shape[1])
        with torch.no_grad():
            layer.weight.copy_(t(pw).T)
            layer.bias.copy_(t(pb))
        return layer

    def norm(p):
        layer = nn.LayerNorm(p["scale"].shape[0])
        with torch.no_grad():
            layer.weight.copy_(t(p["scale"]))
            layer.bias.copy_(t(p["offset"]))
        return layer

    class Block(nn.Module):
        def __init__(self, p):
            super().__init__()
            a, m = p["attention"], p["mlp"]
            self.ln_1, self.ln_2 = norm(p["norm_0"]), norm(p["norm_1"])
            self.c_attn = linear(np.concatenate([a[n]["w"] for n in ("query", "key", "value")], 1),
                                 np.concatenate([a[n]["b"] for n in ("query", "key", "value")]))
            self.c_proj = linear(a["out"]["w"], a["out"]["b"])
            self.fc, self.proj = linear(m["dense_0"]["w"], m["dense_0"]["b"]), linear(m["dense_1"]["w"], m["dense_1"]["b"])

        def forward(self, x):
            b, T, f = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(f, dim=2)
            q, k, v = (z.view(b, T, heads, f // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, T, f))
            return x + self.proj(F.gelu(self.fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(*params["embedding"]["embedding"].shape)
            self.wpe = nn.Parameter(t(params["position"]["embedding"]))
            with torch.no_grad():
                self.wte.weight.copy_(t(params["embedding"]["embedding"]))
            self.h = nn.ModuleList([Block(params[f"block_{i}"])
                                    for i in range(sum(k.startswith("block_") for k in params))])
            self.ln_f = norm(params["final_norm"])
            self.scale = math.sqrt(self.wte.weight.shape[1])

        def forward(self, idx):
            x = self.wte(idx) * self.scale + self.wpe[: idx.shape[1]]
            for blk in self.h:
                x = blk(x)
            return F.linear(self.ln_f(x), self.wte.weight)   # tied head

    return GPT()


def torch_trainer(model, total):
    """``step(x, y) -> loss tensor``: forward, backward, clip, AdamW (decay on Linear weights)."""
    import torch
    from torch.nn import functional as F
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    state = {"step": 0}

    def step(x, y):
        for group in opt.param_groups:
            group["lr"] = learning_rate(state["step"], total)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        return loss

    return step


# ---------------------------------------------------------------- timing

def contenders(size, xs, ys, torch_threads, total=2000):
    """Zero-argument runners (each runs len(xs) steps and blocks) and the first-step losses."""
    import torch
    layers, width, heads = SIZES[size]
    model = jnn_model(layers, width, heads)
    opt = optax_recipe(total)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.asarray(xs[0]))
    params = ts.params
    jx, jy = [jnp.asarray(a) for a in xs], [jnp.asarray(a) for a in ys]
    first, fns = {}, {}

    jnn_train = jnn_step(model, opt)
    steps = {"jnn": (lambda c, x, y: (lambda out: (out[0], out[1]["loss"]))(jnn_train(c, (x, y))), ts),
             "raw JAX": (raw_step(heads, opt), (params, opt.init(params)))}
    for name, (step, carry) in steps.items():
        box = {"c": carry}
        first[name] = float(step(carry, jx[0], jy[0])[1])

        def run(step=step, box=box):
            c = box["c"]
            for x, y in zip(jx, jy):
                c, _ = step(c, x, y)
            box["c"] = block(c)
        fns[name] = run

    if not torch_threads:
        return fns, first
    net = torch_model(jax.device_get(params), heads, torch_threads[0])
    train = torch_trainer(net, total)
    tx, ty = [torch.from_numpy(a.astype(np.int64)) for a in xs], [torch.from_numpy(a.astype(np.int64)) for a in ys]
    with torch.no_grad():
        from torch.nn import functional as F
        logits = net(tx[0])
        first["PyTorch"] = float(F.cross_entropy(logits.view(-1, logits.size(-1)), ty[0].view(-1)))

    def torch_runner(threads):
        def run():
            torch.set_num_threads(threads)
            for x, y in zip(tx, ty):
                loss = train(x, y)
            loss.item()
        return run

    for threads in torch_threads:
        fns[f"PyTorch {threads}t"] = torch_runner(threads)
        first[f"PyTorch {threads}t"] = first["PyTorch"]
    del first["PyTorch"]
    return fns, first


def time_sizes(sizes, steps, repeats, torch_threads, data, clock=time.perf_counter):
    lines = []
    for size in sizes:
        xs, ys = random_batches(data, steps, seed=1)
        fns, first = contenders(size, xs, ys, torch_threads)
        n_params = sum(math.prod(s) for s in _param_shapes(size))
        times = time_interleaved(fns, repeats=repeats, clock=clock)
        ms = {k: v / steps * 1e3 for k, v in times.items()}
        torch_ms = min([v for k, v in ms.items() if k.startswith("PyTorch")] or [float("nan")])
        lines.append(f"size {size} ({n_params / 1e6:.2f}M params): ms per step (median of {repeats} interleaved "
                     f"calls of {steps} steps), ratio to the faster PyTorch, to raw JAX; first-step loss")
        for name, value in ms.items():
            lines.append(f"  {name:12s} {value:8.2f} ms  {value / torch_ms:5.2f}x torch  "
                         f"{value / ms['raw JAX']:5.2f}x raw   loss {first[name]:.4f}")
        print("\n".join(lines[-len(ms) - 1:]), flush=True)
    return lines


@functools.cache
def _param_shapes(size):
    layers, width, heads = SIZES[size]
    model = jnn_model(layers, width, heads)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((BATCH, SEQ), jnp.int32))[0])
    return tuple(a.shape for a in jax.tree.leaves(shapes))


# ---------------------------------------------------------------- validation loss after N steps

def val_loss_run(size, n_steps, torch_threads):
    """Trains jnn and PyTorch ``n_steps`` on the same random batches; validation loss of each on
    the first 128 non-overlapping windows of the validation text."""
    import torch
    from torch.nn import functional as F
    train_ids, val_ids, vocab = shakespeare_ids()
    assert vocab == VOCAB, vocab
    layers, width, heads = SIZES[size]
    model, opt = jnn_model(layers, width, heads), optax_recipe(n_steps)
    xs, ys = random_batches(train_ids, n_steps, seed=2)
    n_val = min(128, (len(val_ids) - 1) // SEQ)
    vx = val_ids[: n_val * SEQ].reshape(n_val, SEQ)
    vy = val_ids[1: n_val * SEQ + 1].reshape(n_val, SEQ)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.asarray(xs[0]))
    net = torch_model(jax.device_get(ts.params), heads, torch_threads)
    step, train = jnn_step(model, opt), torch_trainer(net, n_steps)
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        ts, _ = step(ts, (x, y))
    block(ts)
    jnn_s = time.perf_counter() - start
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        train(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
    torch_s = time.perf_counter() - start
    logits = model.apply(ts.params, ts.state, jnp.asarray(vx))[0]
    jnn_val = float(jnn.losses.softmax_cross_entropy(logits, jnp.asarray(vy)))
    with torch.no_grad():
        logits = net(torch.from_numpy(vx.astype(np.int64)))
        torch_val = float(F.cross_entropy(logits.reshape(-1, VOCAB), torch.from_numpy(vy.astype(np.int64)).reshape(-1)))
    return (f"size {size}, {n_steps} steps of batch {BATCH} x {SEQ} on Tiny Shakespeare: validation loss "
            f"(first {n_val} windows of the last 10%) jnn {jnn_val:.4f} ({jnn_s:.1f} s, incl. compile), "
            f"PyTorch {torch_val:.4f} ({torch_s:.1f} s) nats/char")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.8M,3M,10M", help=f"of {list(SIZES)}")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", default="1,2", help="PyTorch contenders: one per thread count")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time this process's CPU time, not wall time (for one-core runs: taskset -c 0 "
                             "... --torch-threads 1 --cpu-time)")
    parser.add_argument("--val-steps", type=int, default=300, help="0: no validation-loss run")
    parser.add_argument("--val-size", default="0.8M")
    args = parser.parse_args(argv)
    print(machine(), f"; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    try:
        data = shakespeare_ids()[0]
    except Exception as error:   # noqa: BLE001 - no data: random tokens time the same
        print(f"(random tokens, no validation run: {error})")
        data, args.val_steps = np.random.default_rng(0).integers(0, VOCAB, 100_000).astype(np.int32), 0
    threads = [int(t) for t in args.torch_threads.split(",") if t]
    lines = time_sizes([s for s in args.sizes.split(",") if s], args.steps, args.repeats, threads, data,
                       time.process_time if args.cpu_time else time.perf_counter)
    if args.val_steps:
        line = val_loss_run(args.val_size, args.val_steps, threads[-1])
        print(line, flush=True)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
