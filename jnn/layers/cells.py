"""Recurrent cells (one time step, scanned by :func:`jnn.layers.recurrent.recurrent`), gates fused:
params ``{"input": {"w": [in, G*H], "b"}, "hidden": {"w": [H, G*H], ...}}`` in flax's gate order."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jnn import _checks as checks, initializers

__all__ = ["Cell", "rnn_cell", "lstm_cell", "gru_cell"]

PyTree = Any


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, input_size, dtype) -> params``, ``initial_carry(batch_shape, dtype)``
    (zeros), ``step(params, carry, x_t [*batch, in]) -> (carry, y_t [*batch, hidden_size])``, ``kind``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> cell = jnn.lstm_cell(3)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> (c, h), y = cell.step(params, cell.initial_carry((4,)), jnp.ones((4, 2)))
      >>> cell.kind, params["input"]["w"].shape, params["hidden"]["w"].shape, y.shape
      ('lstm', (2, 12), (3, 12), (4, 3))
    """

    init: Callable[..., PyTree]
    initial_carry: Callable[..., PyTree]
    step: Callable[..., tuple[PyTree, jax.Array]]
    hidden_size: int
    kind: str


def _inits(label, w_init, recurrent_init, b_init):
    recurrent_init = jax.nn.initializers.orthogonal() if recurrent_init is None else recurrent_init
    return (initializers.get(w_init, where=f"{label} w_init"),
            initializers.get(recurrent_init, where=f"{label} recurrent_init"),
            initializers.get(b_init, where=f"{label} b_init"))


def _fused_params(label, key, input_size, hidden, gates, dtype, w_init, recurrent_init, b_init, *,
                  hidden_bias=False):
    """The fused params, one block per gate (and ``hidden.b: [H]`` with ``hidden_bias``), each from
    its own key; half-precision params are drawn in float32 (the orthogonal init needs it) and cast."""
    checks.positive_int(label, "input_size", input_size)
    keys = jax.random.split(key, 2 * gates + 1 + int(hidden_bias))
    draw = initializers.param_dtype(dtype)   # float32, or float64 for float64
    init = lambda initializer, k, shape: initializer(k, shape, draw).astype(dtype)
    params = {
        "input": {"w": jnp.concatenate([init(w_init, k, (input_size, hidden)) for k in keys[:gates]], 1),
                  "b": init(b_init, keys[2 * gates], (gates * hidden,))},
        "hidden": {"w": jnp.concatenate([init(recurrent_init, k, (hidden, hidden))
                                         for k in keys[gates:2 * gates]], 1)},
    }
    if hidden_bias:
        params["hidden"]["b"] = init(b_init, keys[2 * gates + 1], (hidden,))
    return params


def _zeros(hidden):
    def initial_carry(batch_shape=(), dtype=jnp.float32):
        return jnp.zeros((*tuple(batch_shape), hidden), dtype)
    return initial_carry


def _matmul(x, params):
    return x @ params["w"].astype(x.dtype)


@checks.declare(hidden_size=checks.positive_int)
def rnn_cell(hidden_size: int, *, activation: Callable = jnp.tanh, w_init="lecun_normal",
             recurrent_init=None, b_init="zeros") -> Cell:
    """Elman cell: ``h' = activation(x @ W_i + b + h @ W_h)``, ``y = h'``; ``recurrent_init`` (of ``W_h``)
    defaults to orthogonal, as in every cell.

    Example:
      >>> cell = rnn_cell(3)
      >>> cell.step(cell.init(jax.random.key(0), 2), cell.initial_carry((4,)), jnp.ones((4, 2)))[1].shape
      (4, 3)
    """
    inits = _inits("rnn_cell", w_init, recurrent_init, b_init)

    def init(key, input_size, dtype=jnp.float32):
        return _fused_params("rnn_cell", key, input_size, hidden_size, 1, dtype, *inits)

    def step(params, h, x):
        h = activation(_matmul(x, params["input"]) + params["input"]["b"].astype(x.dtype)
                       + _matmul(h, params["hidden"]))
        return h, h

    return Cell(init, _zeros(hidden_size), step, hidden_size, "rnn")


@checks.declare(hidden_size=checks.positive_int)
def lstm_cell(hidden_size: int, *, forget_bias: float = 1.0, w_init="lecun_normal",
              recurrent_init=None, b_init="zeros") -> Cell:
    """LSTM cell as ``flax.linen.LSTMCell``: carry ``(c, h)``, gates ``(i, f, g, o)`` of ``x @ W_i + b + h @ W_h``,
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = y = sigmoid(o) * tanh(c')``; f's bias: ``forget_bias``.

    Example:
      >>> params = lstm_cell(2).init(jax.random.key(0), 3)
      >>> params["input"]["b"].tolist()
      [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    inits = _inits("lstm_cell", w_init, recurrent_init, b_init)
    H = hidden_size

    def init(key, input_size, dtype=jnp.float32):
        params = _fused_params("lstm_cell", key, input_size, H, 4, dtype, *inits)
        params["input"]["b"] = params["input"]["b"].at[H:2 * H].add(forget_bias)
        return params

    def initial_carry(batch_shape=(), dtype=jnp.float32):
        return _zeros(H)(batch_shape, dtype), _zeros(H)(batch_shape, dtype)

    def step(params, carry, x):
        c, h = carry
        z = _matmul(x, params["input"]) + params["input"]["b"].astype(x.dtype) + _matmul(h, params["hidden"])
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    return Cell(init, initial_carry, step, H, "lstm")


@checks.declare(hidden_size=checks.positive_int)
def gru_cell(hidden_size: int, *, w_init="lecun_normal", recurrent_init=None,
             b_init="zeros") -> Cell:
    """GRU cell as ``flax.linen.GRUCell`` and PyTorch: ``r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)``,
    ``n = tanh(x_n + r * (h_n + b_h))``, ``h' = y = (1 - z) * n + z * h``; ``b_h`` is ``hidden.b [H]``.

    Example:
      >>> params = gru_cell(4).init(jax.random.key(0), 3)
      >>> params["hidden"]["w"].shape, params["hidden"]["b"].shape
      ((4, 12), (4,))
    """
    inits = _inits("gru_cell", w_init, recurrent_init, b_init)
    H = hidden_size

    def init(key, input_size, dtype=jnp.float32):
        return _fused_params("gru_cell", key, input_size, H, 3, dtype, *inits, hidden_bias=True)

    def step(params, h, x):
        x_r, x_z, x_n = jnp.split(_matmul(x, params["input"]) + params["input"]["b"].astype(x.dtype),
                                  3, axis=-1)
        h_r, h_z, h_n = jnp.split(_matmul(h, params["hidden"]), 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + params["hidden"]["b"].astype(x.dtype)))
        h = (1.0 - z) * n + z * h
        return h, h

    return Cell(init, _zeros(H), step, H, "gru")
