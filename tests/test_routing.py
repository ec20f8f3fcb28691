"""Dict inputs and outputs through the combinators: towers, heads, select, merge.

Values are checked against the same computation written by hand from the params (NumPy), so a
routing mistake (an entry sent to the wrong tower, a merge in another order) fails.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

KEY = jax.random.key(0)


def two_tower():
    return jnn.serial(jnn.towers(image=jnn.serial(jnn.flatten(), jnn.dense(6)), extra=jnn.dense(3)),
                      jnn.merge("concat"), jnn.relu(), jnn.heads(label=jnn.dense(4), score=jnn.dense(1)))


def batch(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, 4, 4, 1)).astype(np.float32),
            "extra": rng.normal(size=(n, 2)).astype(np.float32)}


def reference(params, x):
    t = params["towers_0"]
    image = x["image"].reshape(len(x["image"]), -1) @ t["image"]["dense_0"]["w"] + t["image"]["dense_0"]["b"]
    extra = x["extra"] @ t["extra"]["w"] + t["extra"]["b"]
    h = np.maximum(np.concatenate([extra, image], axis=-1), 0)      # sorted keys: extra, then image
    heads = params["heads_0"]
    return {k: h @ heads[k]["w"] + heads[k]["b"] for k in ("label", "score")}


def test_two_tower_model_matches_a_hand_computation_eagerly_and_under_jit():
    model, x = two_tower(), batch()
    params, state = model.init(KEY, jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x))
    assert params["towers_0"]["image"]["dense_0"]["w"].shape == (16, 6)
    assert params["heads_0"]["label"]["w"].shape == (9, 4)
    want = reference(jax.tree_util.tree_map(np.asarray, params), x)
    for run in (model.apply, jax.jit(model.apply)):
        y, _ = run(params, state, x)
        assert sorted(y) == ["label", "score"]
        for k in want:
            np.testing.assert_allclose(y[k], want[k], rtol=1e-5, atol=1e-6)


def test_select_and_tuple_inputs():
    x = (jnp.ones((2, 3)), jnp.zeros((2, 5)))
    assert jnn.select(1).apply({}, {}, x)[0].shape == (2, 5)
    model = jnn.serial(jnn.select("extra"), jnn.dense(2))
    params, state = model.init(KEY, batch())
    np.testing.assert_allclose(model.apply(params, state, batch())[0],
                               batch()["extra"] @ params["dense_0"]["w"] + params["dense_0"]["b"], rtol=1e-5)
    assert jnn.select("image").config == {"key": "image"}
    with pytest.raises(ValueError, match=r"^select: expected a dict \(or tuple\) input with entry 2, got a tuple"):
        jnn.select(2).apply({}, {}, x)


def test_merge_modes_and_their_errors():
    a, b = jnp.full((2, 3), 2.0), jnp.full((2, 3), 5.0)
    assert float(jnn.merge("add").apply({}, {}, (a, b))[0][0, 0]) == 7.0
    assert float(jnn.merge("multiply").apply({}, {}, {"x": a, "y": b})[0][0, 0]) == 10.0
    assert float(jnn.merge(lambda ys: ys[0] - ys[1]).apply({}, {}, (a, b))[0][0, 0]) == -3.0
    with pytest.raises(ValueError, match=r"^merge: how='add' needs entries of one shape, got \[\(2, 3\), \(2, 1\)\]"):
        jnn.merge("add").apply({}, {}, (a, jnp.ones((2, 1))))
    with pytest.raises(ValueError, match=r"^merge: how must be one of \['add', 'concat', 'multiply'\] or a callable"):
        jnn.merge("mean")
    with pytest.raises(ValueError, match=r"^merge: expected a non-empty dict or tuple of arrays, got ArrayImpl"):
        jnn.merge().apply({}, {}, a)


def test_towers_name_the_missing_entry_at_init_and_apply():
    model = jnn.towers(image=jnn.dense(2), extra=jnn.dense(2))
    with pytest.raises(ValueError, match=r"towers: expected a dict \(or tuple\) input with entry 'image', "
                                         r"got \['extra'\]"):
        model.init(KEY, {"extra": jnp.zeros((1, 2))})
    with pytest.raises(ValueError, match=r"^towers: expected at least one layer, given as key=layer, got none"):
        jnn.towers()


def test_two_tower_summary_capture_and_check_layer():
    model, x = two_tower(), batch()
    table = jnn.summary(model, x)
    assert "towers_0/image/dense_0" in table and "heads_0/score" in table
    params, state = model.init(KEY, x)
    _, _, seen = jnn.capture(model, params, state, x, ["towers_0/extra", "merge_0"])
    np.testing.assert_allclose(seen["towers_0/extra"], x["extra"] @ params["towers_0"]["extra"]["w"]
                               + params["towers_0"]["extra"]["b"], rtol=1e-5)
    assert seen["merge_0"].shape == (5, 9)


def test_two_tower_trains_with_fit_and_freeze():
    model, x = two_tower(), batch(64, seed=1)
    y = {"label": (x["extra"][:, 0] > 0).astype(np.int32), "score": x["extra"][:, 1:2]}

    def loss(out, target):
        ce = jnn.losses.softmax_cross_entropy(out["label"], target["label"])
        return ce + jnp.mean((out["score"] - target["score"]) ** 2)

    optimizer = jnn.train.freeze(optax.adam(0.05), ["towers_0/image/*"])
    params, state = model.init(KEY, x)
    result = jnn.train.fit(model, loss, optimizer, (x, y), key=KEY, epochs=30, batch_size=16, metrics={},
                           train_state=jnn.train.Start(params=params, state=state), verbose=0)
    history = result.history["loss"]
    assert history[-1] < 0.5 * history[0]
    end = result.train_state.params
    chex.assert_trees_all_equal(end["towers_0"]["image"], params["towers_0"]["image"])   # frozen: unmoved
    assert not np.allclose(end["towers_0"]["extra"]["w"], params["towers_0"]["extra"]["w"])


def test_composite_infers_shapes_abstractly_and_keeps_uncalled_state():
    concrete_calls = []

    def spy_apply(params, state, x, *, key=None, train=False):
        if not isinstance(x, jax.core.Tracer):
            concrete_calls.append(x.shape)
        return x * 2.0, state

    spy = jnn.Layer(lambda key, example: ({}, {}), spy_apply, "spy")

    def forward(call, x):
        return call("head", jnp.concatenate([call("spy", x["a"]), x["b"]], axis=-1))

    model = jnn.composite(forward, {"spy": spy, "head": jnn.dense(3)}, kind="pair")
    x = {"a": jnp.ones((2, 4)), "b": jnp.ones((2, 1))}
    params, state = model.init(KEY, x)
    assert concrete_calls == [] and params["head"]["w"].shape == (5, 3)     # nothing ran concretely
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, jnp.concatenate([2 * x["a"], x["b"]], -1) @ params["head"]["w"]
                               + params["head"]["b"], rtol=1e-6)
    assert concrete_calls == [(2, 4)]
    lazy = jnn.composite(lambda call, x: x, {"unused": jnn.dense(2)})
    with pytest.raises(ValueError, match=r"^composite: its forward never calls child 'unused'"):
        lazy.init(KEY, jnp.ones((1, 2)))
    wrong = jnn.composite(lambda call, x: call("nope", x), {"head": jnn.dense(2)})
    with pytest.raises(KeyError, match=r"composite: no child 'nope'; its children are \['head'\]"):
        wrong.init(KEY, jnp.ones((1, 2)))
