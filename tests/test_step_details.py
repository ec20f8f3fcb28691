"""jnn.train.step in detail: tests written against the mutants of step.py that the suite used to
miss (issue #21, tests/MUTATION.md). Each value is fixed by NumPy or by hand, with the option in
question set where a plausible bug gives another answer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

PARAMS = {"enc": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])},
          "dec": {"w": jnp.array([3.0, -4.0]), "gain": jnp.array([0.5])}}


@pytest.mark.parametrize("l1, l2", [(-0.1, 0.0), (0.0, -0.1)])
def test_penalty_rejects_either_coefficient_negative(l1, l2):
    with pytest.raises(ValueError, match=rf"^penalty: l1 and l2 must be >= 0, got l1={l1}, l2={l2}$"):
        jnn.train.penalty(l1=l1, l2=l2)


@pytest.mark.parametrize("selection, chosen", [
    (dict(include=("w", "gain")), [[1.0, -2.0], [3.0, -4.0], [0.5]]),   # include, as given
    (dict(exclude=("dec/*",)), [[1.0, -2.0]]),                            # the default include, minus dec
    (dict(include=("enc/*",), exclude=("b",)), [[1.0, -2.0]]),           # both
])
def test_penalty_selects_leaves_by_include_and_exclude_for_l1_and_l2(selection, chosen):
    values = np.concatenate([np.ravel(c) for c in chosen])
    for l1, l2 in [(0.3, 0.0), (0.0, 0.7), (0.3, 0.7)]:
        got = jnn.train.penalty(l1=l1, l2=l2, **selection)(PARAMS)
        np.testing.assert_allclose(got, l1 * np.abs(values).sum() + l2 * np.square(values).sum(), rtol=1e-6)


def test_penalty_of_float32_params_is_float32_even_with_x64_enabled():
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), PARAMS)
        assert jnn.train.penalty(l1=0.5, l2=0.5)(params).dtype == jnp.float32
        assert jnn.train.penalty()(params).dtype == jnp.float32          # nothing to add: a float32 zero


@pytest.mark.parametrize("name", ["epoch_order", "make_train_epoch", "make_stepwise_epoch"])
def test_epoch_builders_name_themselves_in_their_batch_size_errors(name):
    step = jnn.train.make_train_step(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1))
    build = {"epoch_order": lambda n, b: jnn.train.epoch_order(jax.random.key(0), n, b),
             "make_train_epoch": lambda n, b: jnn.train.make_train_epoch(step, n, b),
             "make_stepwise_epoch": lambda n, b: jnn.train.make_stepwise_epoch(step, n, b)}[name]
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"^{name}: batch_size must be positive, got {bad}$"):
            build(8, bad)
    with pytest.raises(ValueError, match=rf"^{name}: 3 training examples is fewer than one batch of 4; "
                                         r"lower batch_size$"):
        build(3, 4)
    build(3, 1)                                             # one example a batch is allowed
    build(4, 4)                                             # and one batch of all of them


def _eval_setup(n):
    model = jnn.dense(2)
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    params, state = model.init(jax.random.key(0), x[:1])
    out = x @ np.asarray(params["w"]) + np.asarray(params["b"])
    return model, params, state, (x, y), out


def _scans(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [e.params for e in jaxpr.eqns if e.primitive.name == "scan"]


def test_eval_fn_by_default_runs_batches_of_1000_in_one_scan():
    model, params, state, data, _ = _eval_setup(2001)
    scans = _scans(jnn.train.make_eval_fn(model, jnn.losses.mse), params, state, data)
    assert [s["length"] for s in scans] == [3]                    # ceil(2001 / 1000) batches, one scan
    assert not _scans(jnn.train.make_eval_fn(model, jnn.losses.mse, fused=False), params, state, data)


def test_eval_fn_passes_the_step_to_a_loss_that_takes_one():
    model, params, state, data, out = _eval_setup(7)
    per_example_mse = np.mean((out - data[1]) ** 2, axis=1)

    def annealed(outputs, y, step):
        value = jnn.losses.mse(outputs, y)
        return value * step, {"raw": value}

    for fused in (True, False):
        evaluate = jnn.train.make_eval_fn(model, annealed, batch_size=3, fused=fused)
        got = evaluate(params, state, data, step=3)
        np.testing.assert_allclose(got["loss"], 3 * per_example_mse.mean(), rtol=1e-5)
        np.testing.assert_allclose(got["raw"], per_example_mse.mean(), rtol=1e-5)
        message = (r"^make_eval_fn: the loss takes the step; call evaluate\(params, state, data, "
                   r"step=\.\.\.\) \(e\.g\. step=train_state\.step\)$")
        with pytest.raises(ValueError, match=message):
            evaluate(params, state, data)


def test_eval_fn_rejects_loss_logs_named_like_a_metric():
    model, params, state, data, _ = _eval_setup(4)
    loss = lambda outputs, y: (jnn.losses.mse(outputs, y), {"mae": jnp.float32(0.0)})
    evaluate = jnn.train.make_eval_fn(model, loss, metrics={"mae": lambda o, t: jnp.mean(jnp.abs(o - t))})
    with pytest.raises(ValueError, match=r"^loss: the logs it returns use the reserved name\(s\) \['mae'\]"):
        evaluate(params, state, data)


def test_eval_fn_runs_the_model_in_evaluation_mode_with_its_state():
    """Batch norm normalizes with its running statistics (not the batch's), dropout is the
    identity: the NumPy reference below gives another value for either mistake."""
    model = jnn.serial(jnn.dense(4), jnn.batch_norm(), jnn.dropout(0.5), jnn.dense(2))
    _, _, _, (x, y), _ = _eval_setup(6)
    params, state = model.init(jax.random.key(0), x[:1])
    rng = np.random.default_rng(2)
    state = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype), state)
    d0, bn, d1 = (jax.tree_util.tree_map(np.asarray, params[k]) for k in ("dense_0", "batch_norm_0", "dense_1"))
    mean, var = (np.asarray(state["batch_norm_0"][k]) for k in ("mean", "var"))
    h = x @ d0["w"] + d0["b"]
    h = (h - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["offset"]
    out = h @ d1["w"] + d1["b"]
    expected = np.mean((out - y) ** 2)
    for fused in (True, False):
        got = jnn.train.make_eval_fn(model, jnn.losses.mse, batch_size=4, fused=fused)(params, state, (x, y))
        np.testing.assert_allclose(got["loss"], expected, rtol=1e-5)


def test_eval_fn_over_a_mesh_gives_the_same_exact_means():
    model, params, state, data, out = _eval_setup(7)
    mesh = jnn.parallel.make_mesh()
    for fused in (True, False):
        got = jnn.train.make_eval_fn(model, jnn.losses.mse, batch_size=3, fused=fused, mesh=mesh)(params, state, data)
        np.testing.assert_allclose(got["loss"], np.mean((out - data[1]) ** 2), rtol=1e-5)


def test_train_epoch_over_a_one_device_mesh_equals_no_mesh_and_names_a_bad_mesh():
    model, opt = jnn.dense(1), optax.sgd(0.1)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 2)).astype(np.float32), rng.normal(size=(8, 1)).astype(np.float32)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
    mesh = jnn.parallel.make_mesh()
    step = jnn.train.make_train_step(model, jnn.losses.mse, opt)
    meshed_step = jnn.train.make_train_step(model, jnn.losses.mse, opt, mesh=mesh)
    a = jax.jit(jnn.train.make_train_epoch(step, 8, 4))(ts, (x, y))[0]
    b = jax.jit(jnn.train.make_train_epoch(meshed_step, 8, 4, mesh=mesh))(ts, (x, y))[0]
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-6)
    with pytest.raises(TypeError, match=r"^make_train_epoch: mesh must be a jax.sharding.Mesh .*, got str$"):
        jnn.train.make_train_epoch(step, 8, 4, mesh="data")


def test_train_step_passes_the_step_to_a_loss_that_takes_one_and_names_a_bad_mesh():
    """The step a loss sees is the number of optimizer steps taken before it: with
    loss = step * mse and SGD, the first step leaves the params alone and the second moves
    them by lr * 1 * grad(mse), checked against NumPy."""
    model, opt = jnn.dense(1), optax.sgd(0.1)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 1)).astype(np.float32)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
    w0, b0 = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])

    def annealed(outputs, y, step):
        value = jnn.losses.mse(outputs, y)
        return value * step, {"seen_step": step.astype(jnp.float32)}

    step = jax.jit(jnn.train.make_train_step(model, annealed, opt))
    ts, first = step(ts, (x, y))
    np.testing.assert_array_equal(ts.params["w"], w0)          # zero loss at step 0: no change
    ts, second = step(ts, (x, y))
    residual = x @ w0 + b0 - y                                 # d mse / d out = 2 * residual / size
    np.testing.assert_allclose(ts.params["w"], w0 - 0.1 * x.T @ (2 * residual / residual.size), rtol=1e-5)
    assert (float(first["seen_step"]), float(second["seen_step"])) == (0.0, 1.0)
    with pytest.raises(TypeError, match=r"^make_train_step: mesh must be a jax.sharding.Mesh .*, got str$"):
        jnn.train.make_train_step(model, jnn.losses.mse, opt, mesh="data")


def test_eval_reads_a_list_of_labels_as_one_array():
    """Only dicts and tuples are containers in data: labels given as a Python list are one
    array of labels, not a list of scalar leaves."""
    model, params, state, (x, y), out = _eval_setup(5)
    for fused in (True, False):
        evaluate = jnn.train.make_eval_fn(model, jnn.losses.mse, batch_size=2, fused=fused)
        np.testing.assert_allclose(evaluate(params, state, (x, y.tolist()))["loss"], np.mean((out - y) ** 2),
                                   rtol=1e-5)


def test_init_train_state_splits_the_key_between_init_and_training():
    """Params come from the first half of ``split(key)``, the training key is the second half
    (so dropout masks are not drawn from the key that drew the weights); the step is an int32 0
    and the optimizer state is the optimizer's own init of those params."""
    model, opt, key = jnn.serial(jnn.dense(3), jnn.dropout(0.5), jnn.dense(1)), optax.adam(1e-3), jax.random.key(7)
    ts = jnn.train.init_train_state(model, opt, key, jnp.zeros((2, 4)))
    init_key, train_key = jax.random.split(key)
    params, _ = model.init(init_key, jnp.zeros((2, 4)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, ts.params, params)
    np.testing.assert_array_equal(jax.random.key_data(ts.key), jax.random.key_data(train_key))
    assert ts.step.dtype == jnp.int32 and ts.step.shape == () and int(ts.step) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, ts.opt_state, opt.init(params))


def _one_step(loss, model=None):
    model = model or jnn.dense(2)
    x = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    y = np.random.default_rng(6).normal(size=(4, 2)).astype(np.float32)
    ts = jnn.train.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x[:1])
    return jax.jit(jnn.train.make_train_step(model, loss, optax.sgd(0.1)))(ts, (x, y))[1]


def test_train_step_rejects_a_loss_that_returns_a_bad_pair_or_reserved_logs():
    mse = jnn.losses.mse
    with pytest.raises(TypeError, match=r"^loss must return a scalar or a pair \(loss, \{name: scalar\}\), got a "
                                        r"tuple of 3 whose second item is \w+"):
        _one_step(lambda o, y: (mse(o, y), mse(o, y), mse(o, y)))
    with pytest.raises(TypeError, match=r"^loss must return a scalar or a pair \(loss, \{name: scalar\}\), got a "
                                        r"tuple of 2 whose second item is list\b"):
        _one_step(lambda o, y: (mse(o, y), [mse(o, y)]))
    with pytest.raises(ValueError, match=r"^loss: the logs it returns use the reserved name\(s\) \['loss'\] "):
        _one_step(lambda o, y: (mse(o, y), {"loss": mse(o, y)}))


def test_train_step_adds_a_loss_s_logs_given_as_any_mapping():
    import types
    logs = _one_step(lambda o, y: (jnn.losses.mse(o, y), types.MappingProxyType({"double": 2 * jnn.losses.mse(o, y)})))
    np.testing.assert_allclose(logs["double"], 2 * logs["loss"], rtol=1e-6)


def test_train_step_computes_the_loss_on_float32_outputs_and_keeps_integer_outputs():
    """A model whose outputs are (bfloat16 values, int32 indices): the loss sees float32 values
    and the int32 indices unchanged."""
    model = jnn.serial(jnn.dense(2), jnn.stateless("split", lambda h: (h.astype(jnp.bfloat16), jnp.argmax(h, -1))))

    def loss(outputs, y):
        values, indices = outputs
        return jnn.losses.mse(values, y), {"values_f32": jnp.float32(values.dtype == jnp.float32),
                                           "indices_int32": jnp.float32(indices.dtype == jnp.int32)}

    logs = _one_step(loss, model)
    assert (float(logs["values_f32"]), float(logs["indices_int32"])) == (1.0, 1.0)


def test_train_step_calls_a_loss_without_a_signature_with_two_arguments():
    class Opaque:        # inspect.signature raises for it, as for some builtins and C callables
        __signature__ = "not a signature"

        def __call__(self, outputs, y):
            return jnn.losses.mse(outputs, y)

    logs = _one_step(Opaque())
    assert np.isfinite(float(logs["loss"]))


def test_train_step_rejects_loss_logs_named_like_a_metric():
    model, opt = jnn.dense(2), optax.sgd(0.1)
    loss = lambda outputs, y: (jnn.losses.mse(outputs, y), {"mae": jnp.float32(0.0)})
    step = jnn.train.make_train_step(model, loss, opt, metrics={"mae": lambda o, t: jnp.mean(jnp.abs(o - t))})
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"^loss: the logs it returns use the reserved name\(s\) \['mae'\]"):
        step(ts, (jnp.zeros((4, 3)), jnp.zeros((4, 2))))


def test_the_step_gives_the_model_fold_in_of_key_and_step_and_keeps_the_key():
    seen = []

    def probe(params, state, x, *, key=None, train=False):
        seen.append(key)
        return x, state

    model = jnn.serial(jnn.Layer(lambda key, x: ({}, {}), probe, "probe", None), jnn.dense(1))
    ts = jnn.train.init_train_state(model, optax.sgd(0.1), jax.random.key(3), jnp.zeros((2, 4)))
    ts = ts._replace(step=jnp.int32(5))
    new, _ = jnn.train.make_train_step(model, jnn.losses.mse, optax.sgd(0.1))(ts, (jnp.ones((2, 4)), jnp.ones((2, 1))))
    (given,) = {tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in seen if k is not None}
    expected = jax.random.key_data(jax.random.fold_in(jax.random.fold_in(ts.key, 5), 0))  # serial's child 0
    assert given == tuple(np.asarray(expected).ravel())
    np.testing.assert_array_equal(jax.random.key_data(new.key), jax.random.key_data(ts.key))
    assert int(new.step) == 6
    np.testing.assert_array_equal(jax.random.key_data(jnn.train.step_key(ts)),
                                  jax.random.key_data(jax.random.fold_in(ts.key, 5)))


def test_a_model_that_draws_nothing_compiles_to_a_step_without_random_bits():
    # The unused step key is dead code, so XLA drops its threefry; with dropout it stays.
    def compiled(model):
        opt = optax.adam(1e-3)
        ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((8, 4)))
        step = jax.jit(jnn.train.make_train_step(model, jnn.losses.mse, opt))
        return step.lower(ts, (jnp.ones((8, 4)), jnp.ones((8, 1)))).compile().as_text()

    assert "threefry" not in compiled(jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(1)))
    assert "threefry" in compiled(jnn.serial(jnn.dense(8), jnn.dropout(0.5), jnn.dense(1)))
