"""Registry cases: recurrent layers (cells scanned over time), bidirectional, embedding.

Compile time, not size, is the cost here: every transformed scan (jvp, vjp, and their second
order) is its own XLA program, about a second each on a 2-core CPU. So the scanned cases check
gradients in reverse mode only (order 2 reverse-over-reverse still runs the scan's linearization
and transpose); forward mode, and the masked (``lengths``) path, are checked to first order in
tests/test_recurrent.py.
"""
import numpy as np
from registry import Case

from jnn.layers.cells import gru_cell, lstm_cell, rnn_cell
from jnn.layers.embedding import embedding
from jnn.layers.recurrent import bidirectional, recurrent

REV = ("rev",)

CASES = [
    Case("lstm_last_output", lambda: recurrent(lstm_cell(3), return_sequences=False), (2, 3, 2),
         grad_modes=REV),
    Case("gru_reverse", lambda: recurrent(gru_cell(3), reverse=True), (2, 3, 2),
         grad_modes=REV),
    Case("bidirectional_rnn", lambda: bidirectional(rnn_cell(2), rnn_cell(3)), (2, 3, 2), grad_modes=REV),
    Case("token_embedding", lambda: embedding(10, 3), (2, 4), dtype=np.int32, input_grads=False),
]
