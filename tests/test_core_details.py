"""The core's kinds and names, indexing, merges and error messages, pinned exactly.

Each test here was written against mutants of jnn/core.py that survived the rest of the suite
(tests/MUTATION.md): a wrong kind renames every params key a user has saved, and a wrong label
sends an error message to the wrong layer.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

KEY = jax.random.key(0)


def test_kinds_and_names_become_the_params_keys():
    model = jnn.serial(jnn.identity(), jnn.residual(jnn.dense(2)), jnn.fan_out(jnn.dense(2), jnn.identity()),
                       jnn.residual(jnn.dense(2), name="skip"), jnn.named("head", jnn.dense(1)))
    assert list(model.children) == ["identity_0", "residual_0", "fan_out_0", "skip", "head"]
    assert [c.kind for c in model.children.values()] == ["identity", "residual", "fan_out", "residual", "dense"]
    params, _ = model.init(KEY, jnp.zeros((3, 2)))
    assert sorted(params) == ["fan_out_0", "head", "residual_0", "skip"]
    assert list(params["residual_0"]) == ["serial_0"] and list(params["fan_out_0"]) == ["dense_0"]
    assert jnn.identity(name="same").label == "same" and jnn.identity().label == "identity"
    assert jnn.residual(jnn.dense(2), name="skip").label == "skip"


def test_fan_out_keeps_a_stateful_branchs_state_at_init_and_apply():
    block = jnn.fan_out(jnn.batch_norm(momentum=0.5), jnn.dense(3), name="split")
    x = jax.random.normal(jax.random.key(1), (4, 3)) * 2.0 + 1.0
    params, state = block.init(KEY, x)
    assert jax.tree_util.tree_map(jnp.shape, state) == {"batch_norm_0": {"mean": (3,), "var": (3,)}}
    y, new_state = block.apply(params, state, x, train=True)
    xn = np.asarray(x, np.float64)
    dense = xn @ np.asarray(params["dense_0"]["w"]) + np.asarray(params["dense_0"]["b"])
    expected = (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5) + dense
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_state["batch_norm_0"]["mean"], 0.5 * xn.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new_state["batch_norm_0"]["var"], 0.5 + 0.5 * xn.var(0), rtol=1e-5)


def test_fan_out_merge_by_a_callable():
    block = jnn.fan_out(jnn.identity(), jnn.stateless("double", lambda x: 2 * x), merge=lambda ys: ys[1] - 3 * ys[0])
    y, _ = block.apply({}, {}, jnp.array([1.0, -2.0]))
    np.testing.assert_allclose(y, [-1.0, 2.0])


def test_fan_out_construction_errors():
    with pytest.raises(ValueError, match=r"^fan_out: expected at least two branches, got 1$"):
        jnn.fan_out(jnn.dense(2))
    with pytest.raises(TypeError, match=r"^fan_out: merge must be a string or a callable, got int$"):
        jnn.fan_out(jnn.dense(2), jnn.dense(2), merge=3)
    with pytest.raises(ValueError, match=r"^fan_out: merge='multiply' needs branch outputs of one shape, "
                                         r"got \[\(1, 2\), \(1, 3\)\]"):
        jnn.fan_out(jnn.dense(2), jnn.dense(3), merge="multiply").init(KEY, jnp.zeros((1, 4)))


@pytest.mark.parametrize("name, label", [(None, "fan_out"), ("split", "split")])
def test_fan_out_errors_name_the_block(name, label):
    def returns_a_namespace(key, example):
        return types.SimpleNamespace(shape=(2,))    # a shape but no dtype: not an array

    broken = jnn.Layer(returns_a_namespace, lambda p, s, x, *, key=None, train=False: (x, s), "broken")
    with pytest.raises(TypeError, match=rf"^\[broken_0\] {label}: layer 'broken' breaks the layer contract: its init "
                                        r"returned a SimpleNamespace, expected a pair"):
        jnn.fan_out(jnn.dense(2), broken, name=name).init(KEY, jnp.zeros((1, 2)))

    def apply_returns_y(params, state, x, *, key=None, train=False):
        return x

    no_state = jnn.Layer(lambda key, example: ({}, {}), apply_returns_y, "no_state")
    with pytest.raises(TypeError, match=rf"^\[no_state_0\] {label}: layer 'no_state' breaks the layer contract: its "
                                        r"apply returned a single array of shape \(1, 2\)"):
        jnn.fan_out(jnn.identity(), no_state, name=name).init(KEY, jnp.zeros((1, 2)))


@pytest.mark.parametrize("bad", ["", 3, "a/b"])
def test_named_rejects_empty_non_string_and_path_names(bad):
    with pytest.raises(ValueError, match=rf"^named: expected a non-empty name without '/', got {bad!r}$"):
        jnn.named(bad, jnn.dense(1))


def test_named_rejects_a_non_layer_naming_itself():
    with pytest.raises(TypeError, match=r"^named: expected a jnn.Layer, got int$"):
        jnn.named("x", 3)


def test_indexing_by_position_key_and_wrong_types():
    model = jnn.serial(jnn.dense(2), jnn.relu(), jnn.named("head", jnn.dense(1)))
    assert model[-3].kind == "dense" and model[2].name == "head" and model[-1].name == "head"
    with pytest.raises(IndexError, match=r"^serial: child index -4 out of range for its 3 children"):
        model[-4]
    with pytest.raises(IndexError, match=r"^serial: child index 3 out of range"):
        model[3]
    for index, type_name in [(1.0, "float"), (True, "bool"), (None, "NoneType")]:
        with pytest.raises(TypeError, match=rf"^serial: index a layer by a child's key \(str\) or position \(int\), "
                                            rf"got {type_name} \(layer\[i\] indexes children"):
            model[index]


def test_children_mapping_equality_hash_repr_and_missing_key():
    dense, relu = jnn.dense(2), jnn.relu()
    a = jnn.serial(dense, relu).children
    assert a == jnn.serial(dense, relu).children and hash(a) == hash(jnn.serial(dense, relu).children)
    assert a != jnn.serial(dense, jnn.tanh()).children
    assert a != {"dense_0": None, "relu_0": None}
    assert repr(a) == "Children(dense_0=dense, relu_0=relu)"
    with pytest.raises(KeyError, match=r"^'missing'$"):
        a["missing"]


def test_output_shape_without_running_the_layer():
    layer = jnn.dense(3)
    params, state = layer.init(KEY, jnp.zeros((2, 4)))
    out = jnn.output_shape(layer, params, state, jax.ShapeDtypeStruct((5, 4), jnp.bfloat16))
    assert (out.shape, out.dtype) == ((5, 3), jnp.bfloat16)
    with pytest.raises(TypeError, match=r"^expected an array or jax.ShapeDtypeStruct as the example input, got list"):
        jnn.output_shape(layer, params, state, [1.0, 2.0, 3.0, 4.0])
    norm = jnn.batch_norm()     # stateful: output_shape passes the state on
    params, state = norm.init(KEY, jnp.zeros((2, 4)))
    assert jnn.output_shape(norm, params, state, jnp.zeros((3, 4))).shape == (3, 4)


def test_fan_out_applies_in_evaluation_mode_by_default():
    block = jnn.fan_out(jnn.dropout(0.5), jnn.identity())
    x = jnp.arange(1.0, 7.0)
    np.testing.assert_array_equal(block.apply({}, {}, x)[0], 2 * x)   # dropout off: x + x
    trained, _ = block.apply({}, {}, x, key=KEY, train=True)
    assert set(np.unique(np.asarray(trained - x) / np.asarray(x))) <= {0.0, 2.0} and not np.allclose(trained, 2 * x)


def test_fan_out_names_itself_when_params_come_from_another_model():
    block = jnn.fan_out(jnn.dense(2), jnn.dense(2))
    params, state = block.init(KEY, jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"^fan_out: params lack 'dense_1' \(have: dense_0, head"):
        block.apply({"dense_0": params["dense_0"], "head": params["dense_1"]}, state, jnp.zeros((1, 2)))


def _counter():
    """A stateful leaf: counts its calls in its state; in training also returns x + count."""
    def apply(params, state, x, *, key=None, train=False):
        return (x + state["count"] if train else x), {"count": state["count"] + 1}
    return jnn.Layer(lambda key, example: ({}, {"count": jnp.zeros(())}), apply, "counter")


def test_serial_threads_each_childs_state_through_init_and_apply():
    model = jnn.serial(jnn.dense(2), _counter(), jnn.batch_norm(momentum=0.5), name="body")
    assert model.label == "body"
    x = jax.random.normal(jax.random.key(1), (4, 3))
    params, state = model.init(KEY, x)
    assert sorted(state) == ["batch_norm_0", "counter_0"]
    state = {**state, "counter_0": {"count": jnp.asarray(2.0)}}
    y, new_state = model.apply(params, state, x, train=True)
    h = np.asarray(x @ params["dense_0"]["w"] + params["dense_0"]["b"], np.float64) + 2.0
    np.testing.assert_allclose(y, (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5), rtol=1e-4, atol=1e-5)
    assert float(new_state["counter_0"]["count"]) == 3.0
    np.testing.assert_allclose(new_state["batch_norm_0"]["mean"], 0.5 * h.mean(0), rtol=1e-5, atol=1e-6)


def test_apply_child_routes_state_and_passes_non_dict_params_and_state_whole():
    counter = _counter()
    y, s = jnn.apply_child("c", counter, {}, {"c": {"count": jnp.asarray(5.0)}, "other": None}, jnp.ones(2),
                           train=True)
    np.testing.assert_allclose(y, [6.0, 6.0])
    assert float(s["count"]) == 6.0
    np.testing.assert_allclose(jnn.apply_child("c", counter, {}, {"c": {"count": jnp.asarray(5.0)}},
                                               jnp.ones(2))[0], [1.0, 1.0])   # train defaults to False
    scale = jnn.Layer(lambda key, example: (jnp.asarray(3.0), jnp.asarray(1.0)),
                      lambda p, s, x, *, key=None, train=False: (p * x + s, s), "scale")
    y, s = jnn.apply_child("scale", scale, jnp.asarray(3.0), jnp.asarray(1.0), jnp.ones(2))
    np.testing.assert_allclose(y, [4.0, 4.0])


def test_stateless_and_fan_out_keep_their_name_children_and_keywords():
    assert jnn.stateless("square", jnp.square, name="sq").label == "sq"
    np.testing.assert_allclose(jnn.stateless("square", jnp.square).apply({}, {}, jnp.array([3.0]))[0], [9.0])
    takes_lengths = jnn.Layer(lambda key, example: ({}, {}),
                              lambda p, s, x, *, key=None, train=False, lengths=None: (x, s), "masked",
                              keywords=frozenset({"lengths"}))
    block = jnn.fan_out(takes_lengths, jnn.identity(), name="both")
    assert block.label == "both" and block.keywords == frozenset({"lengths"})
    assert list(block.children) == ["masked_0", "identity_0"]


def test_serial_and_keyword_messages_exactly():
    with pytest.raises(ValueError, match=r"^serial: expected at least one layer, got none$"):
        jnn.serial()
    model = jnn.serial(jnn.dense(2), jnn.dense(2))
    params, state = model.init(KEY, jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"^serial: params lack 'dense_1' \(have: dense_0, head"):
        model.apply({"dense_0": params["dense_0"], "head": params["dense_1"]}, state, jnp.zeros((1, 2)))
    with pytest.raises(TypeError, match=r"^serial: unexpected keyword argument 'bar', 'foo': this model's apply "
                                        r"accepts key, train and no extra keywords \(a keyword reaches"):
        model.apply(params, state, jnp.zeros((1, 2)), foo=1, bar=2)


def test_an_apply_returning_an_array_of_two_rows_is_not_a_pair():
    two_rows = jnn.Layer(lambda key, example: ({}, {}), lambda p, s, x, *, key=None, train=False: x, "two_rows")
    with pytest.raises(TypeError, match=r"^\[two_rows_0\] serial: layer 'two_rows' breaks the layer contract: its "
                                        r"apply returned a single "
                                        r"array of shape \(2, 3\), expected a pair"):
        jnn.serial(two_rows).init(KEY, jnp.zeros((2, 3)))


def test_examples_and_children_that_are_not_what_they_claim():
    with pytest.raises(TypeError, match=r"^expected an array or jax.ShapeDtypeStruct as the example input, got "
                                        r"SimpleNamespace$"):
        jnn.dense(2).init(KEY, types.SimpleNamespace(shape=(1, 2)))   # a shape but no dtype
    with pytest.raises(TypeError, match=r"^serial: expected a jnn.Layer, got int$"):   # not callable: no hint
        jnn.serial(jnn.dense(2), 3)
    with pytest.raises(TypeError, match=r"^fan_out: expected a jnn.Layer, got function \(did you forget to call it"):
        jnn.fan_out(jnn.dense(2), jnn.relu)


def test_combinators_infer_a_childs_shape_in_shape_only_mode():
    """serial and fan_out learn a child's output shape by applying it without keywords, with
    ``core.inferring_shape()`` true (a layer needing a keyword stands in a placeholder then);
    it is false again afterwards and in every real apply."""
    from jnn import core
    seen = []

    def apply(params, state, x, *, key=None, train=False):
        seen.append(core.inferring_shape())
        return x, state

    probe = jnn.Layer(lambda key, x: ({}, {}), apply, "probe")
    for model in (jnn.serial(probe, jnn.dense(2)), jnn.fan_out(probe, jnn.dense(3))):
        seen.clear()
        params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
        assert seen == [True] and not core.inferring_shape()
        model.apply(params, state, jnp.zeros((1, 3)))
        assert seen == [True, False]


def _mlp():
    model = jnn.serial(jnn.dense(3), jnn.relu(), jnn.dense(2))
    params, state = model.init(KEY, jnp.zeros((4, 5)))
    return model, params, state


def test_wrong_params_are_named_before_the_layer_runs():
    """A child's params replaced by None, or one weight of the wrong shape, deep in a model: the
    message names the child and what its init gave, not the Python or XLA error it would hit."""
    model, params, state = _mlp()
    x = jnp.ones((4, 5))
    with pytest.raises(ValueError, match=r"^\[dense_0\] dense: params must be a dict with keys b, w, got "
                                         r"NoneType; pass the params that dense's init returned$"):
        model.apply({**params, "dense_0": None}, state, x)
    wide = {**params, "dense_1": {**params["dense_1"], "w": jnp.ones((3, 7))}}
    with pytest.raises(ValueError, match=r"^\[dense_1\] dense: w has shape \(3, 7\) but this layer was built "
                                         r"with features=2 \(expected shape \(3, 2\)\)$"):
        model.apply(wide, state, x)
    # a wrong input keeps the layer's own message about its input
    with pytest.raises(ValueError, match=r"^\[dense_0\] dense: expected input of shape \[\.\.\., 5\]"):
        model.apply(params, state, jnp.ones((4, 6)))


def test_config_repr_lists_what_the_layer_was_built_with():
    assert repr(jnn.dense(3).config) == "Config(features=3, use_bias=True, w_init='lecun_normal', b_init='zeros')"


def test_init_keeps_no_params_alive():
    """What init remembers for later checks is shapes, not the arrays it returned (dict or tuple params)."""
    def init(key, x):
        return (jnp.ones((7, 13)), {"b": jnp.zeros((13, 7))}), {}
    pair = jnn.Layer(init, lambda p, s, x, **kw: (x @ p[0] @ p[1]["b"], s), kind="pair")
    counted = lambda: sum(a.shape in ((7, 13), (13, 7)) for a in jax.live_arrays())
    before = counted()
    params, state = pair.init(KEY, jnp.zeros((2, 7)))
    assert counted() == before + 2
    del params
    assert counted() == before
