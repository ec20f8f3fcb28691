"""A :class:`~jnn.layers.cells.Cell` scanned over time ``[B, T, F]``; with ``lengths`` ``[B]``, outputs past
``lengths[b]`` are zero, the carry is the last valid step's, and ``reverse`` reads the valid part backwards."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Children, Layer, shape_of
from jnn.layers.cells import Cell

__all__ = ["run", "recurrent", "bidirectional"]


def _cell(label: str, what: str, cell) -> Cell:
    if not isinstance(cell, Cell):
        hint = " (did you forget to call it, e.g. lstm_cell(64)?)" if callable(cell) else ""
        raise TypeError(f"{label}: expected a Cell (rnn_cell, lstm_cell, gru_cell), got {type(cell).__name__}{hint}")
    return cell


_unroll = checks.positive_int_or(True, described="True")


def _check_input(label: str, x, rank_ok: bool, shape: str, hint: str = "") -> None:
    checks.require(rank_ok and jnp.issubdtype(x.dtype, jnp.floating), label, f"expected a floating input of "
                   f"shape {shape}, got {x.dtype} of shape {tuple(x.shape)}{hint}")


def _reverse_valid(xs: jax.Array, lengths: jax.Array) -> jax.Array:
    """Time-major ``xs: [T, *batch, ...]`` with each sequence's first ``lengths`` steps reversed."""
    T = xs.shape[0]
    t = jnp.arange(T, dtype=lengths.dtype).reshape((T,) + (1,) * lengths.ndim)
    idx = jnp.where(t < lengths, lengths - 1 - t, t)
    return jnp.take_along_axis(xs, idx.reshape(idx.shape + (1,) * (xs.ndim - idx.ndim)), axis=0)


def _run(label, cell, params, x, lengths, reverse, initial_carry, unroll):
    x = jnp.asarray(x)
    _check_input(label, x, x.ndim >= 2, "[..., time, features]", " (embed integer ids first)")
    batch = x.shape[:-2]
    cast = lambda a: a.astype(x.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    params = jax.tree_util.tree_map(cast, params)
    carry = cell.initial_carry(batch, x.dtype) if initial_carry is None else initial_carry
    carry = jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(x.dtype), carry)
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        checks.require(lengths.shape == batch and jnp.issubdtype(lengths.dtype, jnp.integer), label, f"expected "
                       f"integer lengths of shape {batch} (one per sequence), got {lengths.dtype} of shape "
                       f"{tuple(lengths.shape)}")
    return _scan(cell, reverse, unroll, params, carry, x, lengths)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _scan(cell, reverse, unroll, params, carry, x, lengths):
    # compiled once per (cell, shapes) for eager calls; inlined under jit
    xs = jnp.moveaxis(x, -2, 0)
    if lengths is None:
        carry, ys = jax.lax.scan(lambda c, x_t: cell.step(params, c, x_t), carry, xs,
                                 reverse=reverse, unroll=unroll)
        return jnp.moveaxis(ys, 0, -2), carry
    T = xs.shape[0]
    lengths = jnp.clip(lengths, 0, T)
    xs = _reverse_valid(xs, lengths) if reverse else xs

    def body(carry, inputs):
        x_t, t = inputs
        new, y = cell.step(params, carry, x_t)
        valid = t < lengths
        keep = lambda a: valid.reshape(valid.shape + (1,) * (a.ndim - valid.ndim))
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(keep(n), n, o), new, carry)
        return new, jnp.where(keep(y), y, jnp.zeros_like(y))

    carry, ys = jax.lax.scan(body, carry, (xs, jnp.arange(T, dtype=lengths.dtype)), unroll=unroll)
    ys = _reverse_valid(ys, lengths) if reverse else ys
    return jnp.moveaxis(ys, 0, -2), carry


@checks.declare(cell=_cell, unroll=_unroll)
def run(cell: Cell, params, x: jax.Array, *, lengths: jax.Array | None = None,
        reverse: bool = False, initial_carry=None, unroll: int | bool = 1):
    """``(outputs [*batch, T, H], final_carry)`` of ``cell`` over ``x: [*batch, T, F]`` (under :func:`recurrent`).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> cell = jnn.gru_cell(3)
      >>> ys, h = run(cell, cell.init(jax.random.key(0), 2), jnp.ones((4, 5, 2)), lengths=jnp.array([5, 3, 1, 0]))
      >>> ys.shape, h.shape, bool((ys[1, 3:] == 0).all()), bool(jnp.allclose(h[1], ys[1, 2]))
      ((4, 5, 3), (4, 3), True, True)
    """
    return _run("run", cell, params, x, lengths, reverse, initial_carry, unroll)


@checks.declare(cell=_cell, return_sequences=checks.flag, reverse=checks.flag, unroll=_unroll)
def recurrent(cell: Cell, *, return_sequences: bool = True, reverse: bool = False,
              unroll: int | bool = 1, name: str | None = None) -> Layer:
    """``[B, T, F] -> [B, T, H]``, or the last step processed ``[B, H]`` if not ``return_sequences``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(recurrent(jnn.gru_cell(8)), recurrent(jnn.gru_cell(4), return_sequences=False))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((2, 7, 3)))
      >>> sorted(params), model.apply(params, state, jnp.ones((2, 7, 3)))[0].shape
      (['gru_0', 'gru_1'], (2, 4))
    """
    return _recurrent(name or cell.kind, name, cell, return_sequences, reverse, unroll)


def _recurrent(label, name, cell, return_sequences, reverse, unroll) -> Layer:
    def check(x):
        _check_input(label, x, x.ndim == 3, "[batch, time, features]")

    def init(key, example):
        x = shape_of(example)
        check(x)
        return cell.init(key, x.shape[-1], initializers.param_dtype(x.dtype)), {}

    def apply(params, state, x, *, key=None, train=False, lengths=None):
        check(x)
        w = params.get("input", {}).get("w") if isinstance(params, dict) else None
        if w is not None:
            checks.width(label, x, w.shape[0], "[batch, time, {}]", "size")
        ys, _ = _run(label, cell, params, x, lengths, reverse, None, unroll)
        if return_sequences:
            return ys, state
        if reverse:
            return ys[:, 0], state
        if lengths is None:
            return ys[:, -1], state
        last = jnp.clip(jnp.asarray(lengths) - 1, 0, x.shape[1] - 1)  # length 0: ys is zero there
        return jnp.take_along_axis(ys, last[:, None, None], axis=1)[:, 0], state

    return Layer(init, apply, cell.kind, name, frozenset({"lengths"}))


_MERGES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "add": jnp.add,
    "multiply": jnp.multiply,
}


@checks.declare(cell=_cell, backward_cell=checks.optional(_cell), merge=checks.name_or_callable(_MERGES),
                return_sequences=checks.flag, unroll=_unroll)
def bidirectional(cell: Cell, backward_cell: Cell | None = None, *, merge="concat",
                  return_sequences: bool = True, unroll: int | bool = 1,
                  name: str | None = None) -> Layer:
    """Recurrent layers reading forwards and backwards (``backward_cell``, default ``cell``), merged by
    ``"concat"``, ``"add"``, ``"multiply"`` or a function ``(forward, backward) -> array``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> layer = bidirectional(jnn.lstm_cell(4), jnn.lstm_cell(2))
      >>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 5, 3)))
      >>> sorted(params), layer.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
      (['backward', 'forward'], (2, 5, 6))
    """
    label = name or "bidirectional"
    backward_cell = cell if backward_cell is None else backward_cell
    sizes = cell.hidden_size, backward_cell.hidden_size
    checks.require(merge not in ("add", "multiply") or sizes[0] == sizes[1], label,
                   f"merge={merge!r} needs cells of one hidden size, got {sizes[0]} and {sizes[1]}")
    merge_fn = _MERGES[merge] if isinstance(merge, str) else merge
    forward = _recurrent(f"{label}/forward", f"{label}/forward", cell, return_sequences, False, unroll)
    backward = _recurrent(f"{label}/backward", f"{label}/backward", backward_cell, return_sequences, True, unroll)

    def init(key, example):
        f_key, b_key = jax.random.split(key)
        return {"forward": forward.init(f_key, example)[0],
                "backward": backward.init(b_key, example)[0]}, {}

    def apply(params, state, x, *, key=None, train=False, lengths=None):
        y_f, _ = forward.apply(params["forward"], {}, x, lengths=lengths)
        y_b, _ = backward.apply(params["backward"], {}, x, lengths=lengths)
        return merge_fn(y_f, y_b), state

    return Layer(init, apply, "bidirectional", name, frozenset({"lengths"}),
                 Children([("forward", forward), ("backward", backward)]))
