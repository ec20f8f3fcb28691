"""Where the small GPT's train step spends its time on CPU: jnn (XLA) against PyTorch eager.

jnn: the step of benchmarks/gpt_vs_torch.py, traced with ``jax.profiler`` (a Perfetto trace: one
event per XLA thunk, i.e. per fusion, dot or copy). Each thunk is looked up in the compiled HLO:
its kind from the operations inside it (a ``dot`` makes it a matrix product, only
copies/transposes/concatenates make it data movement, a ``reduce`` a reduction, ...), and the
part of the model from the Python source the operations came from (the stack frames XLA keeps:
optax -> optimizer, norm.py -> layer norm, attention -> attention, ...), forward or backward
from the op name (``transpose(jvp(...))`` is the backward pass). Host work: a jitted call that
takes and returns the whole train state and computes nothing.

PyTorch: the same step under ``torch.profiler``, self CPU time per aten operation, grouped the
same way.

Times per step are trimmed means over ``--steps`` steps (each operation's longest 20% of
occurrences left out: on a loaded machine a preempted thread shows as one very long operation).
Shares are of the summed operation times; with two threads operations may overlap, so run it on
one core (``taskset -c 0``, ``--torch-threads 1``) for shares that add up.

    taskset -c 0 python benchmarks/profile_gpt.py [--size 0.8M] [--steps 20] [--top 15] [--raw]
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt_vs_torch as gpt  # noqa: E402
from common import block, machine  # noqa: E402

# (file fragment, part of the model), first match of the innermost frames wins
PARTS = [("optax/", "optimizer"), ("flatten_util", "optimizer"), ("jnn/layers/norm.py", "layer norm"),
         ("_ln", "layer norm"), ("attention", "attention"), ("activations.py", "GELU"), ("gelu", "GELU"),
         ("combinators.py:stateless", "GELU"),
         ("losses", "loss"), ("raw_loss", "loss"), ("embedding.py", "embedding"), ("stack.py", "embedding"),
         ("basic.py", "dense"), ("raw_forward", "dense"), ("transformer.py", "block")]
MOVES = {"copy", "transpose", "bitcast", "concatenate", "slice", "parameter", "broadcast", "reshape",
         "dynamic-slice", "dynamic-update-slice", "constant", "tuple", "get-tuple-element", "pad"}


def hlo_tables(text: str):
    """``(instructions, computations, frames)`` of a compiled HLO module's text: the entry's
    instructions ``name -> (opcode, called computation, op_name, frame id)``; every computation's
    ``[(opcode, op_name, frame id)]``; stack frames ``id -> [file:function, ...]`` innermost first."""
    sections = {}
    for title in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
        match = re.search(rf"^{title}\n((?:\d+ .*\n)+)", text, re.M)
        sections[title] = dict(re.findall(r"^(\d+) (.*)$", match.group(1), re.M)) if match else {}
    files, funcs = sections["FileNames"], sections["FunctionNames"]
    locations = {k: re.search(r"file_name_id=(\d+) function_name_id=(\d+)", v).groups()
                 for k, v in sections["FileLocations"].items()}
    parents = {k: re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", v).groups()
               for k, v in sections["StackFrames"].items()}

    def chain(frame):
        out, seen = [], set()
        while frame in parents and frame not in seen:
            seen.add(frame)
            loc, parent = parents[frame]
            file_id, func_id = locations[loc]
            out.append(f"{files[file_id].strip(chr(34))}:{funcs[func_id].strip(chr(34))}")
            frame = parent
        return out

    frames = {k: chain(k) for k in parents}
    computations, entry, current = {}, {}, None
    line_re = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%([\w.\-]+) .*\{$", line)
        if head:
            current = "ENTRY" if head.group(1) else head.group(2)
            computations[current] = []
            continue
        m = line_re.match(line) if current else None
        if not m:
            continue
        name, opcode, rest = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        called = re.search(r"calls=%([\w.\-]+)", rest)
        record = (opcode, op_name.group(1) if op_name else "", frame.group(1) if frame else None)
        computations[current].append(record)
        if current == "ENTRY":
            entry[name] = (opcode, called.group(1) if called else None, record[1], record[2])
    return entry, computations, frames


def describe(name, entry, computations, frames):
    """``(kind, part, pass)`` of one entry instruction (a thunk)."""
    opcode, called, op_name, frame = entry.get(name, ("?", None, "", None))
    inner = computations.get(called, []) if called else [(opcode, op_name, frame)]
    ops = {op for op, _, _ in inner}
    if "dot" in ops or opcode == "dot":
        kind = "matmul"
    elif ops & {"scatter"}:
        kind = "scatter"
    elif ops & {"gather"}:
        kind = "gather"
    elif ops <= MOVES:
        kind = "copy/transpose"
    elif ops & {"reduce", "reduce-window"}:
        kind = "reduction"
    elif ops & {"custom-call", "while", "call", "conditional"}:
        kind = "other"
    else:
        kind = "elementwise"
    votes = collections.Counter()
    backward = 0
    for op, name_, fr in inner:
        if op in ("parameter", "constant", "bitcast"):
            continue
        backward += "transpose(" in name_
        for where in frames.get(fr, [])[:6]:
            part = next((p for frag, p in PARTS if frag in where), None)
            if part:
                votes[part] += 1
                break
    part = votes.most_common(1)[0][0] if votes else "other"
    real = sum(op not in ("parameter", "constant", "bitcast") for op, _, _ in inner)
    return kind, part, "backward" if part != "optimizer" and backward * 2 >= max(real, 1) else "forward"


def trimmed(durations, steps, drop=0.2):
    """Microseconds per step from every occurrence's duration, the longest ``drop`` share left
    out (a thread preempted by other load shows as one very long operation)."""
    kept = sorted(durations)[: max(1, int(round(len(durations) * (1 - drop))))]
    return sum(kept) / len(kept) * len(durations) / steps


def trace_thunks(fn, steps):
    """Microseconds per step of each thunk that ``fn()`` (one step, blocking) runs (:func:`trimmed`)."""
    with tempfile.TemporaryDirectory() as out:
        jax.profiler.start_trace(out, create_perfetto_trace=True)
        for _ in range(steps):
            fn()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{out}/**/*.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    durations = collections.defaultdict(list)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith("$") and not name.startswith("ThunkExecutor"):
            durations[name].append(e.get("dur", 0))
    return {name: trimmed(d, steps) for name, d in durations.items()}


def jax_profile(size, steps, raw):
    layers, width, heads = gpt.SIZES[size]
    xs, ys = gpt.random_batches(gpt.shakespeare_ids()[0], 1)
    x, y = jnp.asarray(xs[0]), jnp.asarray(ys[0])
    model, opt = gpt.jnn_model(layers, width, heads), gpt.optax_recipe(2000)
    ts = jax.device_put(gpt.jnn.train.init_train_state(model, opt, jax.random.key(0), x))
    if raw:
        step = gpt.raw_step(heads, opt)
        state, call = {"c": (ts.params, opt.init(ts.params))}, None
        call = lambda s: step(s, x, y)[0]
        state = state["c"]
        compiled = step.lower(state, x, y).compile()
    else:
        step = gpt.jnn_step(model, opt)
        call = lambda s: step(s, (x, y))[0]
        state = ts
        compiled = step.lower(state, (x, y)).compile()
    box = {"s": state}

    def one():
        box["s"] = block(call(box["s"]))

    for _ in range(3):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    wall = (time.perf_counter() - start) / steps * 1e3
    thunks = trace_thunks(one, steps)
    entry, computations, frames = hlo_tables(compiled.as_text())
    noop = jax.jit(lambda s, b: s)
    block(noop(box["s"], (x, y)))
    start = time.perf_counter()
    for _ in range(20):
        block(noop(box["s"], (x, y)))
    host = (time.perf_counter() - start) / 20 * 1e3
    return wall, host, {name: (us, describe(name, entry, computations, frames))
                        for name, us in thunks.items() if name in entry}


TORCH_GROUPS = [  # (substring of the aten name, (kind, part)), first match wins
    ("flash_attention", ("attention kernel", "attention")), ("scaled_dot_product", ("attention kernel", "attention")),
    ("_foreach", ("elementwise", "optimizer")), ("adam", ("elementwise", "optimizer")),
    ("embedding", ("gather/scatter", "embedding")), ("index_select", ("gather/scatter", "embedding")),
    ("index_add", ("gather/scatter", "embedding")), ("layer_norm", ("reduction", "layer norm")),
    ("gelu", ("elementwise", "GELU")), ("log_softmax", ("reduction", "loss")), ("nll_loss", ("reduction", "loss")),
    ("mm", ("matmul", "dense")), ("linear", ("matmul", "dense")), ("matmul", ("matmul", "dense")),
    ("copy_", ("copy/transpose", "other")), ("clone", ("copy/transpose", "other")),
    ("contiguous", ("copy/transpose", "other")), ("norm", ("reduction", "optimizer")),
    ("sum", ("reduction", "other")), ("fill_", ("elementwise", "other")), ("zero", ("elementwise", "other")),
]


def torch_profile(size, steps, threads):
    import torch
    from torch.profiler import ProfilerActivity, profile
    layers, width, heads = gpt.SIZES[size]
    model = gpt.jnn_model(layers, width, heads)
    params = model.init(jax.random.key(0), jnp.zeros((gpt.BATCH, gpt.SEQ), jnp.int32))[0]
    net = gpt.torch_model(jax.device_get(params), heads, threads)
    train = gpt.torch_trainer(net, 2000)
    xs, ys = gpt.random_batches(gpt.shakespeare_ids()[0], 1)
    x, y = torch.from_numpy(xs[0].astype(np.int64)), torch.from_numpy(ys[0].astype(np.int64))
    for _ in range(3):
        train(x, y).item()
    start = time.perf_counter()
    for _ in range(steps):
        train(x, y).item()
    wall = (time.perf_counter() - start) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train(x, y).item()
    durations = collections.defaultdict(list)
    for event in prof.events():
        durations[event.name].append(event.self_cpu_time_total)
    rows = {}
    for key, d in durations.items():
        us = trimmed(d, steps)
        if us <= 0:
            continue
        group = next((g for frag, g in TORCH_GROUPS if frag in key.lower()), ("other", "other"))
        rows[key] = (us, (*group, "backward" if "backward" in key.lower() else "forward/other"))
    return wall, rows


def table(title, rows, wall, host=None, top=15):
    """Shares by kind, by part of the model and the ``top`` operations."""
    total = sum(us for us, _ in rows.values())
    lines = [f"{title}: wall {wall:.2f} ms per step; operations sum {total / 1e3:.2f} ms"
             + (f"; host dispatch of the train state (jitted no-op) {host:.2f} ms" if host is not None else "")]
    for label, index in (("kind", 0), ("part", 1), ("pass", 2)):
        by = collections.Counter()
        for us, desc in rows.values():
            by[desc[index]] += us
        lines.append(f"  by {label}: " + ", ".join(f"{k} {v / 1e3:.2f} ms ({100 * v / total:.0f}%)"
                                                   for k, v in by.most_common()))
    by = collections.Counter()
    for us, desc in rows.values():
        by[f"{desc[1]} {desc[0]}"] += us
    lines.append("  by part and kind: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in by.most_common(12)))
    lines.append(f"  top {top} operations:")
    for name, (us, desc) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"    {us / 1e3:7.3f} ms {100 * us / total:5.1f}%  {name[:40]:40s} {' / '.join(desc)}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.8M", choices=list(gpt.SIZES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--raw", action="store_true", help="profile the raw JAX step instead of jnn's")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args(argv)
    print(machine(), f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    wall, host, rows = jax_profile(args.size, args.steps, args.raw)
    name = "raw JAX" if args.raw else "jnn"
    lines = table(f"{name} (XLA CPU), size {args.size}", rows, wall, host, args.top)
    if not args.skip_torch:
        wall, rows = torch_profile(args.size, args.steps, args.torch_threads)
        lines += table(f"PyTorch eager ({args.torch_threads} threads), size {args.size}", rows, wall, top=args.top)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
