"""jnn.parallel refuses misuse up front, in this one-device process: meshes, rules, plans and
process setup name the function, what it expected and what it got."""
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import jnn
from jnn import parallel

TS = jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 3)))
BATCH = (jnp.zeros((4, 3)), jnp.zeros((4, 2)))


@pytest.mark.parametrize("call,error,message", [
    (lambda: parallel.make_mesh(devices=[]), ValueError, "make_mesh: devices must be a non-empty list of jax devices "
     "(e.g. jax.devices()[:4]), got []"),
    (lambda: parallel.make_mesh(devices="cpu"), ValueError, "make_mesh: devices must be a non-empty list of jax "
     "devices (e.g. jax.devices()[:4]), got 'cpu'"),
    (lambda: parallel.place(TS, parallel.make_mesh(), rules="fsdp"), TypeError,
     "jnn.parallel: rules must be a list of Rule (e.g. jnn.parallel.fsdp()), got str"),
    (lambda: parallel.place(TS, parallel.make_mesh(), rules=["*"]), TypeError,
     "jnn.parallel: each rule must be a Rule or a (patterns, spec) pair, got '*'"),
    (lambda: parallel.fsdp(min_size=-1), ValueError, "jnn.parallel.fsdp: min_size must be an integer >= 0, got -1"),
    (lambda: parallel.fsdp(min_size=True), ValueError, "jnn.parallel.fsdp: min_size must be an integer >= 0, "
     "got True"),
    (lambda: parallel.fsdp(3), TypeError, "jnn.parallel.fsdp: patterns must be a pattern string or a list of them, "
     "got int"),
    (lambda: parallel.fsdp(axis=0), ValueError, "jnn.parallel.fsdp: axis must be a mesh axis name, got 0"),
    (lambda: parallel.replicate({"x": jnp.ones(2)}, None), TypeError, "jnn.parallel.replicate: mesh must be a "
     "jax.sharding.Mesh (e.g. jnn.parallel.make_mesh()), got NoneType"),
    (lambda: parallel.global_batch(jnp.ones((4, 2)), parallel.make_mesh(), check="yes"), ValueError,
     "jnn.parallel.global_batch: check must be True or False, got 'yes'"),
    (lambda: parallel.plan(jnn.dense(2), jnp.zeros((4, 3)), optax.sgd(0.1), verbose=False), TypeError,
     "jnn.parallel.plan: example must be one global batch (x, y), got ArrayImpl"),
    (lambda: parallel.plan(3, BATCH, optax.sgd(0.1), verbose=False), TypeError,
     "jnn.parallel.plan: model must be a jnn.Layer (e.g. jnn.dense(10)), got int"),
    (lambda: parallel.plan(jnn.dense(2), BATCH, "sgd", verbose=False), TypeError,
     "jnn.parallel.plan: optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), got str"),
    (lambda: parallel.initialize("127.0.0.1:1234", 0, 0), ValueError,
     "jnn.parallel.initialize: num_processes must be a positive integer, got 0"),
    (lambda: parallel.initialize("localhost", 2, 0), ValueError,
     "jnn.parallel.initialize: coordinator_address must be 'host:port', got 'localhost'"),
    (lambda: parallel.initialize("127.0.0.1:1234", 2, True), ValueError,
     "jnn.parallel.initialize: process_id must be in [0, 2), got True"),
])
def test_parallel_misuse(call, error, message):
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        call()


def test_rules_given_as_pairs_still_work():
    specs = parallel.param_specs({"w": jnp.zeros((4, 2))}, parallel.make_mesh(), [("w", jax.sharding.PartitionSpec())])
    assert specs["w"] == jax.sharding.PartitionSpec()
