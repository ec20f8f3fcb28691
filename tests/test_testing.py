"""jnn.testing.check_layer catches broken layers (the built-in ones pass it in test_registry.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
import jnn.testing

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)


def _layer(apply, init=None, kind="broken"):
    init = init or (lambda key, example: ({}, {}))
    return jnn.Layer(init, apply, kind)


def test_a_wrong_custom_gradient_is_caught_by_check_grads():
    @jax.custom_vjp
    def sin(x):
        return jnp.sin(x)

    sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2 * jnp.cos(x) * g,))  # the bwd is off by 2
    layer = _layer(lambda p, s, x, *, key=None, train=False: (sin(x), s))
    with pytest.raises(AssertionError, match=r"check_layer\(broken\): check_grads \(input, orders 1-1\)"):
        jnn.testing.check_layer(layer, X, grad_order=1, grad_modes=("rev",))
    correct = _layer(lambda p, s, x, *, key=None, train=False: (jnp.sin(x), s))
    jnn.testing.check_layer(correct, X, grad_order=1, grad_modes=("rev",))


@pytest.mark.parametrize("wrong", ["params", "input"])
def test_a_layer_with_params_and_one_wrong_gradient_names_that_one(wrong):
    """The params and input are checked jointly first; the failure still names the culprit."""
    @jax.custom_vjp
    def scale(w, x):
        return w * jnp.sin(x)

    def bwd(res, g):
        w, x = res
        dw, dx = jnp.sum(jnp.sin(x) * g, axis=0), w * jnp.cos(x) * g
        return (3 * dw, dx) if wrong == "params" else (dw, 3 * dx)

    scale.defvjp(lambda w, x: (w * jnp.sin(x), (w, x)), bwd)
    init = lambda key, example: ({"w": jax.random.normal(key, example.shape[-1:], example.dtype)}, {})
    layer = _layer(lambda p, s, x, *, key=None, train=False: (scale(p["w"], x), s), init)
    with pytest.raises(AssertionError, match=rf"check_layer\(broken\): check_grads \({wrong}, orders 1-1\)"):
        jnn.testing.check_layer(layer, X, grad_order=1, grad_modes=("rev",))


def test_a_layer_whose_jit_and_eager_outputs_differ_is_caught():
    def apply(params, state, x, *, key=None, train=False):
        traced = isinstance(x, jax.core.Tracer)
        return (x * 2 if traced else x), state

    with pytest.raises(AssertionError, match=r"check_layer\(broken\): jit == eager"):
        jnn.testing.check_layer(_layer(apply), X, float64=False)


def test_a_stochastic_layer_that_ignores_its_key_is_caught():
    def apply(params, state, x, *, key=None, train=False):
        if not train:
            return x, state
        if key is None:
            raise ValueError("noise: train=True needs a key")
        noise = jax.random.normal(jax.random.key(42), x.shape, x.dtype)  # a fixed key: the bug
        return x + noise, state

    with pytest.raises(AssertionError, match=r"key contract: .*same output for two different keys .*ignores its key"):
        jnn.testing.check_layer(_layer(apply), X, train=True, stochastic=True, float64=False)
    def fixed(params, state, x, *, key=None, train=False):
        if not train:
            return x, state
        if key is None:
            raise ValueError("noise: train=True needs a key")
        return x + jax.random.normal(key, x.shape, x.dtype), state

    jnn.testing.check_layer(_layer(fixed), X, train=True, stochastic=True, batch_independent=False, float64=False)
    # a deterministic layer whose output depends on the key is caught too
    with pytest.raises(AssertionError, match=r"key contract"):
        jnn.testing.check_layer(_layer(fixed), X, train=True, float64=False)


def test_a_layer_that_breaks_under_vmap_is_caught():
    # centres over the batch axis, so one example alone (under vmap) gives zeros
    apply = lambda p, s, x, *, key=None, train=False: (x - jnp.mean(x, axis=0), s)
    with pytest.raises(AssertionError, match=r"check_layer\(broken\): vmap == batched"):
        jnn.testing.check_layer(_layer(apply), X, float64=False)
    jnn.testing.check_layer(_layer(apply), X, batch_independent=False, float64=False)


def test_contract_breaks_and_dtype_mixing_are_caught():
    no_keywords = _layer(lambda p, s, x: (x, s))
    with pytest.raises(AssertionError, match=r"contract: TypeError: broken: layer 'broken' breaks the layer contract: "
                                             r"its apply takes no keyword argument 'key', 'train'"):
        jnn.testing.check_layer(no_keywords, X)
    pair_less = _layer(lambda p, s, x, *, key=None, train=False: x)
    with pytest.raises(AssertionError, match=r"contract: .*its apply returned a single array of shape \(3, 4\)"):
        jnn.testing.check_layer(pair_less, X)
    # adds a bfloat16 constant to a float32 input without a cast: an error under strict promotion
    mixing = _layer(lambda p, s, x, *, key=None, train=False: (x + jnp.ones((), jnp.bfloat16), s))
    with pytest.raises(AssertionError, match=r"check_layer\(broken\): contract: .*promot"):
        jnn.testing.check_layer(mixing, X, float64=False)
