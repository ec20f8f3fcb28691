"""A small character-level GPT's train step: jnn against PyTorch eager (and raw JAX), interleaved.

The model and recipe of nanoGPT's CPU example (4 layers, 128 wide, 4 heads, 64-token context,
batch 12, vocabulary 65, tied embedding, AdamW beta2=0.99 with weight decay 0.1 on the weight
matrices, warm-up + cosine learning rate, gradients clipped to global norm 1):

  jnn         jax.jit(jnn.train.make_train_step(jnn.decoder_lm(...), softmax_cross_entropy, opt))
  jnn+opts    the same jitted with compiler_options=jnn.train.compiler_options() (``--variants jnn+opts``)
  raw JAX     a hand-written GPT over the same params (:func:`raw_forward`); ``--variants`` adds
              raw JAX steps with changes (VARIANTS; ``+`` combines them: ``ln_vjp+gelu_vjp``),
              the prototypes of what jnn could do
  PyTorch Nt  a nanoGPT-style eager model written here (fused QKV Linear, F.scaled_dot_product_attention,
              exact GELU, tied head), torch.optim.AdamW (foreach), clip_grad_norm_, on N threads
              (one contender per ``--torch-threads`` entry)

All start from the same initial values (jnn's init, copied), so the first losses agree.
ms per step at three sizes (``--sizes``), medians of interleaved calls of ``--steps`` steps.
``--val-steps N`` then trains N steps of jnn and PyTorch on Tiny Shakespeare (JNN_DATA_DIR) and
prints both validation losses.

On a loaded machine, time one core's CPU time instead of wall time (steady within a few %):

    python benchmarks/gpt_vs_torch.py [--sizes 0.8M,3M,10M] [--variants ln_vjp,ln_vjp+gelu_vjp] [--val-steps 2000]
    taskset -c 1 python benchmarks/gpt_vs_torch.py --torch-threads 1 --cpu-time --variants ln_vjp
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import time

import jax
import jax.flatten_util
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


def jnn_step(model, opt, options=None):
    step = jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={})
    return jax.jit(step, compiler_options=options) if options else jax.jit(step)


# ---------------------------------------------------------------- raw JAX (and its variants)

VARIANTS = {
    "fused_qkv": "one [F, 3F] product for queries, keys and values",
    "einsum_attn": "attention written as einsums over [B, T, N, H] (no dot_product_attention)",
    "heads_major": "q, k, v produced as [B, N, T, H] by the projection einsum; scores without transposes",
    "one_pass_ln": "layer norm statistics in one pass: var = E[x^2] - E[x]^2",
    "onehot": "token embedding as one_hot(tokens) @ table: the gradient is a product, not a scatter-add",
    "manual_ce": "cross-entropy as logsumexp - logit of the label, the label picked by a one-hot product",
    "tanh_gelu": "GELU with the tanh approximation (changes the model: for the profile only)",
    "flat_adam": "clip + AdamW over one flat float32 buffer (params raveled once per step)",
    "cpu_opts": "jnn.train.compiler_options() (YNNPACK dots and reductions, XLA convolutions)",
    "no_ynn": "XLA's own dots (--xla_cpu_experimental_ynn_fusion_type empty)",
    "ln_vjp": "layer norm with a hand-written backward (custom_vjp: dx from xhat, rstd and two means)",
    "ln_barrier": "with ln_vjp: the layer norm's input gradient materialized (optimization_barrier), not re-fused",
    "gelu_vjp": "exact GELU with a hand-written backward (custom_vjp: keeps Phi(x), g * (Phi + x phi))",
    "ln_jvp": "ln_vjp's rule as a custom_jvp (forward-mode too; reverse mode transposes it)",
    "gelu_jvp": "gelu_vjp's rule as a custom_jvp",
    "gelu_jvp_fenced": "gelu_jvp with optimization_barriers on the tangent",
    "ln_jvp_fenced": "ln_jvp with optimization_barriers on the tangent (forward mode kept, gradient materialized)",
    "jnn+ln_vjp, jnn+gelu_vjp, jnn+ln_jvp_fenced, jnn+gelu_jvp_fenced (and '+' of them)":
        "jnn itself with those changes patched in (patched_jnn)",
    "opt:KEY=VALUE": "an XLA compiler option (',' in VALUE written '|')",
}


@jax.custom_vjp
def _ln_core(x):
    mean = jnp.mean(x, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.var(x, -1, keepdims=True) + 1e-5)
    return (x - mean) * rstd


def _ln_core_fwd(x):
    mean = jnp.mean(x, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), -1, keepdims=True) + 1e-5)
    xhat = (x - mean) * rstd
    return xhat, (xhat, rstd)


def _ln_core_bwd(res, g):
    xhat, rstd = res
    return (rstd * (g - jnp.mean(g, -1, keepdims=True) - xhat * jnp.mean(g * xhat, -1, keepdims=True)),)


_ln_core.defvjp(_ln_core_fwd, _ln_core_bwd)


@jax.custom_vjp
def _ln_barrier(x):
    return _ln_core(x)


_ln_barrier.defvjp(lambda x: _ln_core_fwd(x), lambda res, g: (jax.lax.optimization_barrier(_ln_core_bwd(res, g)[0]),))


@jax.custom_vjp
def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
    cdf = 0.5 * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))
    return x * cdf, (x, cdf)


def _gelu_bwd(res, g):
    x, cdf = res
    return (g * (cdf + x * jnp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_jvp
def _ln_jvp(x):
    return _ln_core(x)


@_ln_jvp.defjvp
def _ln_jvp_rule(primals, tangents):
    (x,), (dx,) = primals, tangents
    xhat, (_, rstd) = _ln_core_fwd(x)
    return xhat, rstd * (dx - jnp.mean(dx, -1, keepdims=True) - xhat * jnp.mean(dx * xhat, -1, keepdims=True))


@jax.custom_jvp
def _ln_jvp_fenced(x):
    return _ln_core(x)


@_ln_jvp_fenced.defjvp
def _ln_jvp_fenced_rule(primals, tangents):
    """ln_jvp's rule with the tangent behind an optimization_barrier at both ends: in reverse mode
    the input gradient is materialized (the barrier transposes to a barrier)."""
    (x,), (dx,) = primals, tangents
    xhat, (_, rstd) = _ln_core_fwd(x)
    dx = jax.lax.optimization_barrier(dx)
    out = rstd * (dx - jnp.mean(dx, -1, keepdims=True) - xhat * jnp.mean(dx * xhat, -1, keepdims=True))
    return xhat, jax.lax.optimization_barrier(out)


@jax.custom_jvp
def _gelu_jvp(x):
    return jax.nn.gelu(x, approximate=False)


@_gelu_jvp.defjvp
def _gelu_jvp_rule(primals, tangents):
    (x,), (dx,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))
    return x * cdf, dx * (cdf + x * jnp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def standardize_vjp(x, axes, epsilon):
    """What jnn.layers.norm's ``_standardize`` could be: ``(x - mean) / sqrt(var + epsilon)`` over
    ``axes`` with a hand-written backward."""
    return standardize_fwd(x, axes, epsilon)[0]


def standardize_fwd(x, axes, epsilon):
    mean = lambda a: jnp.mean(a, axis=axes, keepdims=True)
    centered = x - mean(x)
    rstd = jax.lax.rsqrt(mean(jnp.square(centered)) + epsilon)
    return centered * rstd, (centered * rstd, rstd)


def standardize_bwd(axes, epsilon, res, g):
    xhat, rstd = res
    mean = lambda a: jnp.mean(a, axis=axes, keepdims=True)
    return (rstd * (g - mean(g) - xhat * mean(g * xhat)),)


standardize_vjp.defvjp(standardize_fwd, standardize_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def standardize_fenced(x, axes, epsilon):
    """:func:`standardize_vjp` as a custom_jvp (forward mode and higher orders kept) whose tangent
    passes optimization_barriers, so that in reverse mode the input gradient is materialized
    rather than fused whole into every consumer."""
    return standardize_fwd(x, axes, epsilon)[0]


@standardize_fenced.defjvp
def _standardize_fenced_jvp(axes, epsilon, primals, tangents):
    (x,), (dx,) = primals, tangents
    xhat, (_, rstd) = standardize_fwd(x, axes, epsilon)
    mean = lambda a: jnp.mean(a, axis=axes, keepdims=True)
    dx = jax.lax.optimization_barrier(dx)
    return xhat, jax.lax.optimization_barrier(rstd * (dx - mean(dx) - xhat * mean(dx * xhat)))


@contextlib.contextmanager
def patched_jnn(changes):
    """jnn with ``ln_vjp`` (norm._standardize -> :func:`standardize_vjp`) or ``ln_jvp_fenced``
    (-> :func:`standardize_fenced`), and/or ``gelu_vjp`` or ``gelu_jvp_fenced`` (the transformer
    blocks' GELU) swapped in while a model is built and traced: what the port would gain in jnn's
    own program."""
    from jnn.combinators import stateless
    from jnn.layers import norm, transformer
    saved = norm._standardize, transformer.gelu
    for change, fn in (("ln_vjp", standardize_vjp), ("ln_jvp_fenced", standardize_fenced)):
        if change in changes:
            norm._standardize = functools.partial(
                lambda fn, x, axes, epsilon: fn(x, tuple(axes) if isinstance(axes, list) else axes, epsilon), fn)
    for change, fn in (("gelu_vjp", _gelu), ("gelu_jvp_fenced", _gelu_jvp_fenced)):
        if change in changes:
            transformer.gelu = functools.partial(lambda fn, approximate=False, name=None: stateless("gelu", fn, name=name), fn)
    try:
        yield
    finally:
        norm._standardize, transformer.gelu = saved


@jax.custom_jvp
def _gelu_jvp_fenced(x):
    return jax.nn.gelu(x, approximate=False)


@_gelu_jvp_fenced.defjvp
def _gelu_jvp_fenced_rule(primals, tangents):
    (x,), (dx,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))
    slope = cdf + x * jnp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    return x * cdf, jax.lax.optimization_barrier(slope * jax.lax.optimization_barrier(dx))


def _ln(p, x, one_pass):
    if one_pass in ("vjp", "barrier", "jvp", "fenced"):
        return ({"vjp": _ln_core, "barrier": _ln_barrier, "jvp": _ln_jvp, "fenced": _ln_jvp_fenced}[one_pass](x)
                * p["scale"] + p["offset"])
    mean = jnp.mean(x, -1, keepdims=True)
    if one_pass:
        var = jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean)
    else:
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["offset"]


def _attention(a, h, heads, v):
    b, t, f = h.shape
    if "heads_major" in v:
        w = jnp.stack([a[n]["w"] for n in ("query", "key", "value")]).reshape(3, f, heads, f // heads)
        bias = jnp.stack([a[n]["b"] for n in ("query", "key", "value")]).reshape(3, 1, heads, 1, f // heads)
        q, k, vv = jnp.einsum("btf,cfnh->cbnth", h, w) + bias
        s = jnp.einsum("bnth,bnsh->bnts", q, k) / math.sqrt(f // heads)
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -1e30)
        o = jnp.einsum("bnts,bnsh->btnh", jax.nn.softmax(s, -1), vv).reshape(b, t, f)
        return o @ a["out"]["w"] + a["out"]["b"]
    if "fused_qkv" in v:
        w = jnp.concatenate([a[n]["w"] for n in ("query", "key", "value")], 1)
        bias = jnp.concatenate([a[n]["b"] for n in ("query", "key", "value")])
        q, k, vv = jnp.split((h @ w + bias).reshape(b, t, 3 * heads, -1), 3, axis=2)
    else:
        q, k, vv = ((h @ a[n]["w"] + a[n]["b"]).reshape(b, t, heads, -1) for n in ("query", "key", "value"))
    if "einsum_attn" in v:
        s = jnp.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(f // heads)
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -1e30)
        o = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, -1), vv)
    else:
        o = jax.nn.dot_product_attention(q, k, vv, is_causal=True)
    return o.reshape(b, t, f) @ a["out"]["w"] + a["out"]["b"]


def raw_forward(params, tokens, heads, v=frozenset()):
    """The GPT of :func:`jnn_model` written out in jax.numpy over jnn's params; ``v``: VARIANTS names."""
    table = params["embedding"]["embedding"]
    f = table.shape[1]
    if "onehot" in v:
        x = jax.nn.one_hot(tokens, table.shape[0], dtype=table.dtype) @ table
    else:
        x = jnp.take(table, tokens, axis=0)
    x = x * math.sqrt(f) + params["position"]["embedding"][: tokens.shape[1]]
    one_pass = ("barrier" if "ln_barrier" in v else "vjp" if "ln_vjp" in v else "jvp" if "ln_jvp" in v
                else "fenced" if "ln_jvp_fenced" in v else "one_pass_ln" in v)
    for i in range(sum(k.startswith("block_") for k in params)):
        p = params[f"block_{i}"]
        x = x + _attention(p["attention"], _ln(p["norm_0"], x, one_pass), heads, v)
        m = p["mlp"]
        h = _ln(p["norm_1"], x, one_pass) @ m["dense_0"]["w"] + m["dense_0"]["b"]
        h = (_gelu(h) if "gelu_vjp" in v else _gelu_jvp(h) if "gelu_jvp" in v
             else _gelu_jvp_fenced(h) if "gelu_jvp_fenced" in v else jax.nn.gelu(h, approximate="tanh_gelu" in v))
        x = x + h @ m["dense_1"]["w"] + m["dense_1"]["b"]
    return _ln(params["final_norm"], x, one_pass) @ table.T


def raw_loss(params, x, y, heads, v):
    logits = raw_forward(params, x, heads, v)
    if "manual_ce" in v:
        picked = jnp.sum(logits * jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype), -1)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))


def raw_step(heads, opt, v=frozenset()):
    """A jitted ``((params, opt_state), x, y) -> ((params, opt_state), loss)``; ``v``: VARIANTS names."""
    def step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(raw_loss)(params, x, y, heads, v)
        if "flat_adam" in v:
            flat, unravel = jax.flatten_util.ravel_pytree(params)
            gflat = jax.flatten_util.ravel_pytree(grads)[0]
            updates, opt_state = opt.update(gflat, opt_state, flat)
            return (unravel(flat + updates), opt_state), loss
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    options = dict(jnn.train.compiler_options()) if "cpu_opts" in v else {}
    if "no_ynn" in v:
        options["xla_cpu_experimental_ynn_fusion_type"] = ""
    for key, value in (part[4:].replace("|", ",").split("=", 1) for part in v if part.startswith("opt:")):
        options[key] = {"true": True, "false": False}.get(value, value)
    return jax.jit(step, compiler_options=options) if options else jax.jit(step)


def flat_recipe(params, total):
    """The recipe's optimizer over one flat buffer (the decay mask raveled like the params)."""
    mask = jax.flatten_util.ravel_pytree(jax.tree.map(lambda m, p: jnp.full(p.shape, m, p.dtype),
                                                      jnn.tree.mask(params), params))[0] > 0
    decay = optax.stateless(lambda updates, params: updates + 0.1 * jnp.where(mask, params, 0))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.9, b2=0.99), decay,
                       optax.scale_by_learning_rate(_schedule(total)))


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

def contenders(size, xs, ys, variants, torch_threads, total=2000):
    """Zero-argument runners (each runs len(xs) steps and blocks) and the first-step losses."""
    import torch
    layers, width, heads = SIZES[size]
    model = jnn_model(layers, width, heads)
    opt = optax_recipe(total)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.asarray(xs[0]))
    params = ts.params
    jx, jy = [jnp.asarray(a) for a in xs], [jnp.asarray(a) for a in ys]
    first, fns = {}, {}

    def jnn_runner(step):
        box = {"ts": ts}
        first_loss = float(step(ts, (jx[0], jy[0]))[1]["loss"])

        def run():
            t = box["ts"]
            for x, y in zip(jx, jy):
                t, _ = step(t, (x, y))
            box["ts"] = block(t)
        return run, first_loss

    fns["jnn"], first["jnn"] = jnn_runner(jnn_step(model, opt))
    if "jnn+opts" in variants:
        fns["jnn+opts"], first["jnn+opts"] = jnn_runner(jnn_step(model, opt, jnn.train.compiler_options()))
    for name in [v for v in variants if v.startswith("jnn+") and v != "jnn+opts"]:
        with patched_jnn(name.split("+")[1:]):    # traced and compiled here, inside the patch
            fns[name], first[name] = jnn_runner(jnn_step(jnn_model(layers, width, heads), opt))

    def raw_runner(v):
        step = raw_step(heads, opt, v)
        carry = (params, opt.init(params))
        if "flat_adam" in v:
            flat = jax.flatten_util.ravel_pytree(params)[0]
            flat_opt = flat_recipe(params, total)
            step = raw_step(heads, flat_opt, v)
            carry = (params, flat_opt.init(flat))
        box = {"c": carry}
        first_loss = float(step(carry, jx[0], jy[0])[1])

        def run():
            c = box["c"]
            for x, y in zip(jx, jy):
                c, _ = step(c, x, y)
            box["c"] = block(c)
        return run, first_loss

    fns["raw JAX"], first["raw JAX"] = raw_runner(frozenset())
    for name in variants:
        if not name.startswith("jnn+"):
            unknown = [part for part in name.split("+") if part not in VARIANTS and not part.startswith("opt:")]
            assert not unknown, f"unknown variants {unknown}: choose from {list(VARIANTS)}"
            fns[f"raw+{name}"], first[f"raw+{name}"] = raw_runner(frozenset(name.split("+")))

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


def time_sizes(sizes, steps, repeats, variants, torch_threads, data, clock=time.perf_counter):
    lines = []
    for size in sizes:
        xs, ys = random_batches(data, steps, seed=1)
        fns, first = contenders(size, xs, ys, variants, torch_threads)
        n_params = sum(math.prod(s) for s in _param_shapes(size))
        times = time_interleaved(fns, repeats=repeats, clock=clock)
        ms = {k: v / steps * 1e3 for k, v in times.items()}
        torch_ms = min([v for k, v in ms.items() if k.startswith("PyTorch")] or [float("nan")])
        lines.append(f"size {size} ({n_params / 1e6:.2f}M params): ms per step (median of {repeats} interleaved "
                     f"calls of {steps} steps), ratio to the faster PyTorch, to raw JAX; first-step loss")
        for name, value in ms.items():
            lines.append(f"  {name:28s} {value:8.2f} ms  {value / torch_ms:5.2f}x torch  "
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
    parser.add_argument("--variants", default="",
                        help="extra contenders: jnn+opts and raw JAX variants (names of VARIANTS, '+' combines)")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", default="1,2", help="PyTorch contenders: one per thread count")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time this process's CPU time, not wall time (for one-core runs: taskset -c 0 "
                             "... --torch-threads 1 --cpu-time)")
    parser.add_argument("--val-steps", type=int, default=0)
    parser.add_argument("--val-size", default="0.8M")
    args = parser.parse_args(argv)
    print(machine(), f"; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    variants = [v for v in args.variants.split(",") if v]
    try:
        data = shakespeare_ids()[0]
    except Exception as error:   # noqa: BLE001 - no data: random tokens time the same
        print(f"(random tokens: {error})")
        data = np.random.default_rng(0).integers(0, VOCAB, 100_000).astype(np.int32)
    threads = [int(t) for t in args.torch_threads.split(",") if t]
    lines = time_sizes([s for s in args.sizes.split(",") if s], args.steps, args.repeats, variants, threads, data,
                       time.process_time if args.cpu_time else time.perf_counter)
    if args.val_steps:
        line = val_loss_run(args.val_size, args.val_steps, threads[-1])
        print(line, flush=True)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
