"""Pytrees in and out of training: dict/tuple inputs, targets and outputs through the step, the
epoch, the evaluator, fit, predict and fit_population; losses that take the step and return logs;
fit(train_state=Start(params=...)) from given weights; the default weight selection never skipping a kernel.

Every value is checked against an independent NumPy computation or an observed effect.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import train

N, D_A, D_B, C = 96, 3, 2, 3


def two_input(classes: int) -> jnn.Layer:
    """``x = {"a": [N, 3], "b": [N, 2]}`` -> logits ``a @ wa + b @ wb + bias`` (a custom layer)."""
    def init(key, x):
        ka, kb = jax.random.split(key)
        return {"a": {"w": jax.random.normal(ka, (x["a"].shape[-1], classes)) * 0.1},
                "b": {"w": jax.random.normal(kb, (x["b"].shape[-1], classes)) * 0.1,
                      "bias": jnp.zeros(classes)}}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x["a"] @ params["a"]["w"] + x["b"] @ params["b"]["w"] + params["b"]["bias"], state

    return jnn.Layer(init, apply, "two_input")


def two_input_data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, D_A)).astype(np.float32), rng.normal(size=(n, D_B)).astype(np.float32)
    score = np.stack([a[:, 0] + b[:, 0], a[:, 1] - b[:, 1], a[:, 2]], 1)
    return {"a": a, "b": b}, score.argmax(1).astype(np.int32)


def np_logits(params, x):
    p = jax.tree_util.tree_map(np.asarray, params)
    return x["a"] @ p["a"]["w"] + x["b"] @ p["b"]["w"] + p["b"]["bias"]


def np_cross_entropy(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def test_two_input_dict_x_through_fit_matches_numpy():
    x, y = two_input_data()
    xv, yv = two_input_data(50, seed=1)
    result = train.fit(two_input(C), jnn.losses.softmax_cross_entropy, optax.adam(0.05), (x, y),
                       key=jax.random.key(0), epochs=15, batch_size=16, val_data=(xv, yv), eval_batch_size=16,
                       verbose=0)
    params = result.train_state.params
    logits = np_logits(params, xv)
    np.testing.assert_allclose(result.history["val_loss"][-1], np_cross_entropy(logits, yv).mean(), rtol=1e-5)
    np.testing.assert_allclose(result.history["val_accuracy"][-1], (logits.argmax(1) == yv).mean(), rtol=1e-6)
    assert result.history["val_accuracy"][-1] > 0.85  # linearly separable: it learned
    predicted = train.predict(two_input(C), params, {}, xv, batch_size=7)
    np.testing.assert_allclose(predicted, logits, rtol=1e-5, atol=1e-5)


def multi_output() -> jnn.Layer:
    return jnn.fan_out(jnn.dense(C), jnn.dense(1), merge=lambda outs: {"cls": outs[0], "reg": outs[1]})


def multi_loss(out, y):
    ce = jnn.losses.softmax_cross_entropy(out["cls"], y["cls"])
    mse = jnn.losses.mse(out["reg"], y["reg"])
    return ce + mse, {"ce": ce, "mse": mse}


def test_multi_output_dict_y_logs_and_val_split():
    x, labels = two_input_data()
    x = np.concatenate([x["a"], x["b"]], 1)
    y = {"cls": labels, "reg": (x[:, :1] * 2.0 - x[:, 1:2]).astype(np.float32)}
    metrics = {"acc": lambda o, t: jnn.metrics.accuracy(o["cls"], t["cls"])}
    model = multi_output()
    result = train.fit(model, multi_loss, optax.adam(0.05), (x, y), key=jax.random.key(1), epochs=20,
                       batch_size=16, val_split=0.25, metrics=metrics, eval_batch_size=10,
                       verbose=0)
    h = result.history
    assert {"loss", "ce", "mse", "acc", "val_loss", "val_ce", "val_mse", "val_acc"} <= set(h)
    assert h["mse"][-1] < 0.2 * h["mse"][0] and h["val_acc"][-1] > 0.8
    # the same split fit made, recomputed here; the validation logs against NumPy
    _, (xv, yv) = train.split_validation(x, y, 0.25, jax.random.split(jax.random.key(1))[1])
    assert len(xv) == 24 and yv["cls"].shape == (24,) and yv["reg"].shape == (24, 1)
    np.testing.assert_array_equal(np.asarray(yv["reg"]), np.asarray(xv[:, :1] * 2.0 - xv[:, 1:2]))  # rows stay paired
    p = jax.tree_util.tree_map(np.asarray, result.train_state.params)
    xv, yv = np.asarray(xv), jax.tree_util.tree_map(np.asarray, yv)
    logits = xv @ p["dense_0"]["w"] + p["dense_0"]["b"]
    reg = xv @ p["dense_1"]["w"] + p["dense_1"]["b"]
    ce, mse = np_cross_entropy(logits, yv["cls"]).mean(), ((reg - yv["reg"]) ** 2).mean()
    np.testing.assert_allclose([h["val_ce"][-1], h["val_mse"][-1], h["val_loss"][-1]], [ce, mse, ce + mse],
                               rtol=1e-5)
    out = train.predict(model, result.train_state.params, {}, xv, batch_size=5)
    np.testing.assert_allclose(out["reg"], reg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_eval_exact_over_pytrees_with_padding(fused):
    rng = np.random.default_rng(2)
    n = 7  # batch 3: 3 batches, 2 padded rows
    x = {"a": rng.normal(size=(n, 2)).astype(np.float32), "b": rng.normal(size=(n, 4)).astype(np.float32)}
    y = (rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 4, n).astype(np.int32))
    model = jnn.Layer(lambda key, x: ({}, {}), lambda p, s, x, **kw: ({"u": x["a"] * 2.0, "v": x["b"]}, s))

    def loss(out, y):
        sq = jnp.mean((out["u"] - y[0]) ** 2)
        return sq + jnp.mean(out["v"][:, 0]), {"sq": sq}

    metrics = {"acc": lambda o, t: jnn.metrics.accuracy(o["v"], t[1])}
    fn = train.make_eval_fn(model, loss, metrics=metrics, batch_size=3, fused=fused)
    got = (jax.jit(fn) if fused else fn)({}, {}, (x, y))
    sq = ((x["a"] * 2.0 - y[0]) ** 2).mean(1)
    np.testing.assert_allclose(got["sq"], sq.mean(), rtol=1e-6)
    np.testing.assert_allclose(got["loss"], (sq + x["b"][:, 0]).mean(), rtol=1e-6)
    np.testing.assert_allclose(got["acc"], (x["b"].argmax(1) == y[1]).mean(), rtol=1e-6)


def beta(step):
    return jnp.minimum(1.0, step / 10.0)


def annealed_loss(out, y, step):
    b = beta(step)
    return b * jnn.losses.mse(out, y), {"beta": b}


def test_loss_with_step_sees_steps_taken_and_logs_the_schedule():
    model, opt = jnn.dense(1), optax.sgd(0.1)
    x, y = jnp.ones((4, 2)), jnp.full((4, 1), 3.0)
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    step = jax.jit(train.make_train_step(model, annealed_loss, opt))
    ts1, logs = step(ts, (x, y))  # step 0: beta 0, so the gradient is zero and nothing moves
    assert float(logs["beta"]) == 0.0
    chex_equal = jax.tree_util.tree_map(np.array_equal, ts1.params, ts.params)
    assert all(jax.tree_util.tree_leaves(chex_equal))
    ts2, logs = step(ts1, (x, y))
    assert float(logs["beta"]) == pytest.approx(0.1)
    assert not np.array_equal(ts2.params["w"], ts1.params["w"])
    with pytest.raises(ValueError, match="the loss takes the step"):
        train.make_eval_fn(model, annealed_loss)(ts.params, ts.state, (x, y))


@pytest.mark.parametrize("fused", [True, False])
def test_fit_logs_annealing_schedule_for_train_and_validation(fused):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0]], np.float32)
    epochs, nb = 4, 40 // 16  # 2 steps per epoch, 8 examples skipped
    result = train.fit(jnn.dense(1), annealed_loss, optax.sgd(0.05), (x, y), key=jax.random.key(0),
                       epochs=epochs, batch_size=16, val_data=(x, y), metrics={}, fused=fused,
                       verbose=0)
    schedule = np.minimum(1.0, np.arange(epochs * nb) / 10.0)
    np.testing.assert_allclose(result.history["beta"], schedule.reshape(epochs, nb).mean(1), rtol=1e-6)
    # validation runs after the epoch, at train_state.step = epoch * nb
    np.testing.assert_allclose(result.history["val_beta"], np.minimum(1.0, np.arange(1, epochs + 1) * nb / 10.0),
                               rtol=1e-6)
    assert int(result.train_state.step) == epochs * nb


def test_head_swap_with_frozen_body_keeps_body_bit_identical():
    x, y = two_input_data()
    x = np.concatenate([x["a"], x["b"]], 1)
    body = jnn.serial(jnn.dense(16), jnn.relu(), name="body")
    pretrained = jnn.serial(body, jnn.dense(C))
    pre = train.fit(pretrained, jnn.losses.softmax_cross_entropy, optax.adam(0.02), (x, y),
                    key=jax.random.key(0), epochs=5, batch_size=16, verbose=0)
    # a new 2-class head on the pretrained body, both found by path with jnn.get
    new_model = jnn.serial(jnn.get(pretrained, "body"), jnn.dense(2))
    y2 = (y == 0).astype(np.int32)
    params, _ = new_model.init(jax.random.key(5), jnp.zeros((1, x.shape[1])))
    params = {**params, "body": jnn.get(pre.train_state.params, "body")}
    head_before = np.asarray(params["dense_0"]["w"]).copy()
    result = train.fit(new_model, jnn.losses.softmax_cross_entropy, train.freeze(optax.adam(0.05), "body/*"),
                       (x, y2), key=jax.random.key(1), epochs=10, batch_size=16, train_state=train.Start(params=params),
                       verbose=0)
    got = result.train_state.params
    for a, b in zip(jax.tree_util.tree_leaves(got["body"]), jax.tree_util.tree_leaves(pre.train_state.params["body"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # bit-identical
    assert not np.allclose(got["dense_0"]["w"], head_before)
    assert result.history["accuracy"][-1] > 0.85 and int(result.train_state.step) == 10 * (N // 16)


def test_fit_params_errors():
    model = jnn.serial(jnn.dense(4), jnn.dense(2))
    x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    ts = train.init_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 3)))
    kw = dict(key=jax.random.key(0), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="train_state .* or params/state .*not both"):
        train.fit(model, jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (x, y), train_state=train.Start(ts, params=params), **kw)
    bad = {**params, "dense_1": {"w": jnp.zeros((4, 5)), "b": jnp.zeros(5)}}
    with pytest.raises(ValueError, match=r"params\['dense_1'\]\['b'\] has shape \(5,\), the model expects \(2,\)"):
        train.fit(model, jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (x, y), train_state=train.Start(params=bad), **kw)
    missing = r"structure: missing \['dense_1'\]\['b'\], \['dense_1'\]\['w'\]; unexpected nothing"
    with pytest.raises(ValueError, match=missing):
        train.fit(model, jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (x, y),
                  train_state=train.Start(params={"dense_0": params["dense_0"]}), **kw)


def test_mismatched_leaf_counts_name_the_leaf():
    x = {"a": np.ones((10, 2), np.float32), "b": np.ones((9, 2), np.float32)}
    with pytest.raises(ValueError, match=r"fit train_data: .*got 10 and 9 \(x\['a'\] has 10, x\['b'\] has 9"):
        train.fit(two_input(2), jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (x, np.zeros(10, np.int32)),
                  key=jax.random.key(0), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"y\[1\] has 4"):
        train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (np.ones((5, 2)), (np.ones((5, 1)), np.ones((4, 1)))),
                  key=jax.random.key(0), epochs=1, verbose=0)


def test_population_with_dict_input_and_loss_logs():
    x, y = two_input_data()

    def loss(out, y, step):
        ce = jnn.losses.softmax_cross_entropy(out, y)
        return ce, {"ce_copy": ce, "step_seen": step.astype(jnp.float32)}

    result = train.fit_population(lambda hp: two_input(C), loss,
                                  lambda hp: optax.inject_hyperparams(optax.adam)(learning_rate=hp["lr"]),
                                  (x, y), hparams={"lr": jnp.array([0.0, 0.05])}, key=jax.random.key(0),
                                  epochs=6, batch_size=16, val_data=(x, y),
                                  metrics={"accuracy": jnn.metrics.accuracy})   # a custom loss: no default metrics
    h = result.history
    np.testing.assert_allclose(h["ce_copy"], h["loss"], rtol=1e-6)
    np.testing.assert_allclose(h["step_seen"][:, 0], np.arange(6) * 6 + 2.5)  # mean of steps 6e..6e+5
    assert h["val_accuracy"][-1, 1] > 0.85 and h["val_accuracy"][-1, 1] > h["val_accuracy"][-1, 0] + 0.2
    member = result.member(1)
    logits = np_logits(member.train_state.params, x)
    np.testing.assert_allclose(h["val_loss"][-1, 1], np_cross_entropy(logits, y).mean(), rtol=1e-5)


def gated(features: int) -> jnn.Layer:
    """A custom layer with kernels named ``wa``/``wg``: ``(x @ wa) * sigmoid(x @ wg)``."""
    def init(key, x):
        ka, kg = jax.random.split(key)
        return {"wa": jax.random.normal(ka, (x.shape[-1], features)),
                "wg": jax.random.normal(kg, (x.shape[-1], features)), "b": jnp.ones(features)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return (x @ params["wa"]) * jax.nn.sigmoid(x @ params["wg"]) + params["b"], state

    return jnn.Layer(init, apply, "gated")


def test_default_weight_selection_never_skips_a_custom_kernel():
    model = jnn.serial(jnn.dense(3), gated(2))
    params, _ = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"would skip the weights \['gated_0/wa', 'gated_0/wg'\]"):
        train.penalty(l2=1.0)(params)
    with pytest.raises(ValueError, match="include=\\['w', 'wa', 'wg'\\]"):
        optax.adamw(0.1, weight_decay=0.1, mask=jnn.tree.mask).init(params)
    p = jax.tree_util.tree_map(np.asarray, params)
    expected = sum((p[k][n] ** 2).sum() for k, n in [("dense_0", "w"), ("gated_0", "wa"), ("gated_0", "wg")])
    got = train.penalty(l2=1.0, include=["w", "wa", "wg"])(params)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # an explicit exclude is a decision too: only the dense kernel then
    np.testing.assert_allclose(jnn.losses.l2_penalty(params, exclude=["wa", "wg"]), (p["dense_0"]["w"] ** 2).sum(),
                               rtol=1e-6)
    # embedding tables are left out on purpose, without an error
    lm_params, _ = jax.eval_shape(jnn.decoder_lm(11, 1, 2, 8, 16, 6).init, jax.random.key(0),
                                  jnp.zeros((1, 6), jnp.int32))
    assert not jnn.tree.mask(lm_params)["embedding"]["embedding"]


def test_stepwise_epoch_takes_pytrees_and_matches_a_numpy_sgd_epoch():
    x, y = two_input_data(40)
    model, opt = two_input(C), optax.sgd(0.5)
    ts = train.init_train_state(model, opt, jax.random.key(3), jax.tree_util.tree_map(lambda a: a[:8], x))
    step = train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={})
    order = train.epoch_order(jax.random.split(ts.key)[1], 40, 8)  # the order the epoch draws
    new_ts, logs = train.make_stepwise_epoch(step, 40, 8)(ts, (x, y))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), ts.params)
    losses = []
    for idx in np.asarray(order):  # softmax-regression SGD by hand
        xa, xb, t = x["a"][idx], x["b"][idx], y[idx]
        logits = xa @ p["a"]["w"] + xb @ p["b"]["w"] + p["b"]["bias"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        losses.append(np_cross_entropy(logits, t).mean())
        g = (probs - np.eye(C)[t]) / len(t)
        p = {"a": {"w": p["a"]["w"] - 0.5 * xa.T @ g},
             "b": {"w": p["b"]["w"] - 0.5 * xb.T @ g, "bias": p["b"]["bias"] - 0.5 * g.sum(0)}}
    np.testing.assert_allclose(logs["loss"], np.mean(losses), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new_ts.params), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
