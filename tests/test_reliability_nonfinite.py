"""Reliability, category 1: non-finite values stop training and are located by replay."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import train

NAN_INDEX, N, BATCH = 137, 1000, 100


def _mnist_with_one_nan():
    x, y = jnn.data.load_mnist("test", download=False)
    x = np.array(x[:N].reshape(N, -1))
    x[NAN_INDEX, 300] = np.nan
    return x, y[:N]


def _model():
    return jnn.serial(jnn.dense(32), jnn.relu(), jnn.dense(10))


def _expected_batch(key):
    # fit: key -> (init_key, split_key); init_train_state: init_key -> (params_key, train_key);
    # the epoch: train_key -> (next_key, perm_key); order = epoch_order(perm_key) (whole batches).
    init_key, _ = jax.random.split(key)
    _, train_key = jax.random.split(init_key)
    _, perm_key = jax.random.split(train_key)
    order = np.asarray(jnn.train.epoch_order(perm_key, N, BATCH))
    return int(np.argwhere(order == NAN_INDEX)[0, 0])


def test_nan_example_in_real_mnist_is_located_by_step_example_and_layer():
    x, y = _mnist_with_one_nan()
    key = jax.random.key(3)
    with pytest.raises(train.NonFiniteError, match=r"fit: epoch 1 produced non-finite metrics \(loss=nan\)") as info:
        train.fit(_model(), jnn.losses.softmax_cross_entropy, optax.sgd(0.1),
                  train.Data((x, y), check=False),  # the eager data check would refuse the NaN before training
                  key=key, epochs=3, batch_size=BATCH, verbose=0,
                  callbacks=[train.NonFinite(debug=True)])
    with pytest.raises(ValueError, match=rf"first at index {NAN_INDEX}"):
        train.fit(_model(), jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (x, y), key=key, epochs=3,
                  batch_size=BATCH, verbose=0)
    report = info.value.report
    expected = _expected_batch(key)
    assert (report.step, report.batch) == (expected, expected)
    assert report.examples == (NAN_INDEX,)
    assert report.layer == "dense_0" and report.kind == "output" and report.bad_input
    assert f"step {expected}" in str(info.value) and f"[{NAN_INDEX}]" in str(info.value)
    assert info.value.epoch == 1 and np.isnan(info.value.history["loss"][0])
    # the kept state is the last finite one: here the initial state, finite and untouched
    assert int(info.value.train_state.step) == 0
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(info.value.train_state.params))


def test_stop_mode_returns_the_last_finite_epoch_with_a_flag():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [2.0], [-1.0]], np.float32)
    lrs = optax.piecewise_constant_schedule(0.05, {2 * 8: 1e6})  # blows up from epoch 3 on
    with pytest.warns(RuntimeWarning, match=r"fit: epoch 3 produced non-finite metrics"):
        result = train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(lrs), (x, y), key=jax.random.key(0),
                           epochs=6, batch_size=8, verbose=0, callbacks=[train.NonFinite("stop")])
    assert result.nonfinite_epoch == 3 and len(result.history["loss"]) == 3
    assert not np.isfinite(result.history["loss"][2]) and np.isfinite(result.history["loss"][1])
    assert int(result.train_state.step) == 16  # the state after epoch 2
    assert np.isfinite(result.train_state.params["w"]).all()


def test_find_nonfinite_returns_none_on_a_finite_epoch_and_names_a_gradient():
    x = jnp.ones((8, 2))
    model = jnn.serial(jnn.dense(2), jnn.stateless("sqrt", jnp.sqrt), jnn.dense(1))
    opt = optax.sgd(0.1)
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    params = jax.tree_util.tree_map(lambda a: a, ts.params)
    params["dense_0"]["w"] = jnp.zeros((2, 2))  # sqrt'(0) = inf: finite output, infinite gradient
    params["dense_0"]["b"] = jnp.zeros((2,))
    report = train.find_nonfinite(model, jnn.losses.mse, opt, ts._replace(params=params), (x, jnp.ones((8, 1))),
                                  batch_size=4)
    assert report.kind == "gradient" and report.layer == "dense_0" and report.step == 0
    params["dense_0"]["w"] = jnp.full((2, 2), 0.5)  # sqrt of positive values: finite everywhere
    ok = ts._replace(params=params)
    assert train.find_nonfinite(model, jnn.losses.mse, opt, ok, (x, jnp.ones((8, 1))), batch_size=4) is None


def test_batch_norm_running_stats_survive_an_infinite_batch():
    bn = jnn.batch_norm(momentum=0.5)
    params, state = bn.init(jax.random.key(0), jnp.zeros((4, 3)))
    x = jnp.arange(12.0).reshape(4, 3)
    _, state = bn.apply(params, state, x, train=True)
    poisoned = x.at[0, 1].set(jnp.inf)
    _, after = jax.jit(lambda p, s, x: bn.apply(p, s, x, train=True))(params, state, poisoned)
    np.testing.assert_array_equal(after["mean"], state["mean"])  # update skipped, not poisoned
    np.testing.assert_array_equal(after["var"], state["var"])


def test_batch_norm_rejects_batches_of_one_and_empty_batches_in_training():
    bn = jnn.batch_norm()
    params, state = bn.init(jax.random.key(0), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"batch_norm: training mode needs more than one value per "
                                         r"feature to normalize over, got input shape \(1, 3\)"):
        bn.apply(params, state, jnp.ones((1, 3)), train=True)
    with pytest.raises(ValueError, match=r"got input shape \(0, 3\)"):
        bn.apply(params, state, jnp.ones((0, 3)), train=True)
    y, _ = bn.apply(params, state, jnp.ones((1, 3)), train=False)  # evaluation is fine
    assert y.shape == (1, 3)
