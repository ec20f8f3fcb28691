"""jnn.layers.basic in detail (dense, flatten, reshape): tests written against the mutants of
basic.py that the suite missed (issue #21, tests/MUTATION.md). Values are checked with NumPy."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

KEY = jax.random.key(0)


def test_dense_names_its_initializers_in_their_errors():
    with pytest.raises(ValueError, match=r"^dense w_init: unknown initializer 'nope'"):
        jnn.dense(2, w_init="nope")
    with pytest.raises(ValueError, match=r"^head b_init: unknown initializer 'nope'"):
        jnn.dense(2, b_init="nope", name="head")


def test_dense_takes_a_single_example_and_rejects_a_scalar():
    layer = jnn.dense(3)
    x = np.arange(4.0, dtype=np.float32)
    params, _ = layer.init(KEY, x)                    # one example, no batch axis
    y, _ = layer.apply(params, {}, x)
    np.testing.assert_allclose(y, x @ np.asarray(params["w"]) + np.asarray(params["b"]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"^dense: expected an input with at least one axis, got shape \(\)$"):
        layer.init(KEY, jnp.float32(1.0))


def test_dense_params_follow_the_input_s_last_axis_and_dtype():
    params, _ = jnn.dense(2).init(KEY, jnp.zeros((4, 5, 3)))        # [B, T, in]: w is [in, features]
    assert params["w"].shape == (3, 2) and params["b"].shape == (2,)
    for dtype in (jnp.bfloat16, jnp.float16):                          # half precision: float32 params
        params, _ = jnn.dense(2).init(KEY, jnp.zeros((1, 3), dtype))
        assert (params["w"].dtype, params["b"].dtype) == (jnp.float32, jnp.float32)
    with jax.enable_x64(True):                     # float64 inputs alone get float64 params
        for dtype in (jnp.float64, jnp.float32, jnp.int32):
            params, _ = jnn.dense(2, b_init="ones").init(KEY, jnp.zeros((1, 3), dtype))
            expected = jnp.float64 if dtype == jnp.float64 else jnp.float32
            assert (params["w"].dtype, params["b"].dtype) == (expected, expected), dtype


def test_dense_names_itself_for_missing_or_misshapen_params():
    with pytest.raises(ValueError, match=r"^head: params lack 'w' \(have: kernel\)"):
        jnn.dense(2, name="head").apply({"kernel": jnp.zeros((3, 2))}, {}, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"^dense: w has shape \(3, 5\) but this layer was built with "
                                         r"features=2 \(expected shape \(3, 2\)\)$"):
        jnn.dense(2).apply({"w": jnp.zeros((3, 5)), "b": jnp.zeros(2)}, {}, jnp.zeros((1, 3)))


@pytest.mark.parametrize("make, kind", [(jnn.flatten, "flatten"), (lambda **kw: jnn.reshape((3, 4), **kw), "reshape"),
                                        (lambda **kw: jnn.dense(2, **kw), "dense")])
def test_names_are_kept(make, kind):
    assert (make().kind, make().name, make(name="mine").name) == (kind, None, "mine")


@pytest.mark.parametrize("shape", [(3, 4), (-1, 4), (3, -1), (1, 12), (12, 1, 1), (-1,)])
def test_reshape_keeps_the_batch_and_matches_numpy(shape):
    x = np.arange(5 * 12, dtype=np.float32).reshape(5, 2, 6)           # batch 5, 12 values an example
    y, _ = jnn.reshape(shape).apply({}, {}, x)
    np.testing.assert_array_equal(y, x.reshape(5, *shape))


@pytest.mark.parametrize("shape", [(0, 3), (2.0, 6), (-2, 6), (-1, -1), (3, None)])
def test_reshape_rejects_bad_shapes_when_built(shape):
    with pytest.raises(ValueError, match=r"^reshape: shape must hold positive integers and at most one -1, got "):
        jnn.reshape(shape)


@pytest.mark.parametrize("shape", [(5,), (-1, 5), (3, 5)])
def test_reshape_rejects_sizes_that_do_not_fit(shape):
    with pytest.raises(ValueError, match=rf"^reshape: cannot reshape examples of shape \(2, 6\) \(12 values\) to "
                                         rf"{re.escape(str(shape))}$"):
        jnn.reshape(shape).apply({}, {}, jnp.zeros((5, 2, 6)))


def test_dense_applies_over_leading_axes_and_keeps_or_promotes_the_dtype():
    layer = jnn.dense(2)
    x = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)   # [B, T, in], T != in
    params, _ = layer.init(KEY, x)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    np.testing.assert_allclose(layer.apply(params, {}, x)[0], x @ w + b, rtol=1e-5, atol=1e-6)
    assert layer.apply(params, {}, x.astype(jnp.bfloat16))[0].dtype == jnp.bfloat16   # bias cast down too
    with jax.enable_x64(True):                        # integers are promoted to the params' dtype
        y = layer.apply(params, {}, np.arange(3, dtype=np.int32)[None])[0]
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, np.arange(3.0)[None] @ w + b, rtol=1e-6)


def test_dense_names_itself_for_a_missing_or_misshapen_bias():
    w = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match=r"^dense: params lack 'b' \(have: w\)"):
        jnn.dense(2).apply({"w": w}, {}, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"^head: b has shape \(3,\) but this layer was built with features=2 "
                                         r"\(expected shape \(2,\)\)$"):
        jnn.dense(2, name="head").apply({"w": w, "b": jnp.zeros(3)}, {}, jnp.zeros((1, 3)))


def test_flat_matmul_is_one_2d_product_and_leaves_2d_inputs_a_plain_dot():
    """The layout is flat_matmul's point (XLA CPU runs a weight gradient over [B, T] slowly): a
    [B, T, F] input is reshaped to one [B*T, F] product; a [N, F] input stays a plain dot."""
    from jnn.layers.basic import flat_matmul
    w = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)   # in > out: the CPU rule
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6)), jnp.float32)
    np.testing.assert_allclose(flat_matmul(x, w), np.einsum("btf,fo->bto", x, w), rtol=1e-5, atol=1e-6)
    three = str(jax.make_jaxpr(flat_matmul)(x, w))
    assert "new_sizes=(10, 6)" in three and "new_sizes=(2, 5, 4)" in three and "custom_jvp_call" in three
    assert "custom_jvp_call" not in str(jax.make_jaxpr(flat_matmul)(x[0], w))
    g = jax.grad(lambda w: jnp.sum(flat_matmul(x, w) ** 2))(w)   # the CPU weight-gradient rule, against NumPy
    np.testing.assert_allclose(g, 2 * np.einsum("btf,bto->fo", x, np.einsum("btf,fo->bto", x, w)), rtol=1e-5)
