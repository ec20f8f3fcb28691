"""Where two models part ways: each layer's output, output cotangent and param gradient side by side.

:func:`models` runs two sides on one input (the same model with two param sets or dtypes, two versions
of a model with the same param structure, or a model against reference outputs such as PyTorch's
forward hooks) and reports, per layer path, the max abs / relative error forward and backward, and
the first layer over tolerance each way. Layers inside ``jnn.repeat``'s scan are unrolled and
numbered ``path#i``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import core

__all__ = ["models", "Comparison"]


class Row(NamedTuple):
    """One layer of a :class:`Comparison`: ``(max abs, max relative)`` error of its output
    (``forward``), its output's cotangent and its params' gradient, ``None`` where not compared."""

    kind: str
    forward: tuple | None
    cotangent: tuple | None
    grad: tuple | None
    note: str = ""


class Comparison(NamedTuple):
    """What :func:`models` found: ``rows`` ``{path: Row}`` in execution order, and the first path
    over tolerance forward (execution order) and backward (reverse order), or ``None``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> found = jnn.compare.models((jnn.relu(), {}, {}), {"": jnp.zeros(2)}, jnp.ones(2))
      >>> found.first_forward, found.rows[""].forward
      ('', (1.0, 1.0))
    """

    rows: dict
    first_forward: str | None
    first_backward: str | None
    atol: float
    rtol: float

    def __str__(self) -> str:
        cell = lambda e: "" if e is None else f"{e[0]:9.2e} {e[1]:9.2e}"
        head = f"{'layer':<40} {'kind':<12} {'out abs':>9} {'out rel':>9} {'cot abs':>9} {'cot rel':>9} " \
               f"{'grad abs':>9} {'grad rel':>9}"
        lines = [head]
        for path, r in self.rows.items():
            mark = (" <- forward" if path == self.first_forward else "") + (
                " <- backward" if path == self.first_backward else "")
            lines.append(f"{path or '<model>':<40} {r.kind:<12} {cell(r.forward):>19} {cell(r.cotangent):>19} "
                         f"{cell(r.grad):>19}{mark} {r.note}".rstrip())
        return "\n".join(lines)


def _error(a, b, atol, rtol):
    """``(max abs, max rel)`` of ``b`` against ``a`` (lists of arrays) and whether it is over tolerance;
    a non-finite value where the other side has another value counts as an infinite error."""
    if len(a) != len(b) or any(np.shape(u) != np.shape(v) for u, v in zip(a, b)):
        return (np.inf, np.inf), True, f"shapes {[np.shape(u) for u in a]} vs {[np.shape(v) for v in b]}"
    worst, scale = 0.0, 0.0
    for u, v in zip(a, b):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        if u.size == 0:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            gap = np.where((u == v) | (np.isnan(u) & np.isnan(v)), 0.0, np.abs(u - v))
        worst = max(worst, float(np.nan_to_num(gap, nan=np.inf, posinf=np.inf).max()))
        finite = np.abs(u[np.isfinite(u)])
        scale = max(scale, float(finite.max()) if finite.size else 0.0)
    rel = worst / scale if scale else (0.0 if worst == 0 else np.inf)
    return (worst, rel), worst > atol + rtol * scale, ""


def _evaluate(jaxpr, consts, args, extra: dict):
    """``jax.core.eval_jaxpr`` that adds ``extra[v]`` to each variable ``v`` it defines (a probe)."""
    env = {}
    read = lambda v: v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    def write(v, value):
        env[v] = value + extra[v] if v in extra else value

    for v, value in [*zip(jaxpr.constvars, consts), *zip(jaxpr.invars, args)]:
        write(v, value)
    for eqn in jaxpr.eqns:
        with eqn.ctx.manager:
            out = eqn.primitive.bind(*map(read, eqn.invars), **eqn.primitive.get_bind_params(eqn.params))
        for v, value in zip(eqn.outvars, out if eqn.primitive.multiple_results else (out,)):
            write(v, value)
    return [read(v) for v in jaxpr.outvars]


def _run(model, params, state, x, key, train, loss):
    """``{path: (kind, output leaves, cotangent leaves, param-gradient leaves)}`` of one side (the
    model's own output at ``""``): traced with ``lax.scan`` unrolled (``disable_jit``), each recorded
    output and param leaf given a zero probe whose gradient is its cotangent."""
    records = []

    def forward(params, x):
        with core.recording() as found:
            y, _ = model.apply(params, state, x, key=key, train=train)
        found.append(("", model.kind, y, params))   # the model's own output: path ""
        outer = getattr(jax.tree_util.tree_leaves(x)[0], "_trace", None)   # remat's inner tracers stay inside
        found = [r for r in found if all(getattr(a, "_trace", outer) is outer for a in jax.tree_util.tree_leaves(r[2]))]
        records[:] = [(path, kind) for path, kind, _, _ in found]
        return y, [r[2] for r in found], [r[3] for r in found]

    with jax.disable_jit():
        closed, shapes = jax.make_jaxpr(forward, return_shape=True)(params, x)
    y_tree = jax.tree_util.tree_structure(shapes[0])
    sizes = [len(jax.tree_util.tree_leaves(t)) for t in (shapes[0], *shapes[1], *shapes[2])]
    bounds = np.cumsum([0, *sizes])
    outvars = closed.jaxpr.outvars
    probes = list(dict.fromkeys(v for v in outvars[bounds[1]:] if isinstance(v, jax.extend.core.Var)
                                and jnp.issubdtype(v.aval.dtype, jnp.inexact) and loss is not None))
    loss = (lambda y: jnp.zeros(())) if loss is None else loss   # None: forward only
    flat = jax.tree_util.tree_leaves((params, x))

    def objective(deltas):
        outs = _evaluate(closed.jaxpr, closed.consts, flat, dict(zip(probes, deltas)))
        return loss(jax.tree_util.tree_unflatten(y_tree, outs[:sizes[0]])), outs

    zeros = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in probes]
    (_, outs), cotangents = jax.jit(jax.value_and_grad(objective, has_aux=True))(zeros)
    cot = dict(zip(probes, cotangents))
    got = lambda j: cot.get(outvars[j]) if isinstance(outvars[j], jax.extend.core.Var) else None
    piece = lambda i: range(bounds[i], bounds[i + 1])
    n, result = len(records), {}
    paths = [path for path, _ in records]
    for i, (path, kind) in enumerate(records):
        if paths.count(path) > 1:   # a layer run once per scanned copy, or a child applied twice
            path = f"{path}#{paths[:i].count(path)}"
        result[path] = (kind, [outs[j] for j in piece(1 + i)],
                        [jnp.zeros_like(outs[j]) if got(j) is None else got(j) for j in piece(1 + i)],
                        [got(j) for j in piece(1 + n + i) if got(j) is not None])
    return dict(zip(result, jax.device_get(list(result.values()))))


def _side(where: str, side, x, key, train, loss):
    if isinstance(side, Mapping):
        return {path: (None, jax.tree_util.tree_leaves(out), None, None) for path, out in side.items()}
    if not (isinstance(side, tuple) and len(side) in (3, 4) and isinstance(side[0], core.Layer)):
        raise TypeError(f"{where}: a side is (model, params, state), (model, params, state, dtype) or a "
                        f"{{path: output}} dict of reference outputs, got {type(side).__name__}")
    model, params, state, *dtype = side
    if dtype:   # the floating leaves of params, state and input in that dtype
        cast = lambda a: a.astype(dtype[0]) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
        params, state, x = jax.tree_util.tree_map(cast, (params, state, x))
    return _run(model, params, state, x, key, train, loss)


def _projection(seed: int) -> Callable:
    """The default loss: the output's floating leaves (as float32) against fixed normal draws, so
    both sides start the backward pass from the same cotangent."""
    def loss(y):
        leaves = [a for a in jax.tree_util.tree_leaves(y) if jnp.issubdtype(a.dtype, jnp.inexact)]
        keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
        return sum(jnp.sum(a.astype(jnp.float32) * jax.random.normal(k, a.shape)) for a, k in zip(leaves, keys))
    return loss


def models(a, b, x, *, key=None, train: bool = False, loss: Callable | None = None, atol: float = 1e-5,
           rtol: float = 1e-4, seed: int = 0) -> Comparison:
    """Runs sides ``a`` (the reference) and ``b`` on input ``x`` and compares them layer by layer.

    A side is ``(model, params, state)``, ``(model, params, state, dtype)`` (floating params, state
    and input cast to ``dtype``, e.g. ``jnp.bfloat16``), or ``{path: output}`` reference outputs
    (forward only). Backward: cotangents of each layer's output and gradients of its params under
    ``loss(y) -> scalar`` (default: a fixed random projection of ``y``). An error is over tolerance
    when ``max abs > atol + rtol * max|reference|``. Returns a :class:`Comparison` (``print`` it).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> make = lambda eps: jnn.serial(jnn.dense(4), jnn.layer_norm(), jnn.dense(4), jnn.layer_norm(epsilon=eps))
      >>> params, state = make(1e-5).init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> found = jnn.compare.models((make(1e-5), params, state), (make(1.0), params, state), jnp.ones((2, 3)))
      >>> found.first_forward, found.rows["dense_1"].forward
      ('layer_norm_1', (0.0, 0.0))
    """
    loss = None if isinstance(a, Mapping) or isinstance(b, Mapping) else _projection(seed) if loss is None else loss
    sides = [_side("jnn.compare.models", s, x, key, train, loss) for s in (a, b)]
    rows, forward, backward, nothing = {}, [], [], (None,) * 4
    for path in [*sides[0], *(p for p in sides[1] if p not in sides[0])]:
        (kind, *parts_a), (kind_b, *parts_b) = sides[0].get(path, nothing), sides[1].get(path, nothing)
        cells = [None if u is None or v is None or not (u or v) else _error(u, v, atol, rtol)
                 for u, v in zip(parts_a, parts_b)]
        note = ("only in a" if path not in sides[1] else "only in b" if path not in sides[0] else
                " ".join(c[2] for c in cells if c and c[2]))
        rows[path] = Row(kind or kind_b or "", *(c and c[0] for c in cells), note)
        forward += [path] if cells[0] and cells[0][1] else []
        backward += [path] if any(c and c[1] for c in cells[1:]) else []
    return Comparison(rows, forward[0] if forward else None, backward[-1] if backward else None, atol, rtol)
