"""Layer options that are flags, numbers or axes are checked when the layer is built, and
``train`` when it is applied: a string, ``None`` or 0/1 where True/False is meant would otherwise
be read by its truthiness."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


def _exactly(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("build,message", [
    (lambda: jnn.dense(3, use_bias="no"), "dense: use_bias must be True or False, got 'no'"),
    (lambda: jnn.conv(3, (3, 3), use_bias=0), "conv: use_bias must be True or False, got 0"),
    (lambda: jnn.conv_transpose(3, (3, 3), use_bias=None), "conv_transpose: use_bias must be True or False, got None"),
    (lambda: jnn.avg_pool((2, 2), count_include_pad="yes"), "avg_pool: count_include_pad must be True or False, "
     "got 'yes'"),
    (lambda: jnn.gelu("tanh"), "gelu: approximate must be True or False, got 'tanh'"),
    (lambda: jnn.residual_block(8, project=1), "residual_block: project must be True or False, got 1"),
    (lambda: jnn.leaky_relu("0.1"), "leaky_relu: negative_slope must be a finite number, got '0.1'"),
    (lambda: jnn.leaky_relu(float("nan")), "leaky_relu: negative_slope must be a finite number, got nan"),
    (lambda: jnn.elu(None), "elu: alpha must be a finite number, got None"),
    (lambda: jnn.softmax(axis="x"), "softmax: axis must be an integer, got 'x'"),
    (lambda: jnn.log_softmax(axis=1.0), "log_softmax: axis must be an integer, got 1.0"),
])
def test_options_are_checked_when_built(build, message):
    with pytest.raises(ValueError, match=_exactly(message)):
        build()


@pytest.mark.parametrize("layer,message", [
    (jnn.softmax(axis=2), "softmax: axis 2 is out of range for an input of shape (2, 3)"),
    (jnn.log_softmax(axis=-3), "log_softmax: axis -3 is out of range for an input of shape (2, 3)"),
])
def test_an_axis_beyond_the_input_names_the_layer(layer, message):
    with pytest.raises(ValueError, match=_exactly(message)):
        layer.apply({}, {}, jnp.zeros((2, 3)))


def test_softmax_over_an_inner_axis_matches_jax():
    x = jnp.arange(24.0).reshape(2, 3, 4) / 7
    np.testing.assert_allclose(jnn.softmax(axis=1).apply({}, {}, x)[0], jax.nn.softmax(x, axis=1), rtol=1e-6)
    np.testing.assert_allclose(jnn.log_softmax(axis=0).apply({}, {}, x)[0], jax.nn.log_softmax(x, axis=0), rtol=1e-6)


@pytest.mark.parametrize("layer,message", [
    (jnn.dropout(0.5), "dropout: train must be True or False, got 'yes'"),
    (jnn.batch_norm(), "batch_norm: train must be True or False, got 'yes'"),
    (jnn.multi_head_attention(2), "multi_head_attention: train must be True or False, got 'yes'"),
])
def test_train_must_be_a_bool(layer, message):
    x = jnp.ones((2, 4, 8))
    params, state = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=_exactly(message)):
        layer.apply(params, state, x, key=jax.random.key(1), train="yes")
