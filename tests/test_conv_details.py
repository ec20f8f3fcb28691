"""conv and conv_transpose details that mutation testing found unobserved: kinds and names, the
label in every error, dtypes of params and outputs, and the padded-fit check at its boundary.
Layers are built inside the tests (mutmut credits only tests that call the constructors)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.conv import conv, conv_transpose


def test_kinds_and_names():
    assert (conv(2, (3, 3)).kind, conv(2, (3, 3)).name) == ("conv", None)
    assert (conv_transpose(2, (3, 3)).kind, conv_transpose(2, (3, 3), name="up").name) == ("conv_transpose", "up")
    model = jnn.serial(conv(2, (3, 3), name="c1"), conv_transpose(1, (2, 2), name="up"))
    params, _ = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    assert sorted(params) == ["c1", "up"]


@pytest.mark.parametrize("make", [lambda **kw: conv(2, (3, 3), **kw), lambda **kw: conv_transpose(2, (3, 3), **kw)])
def test_every_apply_error_starts_with_the_layers_name(make):
    layer = make(name="c1")
    params, state = layer.init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"^c1: w has shape \(3, 3, 3, 4\) but this layer was built with "
                                         r"features=2, kernel_size=\(3, 3\), .*\(expected shape \(3, 3, 3, 2\)\)"):
        layer.apply({**params, "w": jnp.zeros((3, 3, 3, 4))}, state, jnp.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"^c1: b has shape \(3,\) but this layer was built with "
                                         r"features=2, kernel_size=\(3, 3\), .*\(expected shape \(2,\)\)"):
        layer.apply({**params, "b": jnp.zeros(3)}, state, jnp.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"^c1: expected input of shape \[\.\.\., 3\] \(channels last"):
        layer.apply(params, state, jnp.zeros((1, 5, 5, 2)))
    with pytest.raises(ValueError, match=r"^c1: a 2-D kernel of size \(3, 3\) expects inputs of rank 4 "
                                         r"\[B, H, W, C\], got shape \(5, 5, 3\)"):
        layer.apply(params, state, jnp.zeros((5, 5, 3)))


def test_construction_and_init_errors_start_with_the_layers_name():
    with pytest.raises(ValueError, match=r"^c1: kernel_size must be a tuple of positive integers, got 3.5"):
        conv(2, 3.5, name="c1")
    with pytest.raises(ValueError, match=r"^c1 b_init: unknown initializer 'nope'"):
        conv(2, (3, 3), b_init="nope", name="c1")
    with pytest.raises(ValueError, match=r"^c1: input channels \(3\) must be divisible by feature_group_count "
                                         r"\(2\); got input shape \(1, 4, 4, 3\)"):
        conv(4, (3, 3), feature_group_count=2, name="c1").init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"^c1: a 3-D kernel of size \(2, 2, 2\) expects inputs of rank 5 "
                                         r"\[B, D, H, W, C\], got shape \(1, 4, 4, 3\)"):
        conv(4, (2, 2, 2), name="c1").init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_explicit_padding_fits_exactly_at_the_boundary():
    """A 3-tap kernel over 2 values fits with one padded value on either side (lo or hi), and the
    message for a kernel that does not fit counts both sides."""
    x = jnp.arange(2.0).reshape(1, 2, 1)
    for pads in ([(0, 1)], [(1, 0)]):
        assert conv(1, (3,), padding=pads).apply(*conv(1, (3,), padding=pads).init(jax.random.key(0), x), x)[0].shape \
            == (1, 1, 1)
    with pytest.raises(ValueError, match=r"^c1: kernel of size \(5,\) \(span 5 with dilation 1\) is larger than the "
                                         r"padded input along spatial axis 0 \(size 1 \+ padding 3\)"):
        conv(1, (5,), padding=[(2, 1)], name="c1").init(jax.random.key(0), jnp.zeros((1, 1, 1)))


@pytest.mark.parametrize("make", [lambda: conv(2, (3, 3), b_init="normal"),
                                  lambda: conv_transpose(2, (3, 3), b_init="normal")])
def test_params_follow_the_input_precision_and_outputs_the_input_dtype(make):
    layer = make()
    params, _ = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    assert params["w"].dtype == params["b"].dtype == jnp.float32
    again, _ = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    other, _ = layer.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1)))
    assert float(jnp.abs(params["b"]).sum()) > 0 and np.array_equal(params["b"], again["b"])   # from the key
    assert not np.array_equal(params["b"], other["b"])
    with jax.enable_x64(True):   # where the default float is float64: params follow the input
        p64, s64 = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1), jnp.float64))
        assert p64["w"].dtype == p64["b"].dtype == jnp.float64
        p32, s32 = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1), jnp.float32))
        assert p32["w"].dtype == p32["b"].dtype == jnp.float32
        assert layer.apply(p32, s32, jnp.ones((1, 4, 4, 1), jnp.int32))[0].dtype == jnp.float32
    y = layer.apply(params, {}, jnp.ones((1, 4, 4, 1), jnp.bfloat16))[0]
    assert y.dtype == jnp.bfloat16                       # weights and bias cast to the input's dtype
    y = layer.apply(params, {}, jnp.ones((1, 4, 4, 1), jnp.int32))[0]
    assert y.dtype == jnp.float32                        # integer inputs promoted to the params' dtype
    np.testing.assert_allclose(y, layer.apply(params, {}, jnp.ones((1, 4, 4, 1)))[0], rtol=1e-6)
