"""Gradient accumulation: make_train_step(accumulate=k) and fit(accumulate=k) against one k-times
batch, hand-computed micro-batch gradients, schedules and keys per update, batch norm, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train import init_train_state, loss_and_grad, make_train_step, step_key

KEY = jax.random.key(0)
LOSS = jnn.losses.softmax_cross_entropy


def _data(n, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.argmax(x[:, :classes] + 0.3 * x[:, 3:3 + classes], axis=1))


def _mlp(*extra):
    return jnn.serial(jnn.dense(16), jnn.tanh(), *extra, jnn.dense(3))


def _run(model, opt, batches, accumulate, loss=LOSS, **kw):
    ts = init_train_state(model, opt, KEY, batches[0][0][:1])
    step = jax.jit(make_train_step(model, loss, opt, accumulate=accumulate, **kw))
    logs = []
    for batch in batches:
        ts, log = step(ts, batch)
        logs.append(log)
    return ts, logs


def test_k_micro_batches_equal_one_k_times_batch():
    x, y = _data(5 * 32)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    opt = optax.adam(1e-2)
    whole, whole_logs = _run(_mlp(), opt, batches, 1)
    for k in (2, 4, 8):
        acc, acc_logs = _run(_mlp(), opt, batches, k)
        assert int(acc.step) == int(whole.step) == 5     # the step counts updates, not micro-batches
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6),
                               acc.params, whole.params)
        for a, b in zip(acc_logs, whole_logs):           # logs: means over the micro-batches
            assert sorted(a) == sorted(b) == ["accuracy", "loss"]
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
            np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=1e-6)


def test_dropout_gets_one_key_per_micro_batch_folded_from_the_step_key():
    """Micro-batch i of update n draws from fold_in(fold_in(key, n), i): checked against
    loss_and_grad called by hand, for two updates, with SGD(1) applied by hand."""
    model, opt, k = _mlp(jnn.dropout(0.5)), optax.sgd(1.0), 4
    x, y = _data(16)
    ts = init_train_state(model, opt, KEY, x[:1])
    step = jax.jit(make_train_step(model, LOSS, opt, accumulate=k))
    grad = loss_and_grad(model, LOSS)
    for _ in range(2):
        grads = [grad(ts.params, ts.state, (x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]),
                      key=jax.random.fold_in(step_key(ts), i), step=ts.step)[1] for i in range(k)]
        expected = jax.tree_util.tree_map(lambda p, *g: p - sum(g) / k, ts.params, *grads)
        ts, _ = step(ts, (x, y))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                               ts.params, expected)
    whole, _ = _run(model, opt, [(x, y)], 1)   # and the masks differ from one whole batch's
    assert not np.allclose(whole.params["dense_1"]["w"], _run(model, opt, [(x, y)], k)[0].params["dense_1"]["w"])


def test_a_schedule_and_the_losses_step_see_the_update_count():
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)

    def loss(out, y, step):
        return LOSS(out, y), {"seen_step": step.astype(jnp.float32)}

    x, y = _data(24)
    ts, logs = _run(_mlp(), opt, [(x, y)] * 3, 4, loss=loss)
    assert int(ts.step) == 3
    assert [float(log["seen_step"]) for log in logs] == [0.0, 1.0, 2.0]
    assert float(ts.opt_state.hyperparams["learning_rate"]) == pytest.approx(float(schedule(2)))

    result = jnn.train.fit(_mlp(), LOSS, opt, (x, y), key=KEY, epochs=3, batch_size=8, accumulate=2, verbose=0)
    assert int(result.train_state.step) == 9                             # 24 / 8 updates per epoch
    np.testing.assert_allclose(result.history["lr"], [float(schedule(n)) for n in (2, 5, 8)], rtol=1e-6)


def test_batch_norm_uses_micro_batch_statistics_and_updates_running_stats_k_times():
    model, opt, k = _mlp(jnn.batch_norm(momentum=0.5)), optax.sgd(1.0), 4
    x, y = _data(32)
    ts = init_train_state(model, opt, KEY, x[:1])
    new, _ = jax.jit(make_train_step(model, LOSS, opt, accumulate=k))(ts, (x, y))
    state, grads = ts.state, []
    grad = loss_and_grad(model, LOSS)
    for i in range(k):                                   # micro-batch after micro-batch, state threaded
        _, g, state, _ = grad(ts.params, state, (x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]),
                              key=jax.random.fold_in(step_key(ts), i), step=ts.step)
        grads.append(g)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.state, state)
    jax.tree_util.tree_map(lambda a, p, *g: np.testing.assert_allclose(a, p - sum(g) / k, rtol=1e-5, atol=1e-6),
                           new.params, ts.params, *grads)
    once = jnn.train.make_train_step(model, LOSS, opt)(ts, (x, y))[0].state   # not one whole-batch update
    assert not np.allclose(once["batch_norm_0"]["mean"], new.state["batch_norm_0"]["mean"])


def test_fit_with_accumulate_trains_mnist_sized_data_like_the_whole_batch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1024, 28, 28, 1)).astype(np.float32)
    y = np.argmax(x.reshape(1024, -1) @ rng.normal(size=(784, 10)), axis=1)
    model = jnn.serial(jnn.flatten(), jnn.dense(32), jnn.relu(), jnn.dense(10))
    fit = lambda k: jnn.train.fit(model, LOSS, optax.adam(1e-3), (x, y), key=KEY, epochs=3, batch_size=128,
                                  val_split=0.125, accumulate=k, verbose=0, fused=True)
    acc, whole = fit(4), fit(1)
    assert acc.history["epoch"] == [1, 2, 3] and int(acc.train_state.step) == 3 * (896 // 128)
    assert acc.history["loss"][-1] < acc.history["loss"][0] and acc.history["accuracy"][-1] > 0.3
    assert "val_accuracy" in acc.history
    np.testing.assert_allclose(acc.history["loss"], whole.history["loss"], rtol=1e-4)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           acc.train_state.params, whole.train_state.params)


def test_peak_memory_is_one_micro_batches():
    """Compiled temp memory of a 2048-example step: accumulate=8 needs a fraction of accumulate=1's
    (numbers in benchmarks/RESULTS.md, "Gradient accumulation")."""
    model = jnn.serial(jnn.dense(1024), jnn.relu(), jnn.dense(1024), jnn.relu(), jnn.dense(10))
    ts = init_train_state(model, optax.sgd(0.1), KEY, jax.ShapeDtypeStruct((1, 256), jnp.float32))
    batch = (jax.ShapeDtypeStruct((2048, 256), jnp.float32), jax.ShapeDtypeStruct((2048,), jnp.int32))
    temp = {k: jax.jit(make_train_step(model, LOSS, optax.sgd(0.1), accumulate=k)).lower(ts, batch).compile()
            .memory_analysis().temp_size_in_bytes for k in (1, 8)}
    activations = 2048 * 1024 * 4 * 2          # two hidden layers' float32 activations for the whole batch
    assert temp[1] > activations and temp[8] < temp[1] / 3, temp


def test_misuse_is_refused_with_the_numbers():
    model, opt = _mlp(), optax.sgd(0.1)
    x, y = _data(10)
    ts = init_train_state(model, opt, KEY, x[:1])
    with pytest.raises(ValueError, match=r"make_train_step: accumulate=4 splits each batch into 4 equal "
                                         r"micro-batches, but a batch has 10 examples, not a multiple of 4"):
        make_train_step(model, LOSS, opt, accumulate=4)(ts, (x, y))
    with pytest.raises(ValueError, match="fit: accumulate=3 splits each batch into 3 equal micro-batches, but a "
                                         "batch has 8 examples"):
        jnn.train.fit(model, LOSS, opt, (x, y), key=KEY, epochs=1, batch_size=8, accumulate=3, verbose=0)
    for bad in (0, -2, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="make_train_step: accumulate must be"):
            make_train_step(model, LOSS, opt, accumulate=bad)
