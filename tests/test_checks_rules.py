"""Rules of jnn/_checks.py that no other test file pins, exercised through fit_population."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

KEY_DATA = np.asarray(jax.random.key_data(jax.random.key(0)))   # a raw uint32[2] key, not a jax.Array


def _population(**kw):
    return jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse,
                                    lambda hp: optax.sgd(jnp.where(hp["train"], 0.1, 0.0)), jnn.data.xor(),
                                    **{"hparams": {"train": np.array([True, False])}, "key": KEY_DATA, "epochs": 2,
                                       "batch_size": 4, "metrics": {}, **kw})


def test_bool_hparams_and_a_raw_numpy_key_are_accepted():
    result = _population()
    np.testing.assert_array_equal(jax.random.key_data(result.keys),
                                  jax.random.key_data(jax.random.split(jax.random.key(0), 2)))
    assert result.hparams["train"].dtype == bool
    loss = np.asarray(result.history["loss"])                       # [epochs, N]
    np.testing.assert_allclose(loss[0, 1], loss[1, 1], rtol=1e-6)   # lr 0: the member does not move
    assert loss[1, 0] < loss[0, 0]


@pytest.mark.parametrize("kw,message", [
    ({"key": 0}, "fit_population: key must be a PRNG key (jax.random.key) or a batch of them, got int32[]"),
    ({"key": np.zeros(3, np.uint32)},
     "fit_population: key must be a PRNG key (jax.random.key) or a batch of them, got uint32[3]"),
    ({"hparams": {"lr": jax.random.split(jax.random.key(0), 2)}},
     "fit_population: hparams['lr'] must be a 1-D numeric array with one value per member, got key<fry>[2]"),
])
def test_bad_keys_and_non_numeric_hparams_are_refused(kw, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _population(**kw)
