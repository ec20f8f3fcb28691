"""conv's CPU paths: the one-channel shifted sum (values against the NumPy loop, derivatives of
every order against XLA's convolution), when it is taken, and jnn.train.compiler_options."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jnn
from jnn.layers.conv import conv
from test_conv import _params, np_conv


def _hlo(fn, *args, **jit):
    return jax.jit(fn, **jit).lower(*args).compile().as_text()


@pytest.mark.parametrize("kernel, shape, padding", [
    ((3, 3), (3, 7, 6, 1), "SAME"),
    ((5, 5), (2, 7, 7, 1), "VALID"),                  # 25 taps, the most it takes
    ((4,), (2, 9, 1), [(3, 0)]),
    ((2, 3, 2), (2, 4, 5, 3, 1), "SAME"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_channel_conv_matches_the_numpy_loop(kernel, shape, padding, dtype):
    layer = conv(3, kernel, padding=padding)
    x = np.random.default_rng(1).normal(size=shape).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        params, state = _params(layer, jnp.asarray(x))
        y = layer.apply(params, state, jnp.asarray(x))[0]
        assert y.dtype == dtype
        assert " convolution(" not in _hlo(lambda p, v: layer.apply(p, state, v)[0], params, jnp.asarray(x))
    want = np_conv(x.astype(np.float64), np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64),
                   (1,) * len(kernel), padding, (1,) * len(kernel), 1)
    np.testing.assert_allclose(y, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_one_channel_derivatives_of_every_order_equal_xla_convolution():
    """First and second order, forward and reverse mode, against finite differences (float64),
    and reverse mode equal to XLA's own convolution's gradients."""
    layer = conv(2, (3, 2), padding=[(1, 1), (0, 1)])
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 5, 4, 1), jnp.float64)
        params, state = _params(layer, x)

        def f(w, v):
            return jnp.sin(layer.apply({**params, "w": w}, state, v)[0])

        check_grads(f, (params["w"], x), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)

        def xla(w, v):
            y = jax.lax.conv_general_dilated(v, w, (1, 1), [(1, 1), (0, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sin(y + params["b"])

        ours = jax.grad(lambda w, v: jnp.sum(f(w, v) ** 2), (0, 1))(params["w"], x)
        theirs = jax.grad(lambda w, v: jnp.sum(xla(w, v) ** 2), (0, 1))(params["w"], x)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_one_channel_training_gradient_runs_one_convolution_and_bfloat16_accumulates_in_float32():
    layer = conv(8, (3, 3))
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, 1))
    params, state = layer.init(jax.random.key(1), x)
    grad_w = lambda p: jax.grad(lambda p: jnp.sum(layer.apply(p, state, x)[0] ** 2))(p)
    assert _hlo(grad_w, params).count(" convolution(") == 1   # dW only: no convolution of the data's zero tangent
    xb = jnp.full((1, 4, 4, 1), 1 + 2 ** -7, jnp.bfloat16)    # each product rounds in bfloat16; 9 of them summed
    ones = {"w": jnp.full((3, 3, 1, 1), 1 + 2 ** -7, jnp.float32), "b": jnp.zeros(1)}
    y = conv(1, (3, 3)).apply(ones, {}, xb)[0]
    assert y.dtype == jnp.bfloat16
    exact = 9 * (1 + 2 ** -7) ** 2
    assert float(y[0, 1, 1, 0]) == float(jnp.asarray(exact, jnp.bfloat16))


@pytest.mark.parametrize("make, shape", [
    (lambda: conv(4, (3, 3)), (2, 6, 6, 2)),                       # two channels
    (lambda: conv(4, (3, 3), strides=2), (2, 6, 6, 1)),            # strided
    (lambda: conv(4, (3, 3), dilation=2), (2, 6, 6, 1)),           # dilated
    (lambda: conv(4, (13, 2)), (2, 14, 4, 1)),                     # 26 taps, one more than 5x5
])
def test_other_convolutions_stay_xla_convolutions(make, shape):
    layer = make()
    x = jnp.ones(shape)
    params, state = layer.init(jax.random.key(0), x)
    assert " convolution(" in _hlo(lambda p, v: layer.apply(p, state, v)[0], params, x)


def test_compiler_options_leave_convolutions_to_xla_and_keep_ynnpack_for_dots():
    options = jnn.train.compiler_options()
    assert options == jnn.train.compiler_options("cpu") and jnn.train.compiler_options("gpu") == {}
    x = jax.ShapeDtypeStruct((128, 14, 14, 32), jnp.float32)   # MNIST's second conv (compiled, not run;
    w = jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.float32)       # XLA keeps small ones to itself anyway)
    convolve = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert "__ynn_fusion" in _hlo(convolve, x, w)                                   # XLA's default on CPU
    assert "__ynn_fusion" not in _hlo(convolve, x, w, compiler_options=options)
    mlp_step = lambda w, x: jax.grad(lambda w: jnp.sum(jax.nn.relu(x @ w).sum(0) ** 2))(w)
    a, b = jax.ShapeDtypeStruct((784, 128), jnp.float32), jax.ShapeDtypeStruct((128, 784), jnp.float32)
    assert _hlo(mlp_step, a, b).count("__ynn_fusion") == _hlo(mlp_step, a, b, compiler_options=options).count(
        "__ynn_fusion") > 0


def test_compiler_options_are_empty_where_xla_rejects_them(monkeypatch):
    from jnn.train import compiler
    monkeypatch.setattr(compiler, "_CPU", {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH"})
    compiler._cpu_accepts.cache_clear()
    try:
        assert compiler.compiler_options() == {}
    finally:
        monkeypatch.undo()
        compiler._cpu_accepts.cache_clear()
    assert compiler.compiler_options() == compiler._CPU


def test_fit_and_the_stepwise_runners_compile_with_the_compiler_options(monkeypatch):
    """fit (fused and stepwise, with their evaluation) and predict ask for them; the stepwise
    runners' jitted functions still run under an outer trace, where JAX takes no options."""
    from jnn.train import compiler, loop
    calls = []

    def spy(backend=None):
        calls.append(backend)
        return compiler._CPU

    monkeypatch.setattr(compiler, "compiler_options", spy)
    monkeypatch.setattr(loop, "compiler_options", spy)
    x, y = jnn.data.xor()
    model, opt = jnn.dense(1), optax.sgd(0.1)
    for fused in (True, False):
        calls.clear()
        jnn.train.fit(model, jnn.losses.mse, opt, (x, y), key=jax.random.key(0), epochs=1, batch_size=2,
                      metrics={}, val_data=(x, y), verbose=0, fused=fused)
        assert len(calls) >= 2, fused   # the epoch and the evaluation
    calls.clear()
    params, state = model.init(jax.random.key(0), x)
    jnn.train.predict(model, params, state, x)
    assert calls
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
    epoch = jnn.train.make_stepwise_epoch(jnn.train.make_train_step(model, jnn.losses.mse, opt), len(x), 2)
    evaluate = jnn.train.make_eval_fn(model, jnn.losses.mse, fused=False)
    jax.make_jaxpr(epoch)(ts, (x, y))
    jax.make_jaxpr(evaluate)(ts.params, ts.state, (x, y))
