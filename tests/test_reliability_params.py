"""Reliability, category 2: the dtype rule and apply-time param checks (static, free under jit)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn import _checks

KEY = jax.random.key(0)


def test_integer_and_bool_inputs_are_promoted_to_the_param_dtype():
    layer = jnn.dense(3)
    params, state = layer.init(KEY, jnp.zeros((2, 4)))
    x = np.array([[1, 2, 3, 4], [0, -1, 5, 2]])
    expected = x.astype(np.float32) @ np.asarray(params["w"]) + np.asarray(params["b"])
    for dtype in (jnp.int32, jnp.int8, jnp.uint8):
        y, _ = layer.apply(params, state, jnp.asarray(x, dtype) if dtype != jnp.uint8 else jnp.asarray(np.abs(x), dtype))
        assert y.dtype == jnp.float32
    y, _ = layer.apply(params, state, jnp.asarray(x, jnp.int32))
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    yb, _ = layer.apply(params, state, jnp.asarray(x > 1))
    np.testing.assert_allclose(yb, (x > 1).astype(np.float32) @ np.asarray(params["w"]) + np.asarray(params["b"]),
                               rtol=1e-6)


def test_integer_image_into_conv_is_promoted_not_truncated():
    layer = jnn.conv(2, (3, 3))
    params, state = layer.init(KEY, jnp.zeros((1, 5, 5, 1)))
    x = np.arange(25).reshape(1, 5, 5, 1)
    y, _ = layer.apply(params, state, jnp.asarray(x, jnp.uint8))
    y_ref, _ = layer.apply(params, state, jnp.asarray(x, jnp.float32))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)


def test_params_of_another_width_name_the_layer_and_the_built_features():
    small = jnn.serial(jnn.dense(64), jnn.relu(), jnn.dense(5))
    other = jnn.serial(jnn.dense(64), jnn.relu(), jnn.dense(3))
    x = jnp.zeros((2, 8))
    params, state = other.init(KEY, x)
    with pytest.raises(ValueError, match=r"\[dense_1\] dense: w has shape \(64, 3\) but this layer "
                                         r"was built with features=5"):
        small.apply(params, state, x)


def test_params_with_other_child_names_list_what_they_have():
    model = jnn.serial(jnn.dense(4), jnn.dense(2))
    foreign = {"encoder": {"w": jnp.zeros((3, 4))}, "head": {"w": jnp.zeros((4, 2))}}
    with pytest.raises(ValueError, match=r"serial: params lack 'dense_0' \(have: encoder, head"):
        model.apply(foreign, {}, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"dense: params lack 'w' \(have: kernel\)"):
        jnn.dense(2).apply({"kernel": jnp.zeros((3, 2))}, {}, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"conv: params lack 'b' \(have: w\)"):
        jnn.conv(2, (3,)).apply({"w": jnp.zeros((3, 1, 2))}, {}, jnp.zeros((1, 4, 1)))


def test_param_checks_run_under_jit_too():
    layer = jnn.dense(5)
    params, state = jnn.dense(3).init(KEY, jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"w has shape \(4, 3\) but this layer was built with features=5"):
        jax.jit(layer.apply)(params, state, jnp.zeros((1, 4)))


def test_conv_kernel_of_another_size_is_named():
    params, state = jnn.conv(2, (5, 5)).init(KEY, jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"conv: w has shape \(5, 5, 1, 2\) but this layer was built "
                                         r"with features=2, kernel_size=\(3, 3\)"):
        jnn.conv(2, (3, 3)).apply(params, state, jnp.zeros((1, 8, 8, 1)))


def test_embedding_ids_are_checked_eagerly_and_params_by_name():
    layer = jnn.embedding(10, 4)
    params, state = layer.init(KEY, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match=r"embedding: token ids must lie in \[0, 10\), got 12"):
        layer.apply(params, state, jnp.array([1, 12]))
    with pytest.raises(ValueError, match=r"embedding: params lack 'embedding' \(have: w\)"):
        layer.apply({"w": params["embedding"]}, state, jnp.array([1, 2]))


@pytest.mark.parametrize("check, args, match", [
    (_checks.positive_int, ("f", "units", 0), r"f: units must be a positive integer, got 0"),
    (_checks.positive_int, ("f", "units", True), r"f: units must be a positive integer, got True"),
    (_checks.positive_int, ("f", "units", 2.0), r"f: units must be a positive integer, got 2.0"),
    (_checks.rate, ("f", "rate", 1.0), r"f: rate is the probability of dropping a unit and must be in \[0, 1\), got 1.0"),
    (_checks.per_axis, ("f", "strides", (1, 0), 2), r"f: strides must be a positive integer or a tuple of 2"),
    (_checks.number_above, ("f", "epsilon", -1, 0), r"f: epsilon must be a positive number, got -1"),
])
def test_shared_checks_name_the_argument_and_value(check, args, match):
    with pytest.raises(ValueError, match=match):
        check(*args)


def test_shared_checks_used_by_layers():
    for build, match in [(lambda: jnn.dense(0), r"dense: features must be a positive integer, got 0"),
                         (lambda: jnn.dropout(1.5), r"dropout: rate is the probability"),
                         (lambda: jnn.layer_norm(use_scale=1), r"layer_norm: use_scale must be True or False, got 1"),
                         (lambda: jnn.conv(2, (3, 3), strides=(1, 0)), r"conv: strides must be a positive integer"),
                         (lambda: jnn.embedding(0, 2), r"embedding: vocab_size must be a positive integer")]:
        with pytest.raises(ValueError, match=match):
            build()


def test_checks_add_nothing_to_the_compiled_program():
    layer = jnn.dense(3)
    params, state = layer.init(KEY, jnp.zeros((2, 4)))
    raw = lambda p, x: x @ p["w"] + p["b"]
    checked = jax.jit(lambda p, s, x: layer.apply(p, s, x)[0]).lower(params, state, jnp.zeros((2, 4)))
    plain = jax.jit(raw).lower(params, jnp.zeros((2, 4)))
    count = lambda lowered: len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", lowered.compile().as_text(), re.M))
    assert count(checked) == count(plain)
