"""``True`` is an ``int`` in Python, but a count, size or index given as ``True`` is a mistake:
every argument that must be a positive integer (or an integer in a range) refuses bools with the
same message it gives any other wrong value."""
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import jnn
from jnn.train.callbacks import TensorBoard
from jnn.train.permutation import permutation

X, Y = jnn.data.xor()


def _population(**kw):
    return jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(hp["lr"]), (X, Y),
                                    hparams={"lr": jnp.array([0.1, 0.2])}, key=jax.random.key(0),
                                    **{"epochs": 1, "batch_size": 4, "metrics": {}, **kw})


@pytest.mark.parametrize("call,message", [
    (lambda: _population(epochs=True), "fit_population: epochs must be a positive integer, got True"),
    (lambda: _population(chunk_size=True),
     "fit_population: chunk_size must be a positive integer, None or 'auto', got True"),
    (lambda: jnn.reshape((True, 4)), "reshape: shape must hold positive integers and at most one -1, got (True, 4)"),
    (lambda: jnn.parallel.make_mesh(model=True),
     f"make_mesh: model must be a positive integer dividing the {len(jax.devices())} devices, got True"),
    (lambda: jnn.parallel.make_mesh(data=True),
     f"make_mesh: data * model must be at most the {len(jax.devices())} devices, got data=True, model=1"),
    (lambda: permutation(jax.random.key(0), True), "permutation: n must be an integer in [1, 2**31), got True"),
    (lambda: jnn.train.Checkpointer("/nonexistent/never-made", keep=True),
     "Checkpointer: keep must be a positive integer or None, got True"),
])
def test_true_is_refused_where_a_count_is_expected(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_save_every_and_tensorboard_refuse_true(tmp_path):
    with pytest.raises(ValueError, match=re.escape("Checkpointer.save_every: every must be a positive integer, "
                                                   "got True")):
        jnn.train.Checkpointer(tmp_path / "ckpt").save_every(True)
    pytest.importorskip("tensorboardX")
    with pytest.raises(ValueError, match=re.escape("TensorBoard: histograms_every must be an integer >= 0, got True")):
        TensorBoard(tmp_path / "logs", histograms_every=True)
