"""What a hand-written loop uses: loss_and_grad (the gradient make_train_step applies, checked by
hand and by finite differences), one set of default metrics, TensorBoard.log read back."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train import init_train_state, loss_and_grad, make_eval_fn, make_train_step, step_key

KEY = jax.random.key(0)


def _data(n=12, features=4, classes=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, classes, n))


def test_make_train_step_applies_exactly_loss_and_grads_gradient():
    """SGD(1) by hand on loss_and_grad's grads (same key, step, regularizer) == make_train_step."""
    model = jnn.serial(jnn.dense(8), jnn.relu(), jnn.dropout(0.3), jnn.dense(3))
    loss, reg, opt = jnn.losses.softmax_cross_entropy, jnn.train.penalty(l2=0.1), optax.sgd(1.0)
    x, y = _data()
    ts = init_train_state(model, opt, KEY, x[:1])
    step = jax.jit(make_train_step(model, loss, opt, regularizer=reg))
    grad = jax.jit(loss_and_grad(model, loss, regularizer=reg))
    for _ in range(3):
        value, grads, state, logs = grad(ts.params, ts.state, (x, y), key=step_key(ts), step=ts.step)
        new, step_logs = step(ts, (x, y))
        jax.tree_util.tree_map(lambda a, p, g: np.testing.assert_allclose(a, p - g, rtol=1e-6, atol=1e-7),
                               new.params, ts.params, grads)
        assert value.dtype == jnp.float32 and sorted(logs) == sorted(step_logs) == ["accuracy", "loss"]
        np.testing.assert_allclose(value, step_logs["loss"], rtol=1e-6)
        np.testing.assert_allclose(value, logs["loss"], rtol=0)
        ts = new


def test_loss_and_grad_matches_finite_differences_and_honours_train():
    model = jnn.serial(jnn.dense(3), jnn.tanh(), jnn.dense(1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)), jnp.float32)
    y = jnp.sin(x[:, :1])
    params, state = model.init(KEY, x[:1])
    value, grads, _, _ = loss_and_grad(model, jnn.losses.mse)(params, state, (x, y), train=False)
    flat, unflatten = jax.flatten_util.ravel_pytree(params)
    f = lambda v: float(jnn.losses.mse(model.apply(unflatten(v), state, x)[0], y))
    assert float(value) == pytest.approx(f(flat), rel=1e-6)
    eps = 1e-2
    numeric = np.array([(f(flat.at[i].add(eps)) - f(flat.at[i].add(-eps))) / (2 * eps) for i in range(flat.size)])
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(grads)[0], numeric, rtol=2e-3, atol=2e-4)

    dropped = jnn.serial(jnn.dropout(0.5), jnn.dense(1))
    p, s = dropped.init(KEY, x[:1])
    f = loss_and_grad(dropped, jnn.losses.mse)
    evaluated = f(p, s, (x, y), train=False)[0]        # eval mode: no key needed, no dropout
    np.testing.assert_allclose(evaluated, jnn.losses.mse(dropped.apply(p, s, x)[0], y), rtol=1e-6)
    assert float(f(p, s, (x, y), key=KEY)[0]) != pytest.approx(float(evaluated))


def test_loss_is_float32_whatever_the_outputs_dtype():
    model = jnn.serial(jnn.dense(1), jnn.stateless("half", lambda h: h.astype(jnp.bfloat16)))
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    params, state = model.init(KEY, x)
    value, grads, _, _ = loss_and_grad(model, jnn.losses.mse)(params, state, (x, y))
    assert value.dtype == jnp.float32 and grads["dense_0"]["w"].dtype == jnp.float32


def test_one_default_set_of_metrics_for_fit_the_step_and_the_evaluation():
    x, y = _data(16)
    model, opt = jnn.dense(3), optax.sgd(0.1)
    ts = init_train_state(model, opt, KEY, x[:1])
    for loss, expected in ((jnn.losses.softmax_cross_entropy, ["accuracy", "loss"]), (jnn.losses.mse, ["loss"])):
        target = y if loss is jnn.losses.softmax_cross_entropy else jax.nn.one_hot(y, 3)
        _, step_logs = make_train_step(model, loss, opt)(ts, (x, target))
        eval_logs = make_eval_fn(model, loss, batch_size=5)(ts.params, ts.state, (x, target))
        history = jnn.train.fit(model, loss, opt, (x, target), key=KEY, epochs=1, batch_size=8,
                                val_data=(x, target), verbose=0).history
        assert sorted(step_logs) == sorted(eval_logs) == expected
        assert sorted(history) == sorted(["epoch", "time", *expected, *[f"val_{k}" for k in expected]])
        assert sorted(jnn.train.default_metrics(loss, x, target)) == expected[:-1]
    out = model.apply(ts.params, ts.state, x)[0]
    np.testing.assert_allclose(make_eval_fn(model, jnn.losses.softmax_cross_entropy)(ts.params, ts.state, (x, y))
                               ["accuracy"], np.mean(np.argmax(out, 1) == y), rtol=1e-6)
    assert jnn.train.default_metrics(jnn.losses.softmax_cross_entropy, {"a": x}, y) == {}   # pytree outputs
    assert sorted(make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={})(ts, (x, y))[1]) == ["loss"]


def test_tensorboard_log_from_a_hand_written_loop_reads_back(tmp_path):
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tb = jnn.train.callbacks.TensorBoard(tmp_path / "run")
    for step in (10, 20, 30):
        tb.log(step, {"loss": jnp.float32(1.0 / step), "lr": 0.5 * step, "count": np.int32(step),
                      "nan": jnp.nan, "vector": jnp.ones(3), "text": "skipped"})
    tb.close()
    acc = accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["count", "loss", "lr"]
    assert [e.step for e in acc.Scalars("loss")] == [10, 20, 30]
    np.testing.assert_allclose([e.value for e in acc.Scalars("loss")], [0.1, 0.05, 1 / 30], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("lr")], [5.0, 10.0, 15.0])
