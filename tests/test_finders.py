"""jnn.train.finders: the learning-rate finder's members equal sequential fits; the batch-size
finder picks by compiled memory analysis without running the step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

LOSS = jnn.losses.softmax_cross_entropy


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.key(1), (96, 5))
    return x, jnp.argmax(x[:, :3] @ jnp.ones((3, 3)) + x[:, :3], axis=1)


def mlp():
    return jnn.serial(jnn.dense(8), jnn.tanh(), jnn.dense(3))


@pytest.mark.parametrize("members", ["vmap", "loop"])
def test_every_member_equals_a_sequential_fit(data, members):
    model, key = mlp(), jax.random.key(3)
    found = jnn.train.lr_find(model, LOSS, optax.adam, data, key=key, min_lr=1e-3, max_lr=0.3, num=4,
                              epochs=3, batch_size=16, metrics={}, members=members)
    np.testing.assert_allclose(found.lrs, np.geomspace(1e-3, 0.3, 4))
    for i, lr in enumerate(found.lrs):
        alone = jnn.train.fit(model, LOSS, optax.adam(float(np.float32(lr))), data, key=key, epochs=3,
                              batch_size=16, metrics={}, verbose=0)
        member = found.population.member(i)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                               member.train_state.params, alone.train_state.params)
        np.testing.assert_allclose(found.losses[i], alone.history["loss"][-1], rtol=1e-5)


def test_auto_members_loop_a_cnn_on_cpu_and_vmap_an_mlp():
    from jnn.train.population import init_population, loops_members
    x = jax.random.normal(jax.random.key(0), (24, 6, 6, 1))
    y = jnp.argmax(x.reshape(24, -1)[:, :3], axis=1)
    cnn = jnn.serial(jnn.conv(3, (3, 3)), jnn.relu(), jnn.flatten(), jnn.dense(3))
    example, keys = jax.ShapeDtypeStruct((8, 6, 6, 1), jnp.float32), jax.random.split(jax.random.key(0), 2)
    for model, expected in ((cnn, jax.default_backend() == "cpu"), (jnn.serial(jnn.flatten(), mlp()), False)):
        states = jax.eval_shape(lambda: init_population(lambda hp: model, lambda hp: optax.sgd(0.1), {}, keys, example))
        assert loops_members("auto", lambda hp: model, {}, states, example) is expected
        assert loops_members("loop", lambda hp: model, {}, states, example) is True
        assert loops_members("vmap", lambda hp: model, {}, states, example) is False
    # the CNN's members (auto) equal fit's runs (stepwise on CPU)
    found = jnn.train.lr_find(cnn, LOSS, optax.adam, (x, y), key=jax.random.key(2), min_lr=1e-3, max_lr=0.1, num=2,
                              epochs=2, batch_size=8, metrics={})
    for i, lr in enumerate(found.lrs):
        alone = jnn.train.fit(cnn, LOSS, optax.adam(float(np.float32(lr))), (x, y), key=jax.random.key(2), epochs=2,
                              batch_size=8, metrics={}, verbose=0)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                               found.population.member(i).train_state.params, alone.train_state.params)
        np.testing.assert_allclose(found.losses[i], alone.history["loss"][-1], rtol=1e-5)


def test_suggestion_follows_the_stated_rule_and_divergence_is_inf(data):
    x = data[0]
    found = jnn.train.lr_find(jnn.dense(1), jnn.losses.mse, optax.sgd, (x, x @ jnp.ones((5, 1))), num=8, epochs=2,
                              key=jax.random.key(0), min_lr=1e-3, max_lr=1e2, batch_size=16, metrics={}, tolerance=0.05)
    assert np.isinf(found.losses[-1]) and found.population.nonfinite_epoch[-1] > 0
    best = np.min(found.losses)
    within = [lr for lr, loss in zip(found.lrs, found.losses) if loss <= best + 0.05 * abs(best)]
    assert found.suggestion == min(within)
    import matplotlib
    matplotlib.use("Agg")
    ax = found.plot()
    assert ax.get_xscale() == "log" and len(ax.lines[0].get_xdata()) == np.isfinite(found.losses).sum()


def test_lr_find_rejects_bad_arguments(data):
    with pytest.raises(ValueError, match="lr_find: min_lr must be below max_lr"):
        jnn.train.lr_find(mlp(), LOSS, optax.sgd, data, key=jax.random.key(0), min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="lr_find: num must be an integer >= 2"):
        jnn.train.lr_find(mlp(), LOSS, optax.sgd, data, key=jax.random.key(0), num=1)
    with pytest.raises(ValueError, match="lr_find: monitor 'val_loss' needs val_data or val_split"):
        jnn.train.lr_find(mlp(), LOSS, optax.sgd, data, key=jax.random.key(0), num=2, batch_size=32,
                          monitor="val_loss")
    with pytest.raises(ValueError, match="lr_find: monitor 'val_los'"):
        jnn.train.lr_find(mlp(), LOSS, optax.sgd, data, key=jax.random.key(0), num=2, batch_size=32,
                          monitor="val_los", val_split=0.25)


def counting_loss(calls):
    def loss(out, y):
        jax.debug.callback(lambda: calls.append(1))   # runs only when the compiled step executes
        return LOSS(out, y)
    return loss


def test_batch_size_finder_picks_between_known_sizes_and_runs_nothing():
    model, opt, calls = mlp(), optax.adam(1e-3), []
    example = (jnp.zeros((1, 5)), jnp.zeros((1,), jnp.int32))
    sizes = {b: jnn.train.step_bytes(model, counting_loss(calls), opt, example, b) for b in (24, 32)}
    assert sizes[24] < sizes[32]
    found = jnn.train.find_batch_size(model, counting_loss(calls), opt, example, multiple_of=8, high=1024,
                                      budget=(sizes[24] + sizes[32]) // 2)
    assert (found.batch_size, found.bytes) == (24, sizes[24])
    assert all((b <= 24) == (v <= found.bytes) for b, v in found.probes.items())
    assert all(b % 8 == 0 for b in found.probes) and calls == []
    found = jnn.train.find_batch_size(model, counting_loss(calls), opt, example, high=40, budget=10**12)
    assert found.batch_size == 40 and calls == []
    # the counter does count an executed step
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), example[0])
    jax.jit(jnn.train.make_train_step(model, counting_loss(calls), opt))(ts, (jnp.zeros((2, 5)), jnp.zeros(2, int)))
    jax.effects_barrier()
    assert calls == [1]


def test_batch_size_finder_rejects_a_budget_below_the_smallest_batch():
    example = (jnp.zeros((1, 5)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"find_batch_size: batch size 8 needs \d+ bytes, over the budget of 10"):
        jnn.train.find_batch_size(mlp(), LOSS, optax.sgd(0.1), example, budget=10, low=8)
