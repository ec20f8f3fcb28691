"""jnn.compare.models: names the layer where a planted difference starts; its numbers against direct ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


def _net(eps3):
    """Three layer norms, the third inside a scanned (jnn.repeat) residual block."""
    block = jnn.residual(jnn.serial(jnn.dense(8), jnn.tanh(), jnn.layer_norm(epsilon=eps3)))
    return jnn.serial(jnn.dense(8), jnn.layer_norm(), jnn.residual(jnn.serial(jnn.dense(8), jnn.layer_norm())),
                      jnn.repeat(block, 2), jnn.dense(2))


def test_changed_epsilon_in_the_third_norm_is_named_forward_and_rows_before_it_agree():
    x = jax.random.normal(jax.random.key(1), (4, 3))
    params, state = _net(1e-5).init(jax.random.key(0), x)
    found = jnn.compare.models((_net(1e-5), params, state), (_net(1e-1), params, state), x)
    third = "repeat_0/residual/serial_0/serial_0/layer_norm_0#0"
    assert found.first_forward == third
    paths = list(found.rows)
    assert paths.index(third) > paths.index("residual_0/serial_0/serial_0/layer_norm_0") > paths.index("layer_norm_0")
    for path in paths[:paths.index(third)]:
        assert found.rows[path].forward == (0.0, 0.0), path
    assert found.rows["dense_1"].forward[0] > 1e-3
    assert found.first_backward is not None and "<- forward" in str(found)
    same = jnn.compare.models((_net(1e-5), params, state), (_net(1e-5), params, state), x)
    assert same.first_forward is None and same.first_backward is None


def test_bfloat16_overflow_is_named():
    model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.stateless("amplify", lambda h: h * 3.4e38), jnn.dense(2))
    params, state = model.init(jax.random.key(0), jnp.zeros((2, 4)))
    params["dense_0"] = {"w": jnp.eye(4), "b": jnp.zeros(4)}   # amplify gets exact ones
    # 3.4e38 is below float32's largest value (3.40e38) and rounds to inf in bfloat16 (largest 3.39e38)
    found = jnn.compare.models((model, params, state), (model, params, state, jnp.bfloat16), jnp.ones((2, 4)),
                               rtol=1e-2)
    assert found.first_forward == "amplify_0"
    assert found.rows["relu_0"].forward == (0.0, 0.0)
    assert found.rows["amplify_0"].forward[0] == np.inf


def test_numbers_against_a_direct_computation():
    model = jnn.serial(jnn.dense(3), jnn.tanh(), jnn.dense(2))
    x = jax.random.normal(jax.random.key(2), (5, 4))
    pa, state = model.init(jax.random.key(0), x)
    pb = jax.tree_util.tree_map(lambda a: a + 0.01 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), pa)
    loss = lambda y: jnp.sum(y ** 2)
    found = jnn.compare.models((model, pa, state), (model, pb, state), x, loss=loss)

    ya, yb = (model.apply(p, state, x)[0] for p in (pa, pb))
    err = float(jnp.max(jnp.abs(ya - yb)))
    np.testing.assert_allclose(found.rows["dense_1"].forward, (err, err / float(jnp.max(jnp.abs(ya)))), rtol=1e-6)
    np.testing.assert_allclose(found.rows["dense_1"].cotangent[0], float(jnp.max(jnp.abs(2 * ya - 2 * yb))),
                               rtol=1e-5)
    ga, gb = (jax.grad(lambda p: loss(model.apply(p, state, x)[0]))(p) for p in (pa, pb))
    want = max(float(jnp.max(jnp.abs(ga["dense_1"][k] - gb["dense_1"][k]))) for k in ("w", "b"))
    np.testing.assert_allclose(found.rows["dense_1"].grad[0], want, rtol=1e-5)
    # the cotangent of tanh's output: the gradient of the rest of the network at that output
    hidden = lambda p: jnp.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
    rest = lambda p, h: loss(h @ p["dense_1"]["w"] + p["dense_1"]["b"])
    ca, cb = (jax.grad(rest, argnums=1)(p, hidden(p)) for p in (pa, pb))
    np.testing.assert_allclose(found.rows["tanh_0"].cotangent[0], float(jnp.max(jnp.abs(ca - cb))), rtol=1e-5)


def test_reference_outputs_as_a_dict_and_a_bad_side():
    model = jnn.serial(jnn.dense(3), jnn.relu(), jnn.dense(2))
    x = jnp.ones((2, 4))
    params, state = model.init(jax.random.key(0), x)
    _, _, outputs = jnn.capture(model, params, state, x, ["dense_0", "relu_0", "dense_1"])
    outputs["dense_1"] = outputs["dense_1"] + 1.0   # a wrong mapping in the last layer
    found = jnn.compare.models((model, params, state), outputs, x)
    assert found.first_forward == "dense_1" and found.rows["dense_0"].forward == (0.0, 0.0)
    assert found.rows["dense_1"].cotangent is None and found.first_backward is None
    assert jnn.compare.models(outputs, (model, params, state), x).first_forward == "dense_1"   # either side
    with pytest.raises(TypeError, match="jnn.compare.models: a side is"):
        jnn.compare.models((model, params), outputs, x)


def test_the_experiment_names_the_planted_torch_mapping_mistake(capsys):
    pytest.importorskip("torch")
    from experiments_path import load
    results = load("localize").main(load("localize").Config(batch=2))
    assert results["right mapping"]["first_forward"] is None
    assert results["flattened_chw left out"]["first_forward"] == "dense_0"
    assert all(results["flattened_chw left out"]["errors"][p][0] < 1e-5 for p in ("conv_0", "max_pool_1"))
    assert "<- forward" in capsys.readouterr().out
