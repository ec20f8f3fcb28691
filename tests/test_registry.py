"""Cross-cutting tests over every registered layer (see registry.py and tests/cases/)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jnn
from registry import APPLY_KEY, CASES, KEY

ids = [c.name for c in CASES]


@pytest.fixture(autouse=True)
def strict_dtype_promotion():
    """Layers must cast explicitly: mixing dtypes silently is an error here."""
    with jax.numpy_dtype_promotion("strict"):
        yield


def _init_apply(case, x):
    layer = case.make()
    params, state = layer.init(KEY, jax.ShapeDtypeStruct(x.shape, x.dtype))
    run = lambda p, s, x: layer.apply(p, s, x, key=APPLY_KEY, train=case.train)
    return layer, params, state, run


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_init_and_apply_agree_with_eval_shape(case):
    x = case.input()
    layer, params, state, run = _init_apply(case, x)
    # init from a concrete array gives the same trees as init from a ShapeDtypeStruct
    params2, state2 = layer.init(KEY, x)
    assert _shapes(params) == _shapes(params2) and _shapes(state) == _shapes(state2)
    assert _shapes(jax.eval_shape(layer.init, KEY, x)) == _shapes((params, state))
    y, new_state = run(params, state, x)
    expected_y, expected_state = jax.eval_shape(run, params, state, x)
    assert (y.shape, y.dtype) == (expected_y.shape, expected_y.dtype)
    assert _shapes(new_state) == _shapes(expected_state) == _shapes(state)
    inferred = jnn.output_shape(layer, params, state, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not case.train:
        assert (inferred.shape, inferred.dtype) == (y.shape, y.dtype)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_jit_equals_eager(case):
    x = case.input()
    _, params, state, run = _init_apply(case, x)
    eager = run(params, state, x)
    jitted = jax.jit(run)(params, state, x)
    chex_close = lambda a, b: np.testing.assert_allclose(a, b, atol=case.atol, rtol=1e-5)
    jax.tree_util.tree_map(chex_close, eager, jitted)


@pytest.mark.parametrize("case", [c for c in CASES if c.batch_independent],
                         ids=[c.name for c in CASES if c.batch_independent])
def test_vmap_over_examples_equals_batched_call(case):
    x = case.input()
    _, params, state, run = _init_apply(case, x)
    batched, _ = run(params, state, x)
    per_example = jax.vmap(lambda xi: run(params, state, xi[None])[0][0])(x)
    np.testing.assert_allclose(per_example, batched, atol=case.atol, rtol=1e-5)


def _is_float(a):
    return jnp.issubdtype(a.dtype, jnp.floating)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_float64(case):
    with jax.enable_x64(True):
        dtype = np.float64 if np.issubdtype(case.dtype, np.floating) else case.dtype
        x = case.input(dtype=dtype)
        _, params, state, run = _init_apply(case, x)
        y, _ = run(params, state, x)
        float_leaves = [a for a in jax.tree_util.tree_leaves(params) if _is_float(a)]
        assert all(a.dtype == jnp.float64 for a in float_leaves)
        assert y.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_check_grads_against_finite_differences(case):
    with jax.enable_x64(True):
        dtype = np.float64 if np.issubdtype(case.dtype, np.floating) else case.dtype
        x = case.input(dtype=dtype)
        _, params, state, run = _init_apply(case, x)
        if jax.tree_util.tree_leaves(params):
            f = lambda p: jnp.sum(jnp.sin(run(p, state, x)[0]))
            check_grads(f, (params,), order=2, modes=case.grad_modes)
        if case.input_grads and _is_float(x):
            g = lambda x: jnp.sum(jnp.sin(run(params, state, x)[0]))
            check_grads(g, (x,), order=2, modes=case.grad_modes)
