"""Registry cases: recurrent layers (cells scanned over time), bidirectional, embedding.

Compile time, not size, is the cost here: every transformed scan (jvp, vjp, and their second
order) is its own XLA program, about a second each on a 2-core CPU. So the scanned cases check
gradients in reverse mode only (order 2 reverse-over-reverse still runs the scan's linearization
and transpose); forward mode, and the masked (``lengths``) path, are checked to first order in
tests/test_recurrent.py.

Each case has a NumPy float64 reference written from the cells' docstring equations.
"""
import numpy as np
from registry import Case

from jnn.layers.cells import gru_cell, lstm_cell, rnn_cell
from jnn.layers.embedding import embedding
from jnn.layers.recurrent import bidirectional, recurrent

REV = ("rev",)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _run(step, params, x, hidden, reverse=False):
    """Steps ``step(params, carry, x_t) -> (carry, y_t)`` over time from zeros; returns [B, T, H]."""
    carry, ys = (np.zeros((len(x), hidden)),) * 2, [None] * x.shape[1]
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        carry, ys[t] = step(params, carry, x[:, t])
    return np.stack(ys, 1)


def _lstm_step(p, carry, x):
    c, h = carry
    i, f, g, o = np.split(x @ p["input"]["w"] + p["input"]["b"] + h @ p["hidden"]["w"], 4, -1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return (c, h), h


def _gru_step(p, carry, x):
    h = carry[1]
    x_r, x_z, x_n = np.split(x @ p["input"]["w"] + p["input"]["b"], 3, -1)
    h_r, h_z, h_n = np.split(h @ p["hidden"]["w"], 3, -1)
    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
    h = (1 - z) * np.tanh(x_n + r * (h_n + p["hidden"]["b"])) + z * h
    return (h, h), h


def _rnn_step(p, carry, x):
    h = np.tanh(x @ p["input"]["w"] + p["input"]["b"] + carry[1] @ p["hidden"]["w"])
    return (h, h), h


CASES = [
    Case("lstm_last_output", lambda: recurrent(lstm_cell(3), return_sequences=False), (2, 3, 2),
         grad_modes=REV, reference=lambda p, s, x: _run(_lstm_step, p, x, 3)[:, -1]),
    Case("gru_reverse", lambda: recurrent(gru_cell(3), reverse=True), (2, 3, 2),
         grad_modes=REV, reference=lambda p, s, x: _run(_gru_step, p, x, 3, reverse=True)),
    Case("bidirectional_rnn", lambda: bidirectional(rnn_cell(2), rnn_cell(3)), (2, 3, 2), grad_modes=REV,
         reference=lambda p, s, x: np.concatenate([_run(_rnn_step, p["forward"], x, 2),
                                                   _run(_rnn_step, p["backward"], x, 3, reverse=True)], -1)),
    Case("token_embedding", lambda: embedding(10, 3), (2, 4), dtype=np.int32, input_grads=False,
         reference=lambda p, s, x: p["embedding"][x]),
]
