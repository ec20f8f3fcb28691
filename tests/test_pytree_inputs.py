"""A model whose input is a dict of arrays: summary, capture and check_layer take it as they
take an array (and show each layer's config)."""
import re

import jax
import jax.numpy as jnp
import pytest

import jnn
import jnn.testing

KEY = jax.random.key(0)


def two_inputs(features: int = 4) -> jnn.Layer:
    """``tanh(dense(x["a"]) + dense(x["b"]))``, written by hand: a user's layer with two inputs."""
    children = jnn.Children([("a_proj", jnn.dense(features)), ("b_proj", jnn.dense(features, use_bias=False))])

    def init(key, example):
        ka, kb = jax.random.split(key)
        pa, _ = children["a_proj"].init(ka, example["a"])
        pb, _ = children["b_proj"].init(kb, example["b"])
        return {"a_proj": pa, "b_proj": pb}, {}

    def apply(params, state, x, *, key=None, train=False):
        ya, _ = jnn.apply_child("a_proj", children["a_proj"], params, state, x["a"], train=train)
        yb, _ = jnn.apply_child("b_proj", children["b_proj"], params, state, x["b"], train=train)
        return jnp.tanh(ya + yb), state

    return jnn.Layer(init, apply, "two_inputs", children=children, config={"features": features})


X = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(1.0, -1.0, 10).reshape(2, 5)}


def test_summary_of_a_dict_input_shows_its_shapes_and_each_layers_config():
    text = jnn.summary(two_inputs(), {"a": jax.ShapeDtypeStruct((1, 3), jnp.float32), "b": X["b"][:1]})
    rows = {c[0]: c[1:] for c in (re.split(r"\s{2,}", line) for line in text.splitlines()[2:-3])}
    assert rows["(input)"] == ["{'a': (1, 3), 'b': (1, 5)}"]
    assert rows["a_proj"] == ["dense", "(1, 4)", "16", "features=4, use_bias=True, w_init='lecun_normal', b_init='zeros'"]
    assert rows["b_proj"] == ["dense", "(1, 4)", "20", "features=4, use_bias=False, w_init='lecun_normal', b_init='zeros'"]
    assert text.splitlines()[0].split() == ["layer", "kind", "output", "shape", "params", "config"]
    assert "output: (1, 4)" in text and "total params: 36 (144 bytes)" in text


def test_summary_of_a_tuple_input():
    layer = jnn.Layer(lambda key, x: ({}, {}), lambda p, s, x, *, key=None, train=False: (x[0] * x[1], s), "product")
    model = jnn.serial(layer, jnn.dense(2))
    text = jnn.summary(model, (jnp.ones((1, 3)), jnp.ones((1, 3))))
    assert "(input)" in text and "((1, 3), (1, 3))" in text and "output: (1, 2)" in text


def test_capture_of_a_dict_input_model_under_jit():
    model = two_inputs()
    params, state = model.init(KEY, X)
    y, _, out = jax.jit(lambda p, x: jnn.capture(model, p, state, x, ["a_proj", "b_proj"]))(params, X)
    expected = jnp.tanh(X["a"] @ params["a_proj"]["w"] + params["a_proj"]["b"] + X["b"] @ params["b_proj"]["w"])
    assert jnp.allclose(y, expected, atol=1e-6)
    assert jnp.allclose(out["b_proj"], X["b"] @ params["b_proj"]["w"], atol=1e-6)
    assert sorted(out) == ["a_proj", "b_proj"]


def test_check_layer_takes_a_dict_input():
    jnn.testing.check_layer(two_inputs(), X)
    jnn.testing.check_layer(two_inputs(), {"a": jax.ShapeDtypeStruct((2, 3), jnp.float32), "b": X["b"]},
                            float64=False)


def test_check_layer_on_a_dict_input_still_catches_a_batch_mixing_layer():
    good = two_inputs()

    def apply(params, state, x, *, key=None, train=False):
        y, state = good.apply(params, state, x, key=key, train=train)
        return y - y.mean(0), state     # mixes the examples: vmap differs from the batch

    mixing = jnn.Layer(good.init, apply, "mixing", children=good.children)
    with pytest.raises(AssertionError, match=r"check_layer\(mixing\): vmap == batched"):
        jnn.testing.check_layer(mixing, X, float64=False)
