"""The conformance kit: :func:`check_layer` runs the checks jnn runs on every built-in layer."""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jnn import _checks as checks
from jnn import core

__all__ = ["check_layer"]


@contextlib.contextmanager
def _check(label: str, what: str, broke: str = "the values differ"):   # a failed comparison: `broke`, in words
    try:
        yield
    except Exception as e:  # every failure, assertion or crash, is reported as this check's
        said = f"{broke} ({' '.join(str(e).split())[:240]})" if "[Chex]" in str(e) else f"{type(e).__name__}: {e}"
        raise AssertionError(f"check_layer({label}): {what}: {said}") from e


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), tree)


def _is_float(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.floating)


def _as_array(example, seed: int = 0):
    """The example as arrays; a ``ShapeDtypeStruct`` becomes random normal values (zeros if integer)."""
    rng = np.random.default_rng(seed)

    def one(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.asarray(leaf)
        return jnp.asarray(rng.normal(size=leaf.shape) if _is_float(leaf) else np.zeros(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map(one, example, is_leaf=lambda a: isinstance(a, jax.ShapeDtypeStruct))


@checks.declare(layer=checks.instance_of(core.Layer, described="a jnn.Layer"))
def check_layer(layer: core.Layer, example, *, key=None, train: bool = False, stochastic: bool = False,
                batch_independent: bool = True, float64: bool = True, grad_order: int = 2,
                grad_modes: Sequence[str] = ("fwd", "rev"), input_grads: bool = True,
                keywords: Mapping[str, Any] | None = None, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Checks that ``layer`` keeps the layer contract and behaves under JAX's transformations (strict
    dtype promotion); a failure is an ``AssertionError`` ``check_layer(<layer>): <check>: ...``.

    Checks the contract; ``eval_shape``; jit == eager; determinism; the key (``stochastic``: another
    key changes the training output, none raises); vmap == batched (``batch_independent``); float64
    (``float64``); ``check_grads`` up to ``grad_order`` for params and (``input_grads``) the input.
    ``example``: arrays or ``ShapeDtypeStruct`` (random values); ``atol``, ``rtol``: float32's.

    Example:
      >>> import jax.numpy as jnp, jnn, jnn.testing
      >>> jnn.testing.check_layer(jnn.dense(3), jnp.ones((2, 4)))
      >>> jnn.testing.check_layer(jnn.dropout(0.5), jnp.ones((2, 4)), train=True, stochastic=True,
      ...                         batch_independent=False, float64=False)
    """
    label = layer.label
    keywords = dict(keywords or {})
    key = jax.random.key(0) if key is None else key
    with jax.numpy_dtype_promotion("strict"):
        x = _as_array(example)
        _check_all(layer, label, x, key, train or stochastic, stochastic, batch_independent, keywords, atol, rtol)
        if float64:
            with jax.enable_x64(True):
                x64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if _is_float(a) else a, x)
                _check_float64(layer, label, x64, key, train or stochastic, keywords, grad_order,
                               tuple(grad_modes), input_grads)


def _check_all(layer, label, x, key, train, stochastic, batch_independent, keywords, atol, rtol):
    init_key, apply_key = jax.random.split(key)
    sds = core.shape_of(x)
    with _check(label, "contract"):
        core.check_signature(label, layer)
        params, state = core.checked_init(label, layer, init_key, sds)
        y_shape = core.checked_output_shape(label, layer, params, state, sds)  # key=None, train=False
    run = lambda p, s, x, k, kw: layer.apply(p, s, x, key=k, train=train, **kw)
    with _check(label, "eval_shape", "init gave other params for arrays than for ShapeDtypeStructs of their shapes"):
        chex.assert_trees_all_equal(layer.init(init_key, x), (params, state))
    with _check(label, "eval_shape"):
        assert _shapes(jax.eval_shape(layer.init, init_key, sds)) == _shapes((params, state)), \
            "jax.eval_shape(init) disagrees with init"
        y, new_state = run(params, state, x, apply_key, keywords)
        expected = jax.eval_shape(run, params, state, sds, apply_key, keywords)
        assert _shapes((y, new_state)) == _shapes(expected), \
            f"apply gave {_shapes((y, new_state))}, jax.eval_shape(apply) {_shapes(expected)}"
        assert _shapes(new_state) == _shapes(state), (f"apply returned a new_state {_shapes(new_state)} unlike its "
                                                      f"state {_shapes(state)}: the contract keeps its structure")
        assert _shapes(y) == _shapes(y_shape), (f"its output with train={train} is {_shapes(y)}, with train=False "
                                                f"{_shapes(y_shape)}: output shapes must not depend on train")
    jitted = jax.jit(run)
    with _check(label, "jit == eager", "its output under jax.jit differs from the eager one (Python branches?)"):
        y_jit = jitted(params, state, x, apply_key, keywords)
        chex.assert_trees_all_close(y_jit, (y, new_state), atol=atol, rtol=rtol)
    with _check(label, "determinism under the same key", "two runs with one key gave different outputs"):
        chex.assert_trees_all_equal(jitted(params, state, x, apply_key, keywords), y_jit)
    other_key = jax.random.fold_in(apply_key, 1)
    with _check(label, "key contract", f"its output with train={train} changed with the key (stochastic=True?)"):
        y_other = jitted(params, state, x, other_key, keywords)[0]
        if stochastic:
            assert train, "stochastic=True is checked in training mode"
            differs = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b, atol=atol, rtol=rtol), y_jit[0], y_other)
            assert any(jax.tree_util.tree_leaves(differs)), \
                "a stochastic layer gave the same output for two different keys in training (it ignores its key)"
            try:
                jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, key=None, train=True, **keywords), params, state, sds)
            except Exception:
                pass
            else:
                raise AssertionError("a stochastic layer ran in training without a key (it must raise saying "
                                     "how to pass one)")
        else:
            chex.assert_trees_all_close(y_other, y_jit[0], atol=atol, rtol=rtol)
    if batch_independent:
        with _check(label, "vmap == batched", "an example's output depends on the other examples in the batch "
                    "(batch_independent=False?)"):
            add_axis = lambda tree: jax.tree_util.tree_map(lambda a: a[None], tree)
            one = lambda xi, kw: run(params, state, add_axis(xi), apply_key, add_axis(kw))[0]
            # jitted: one program, where eager vmap compiles each batched op on its own
            per_example = jax.jit(jax.vmap(lambda xi, kw: jax.tree_util.tree_map(lambda a: a[0], one(xi, kw))))
            chex.assert_trees_all_close(per_example(x, keywords), y, atol=atol, rtol=rtol)


_FD_EPS = 1e-6   # float64 finite-difference step


def _check_float64(layer, label, x, key, train, keywords, grad_order, grad_modes, input_grads):
    init_key, apply_key = jax.random.split(key)
    keywords = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if _is_float(a) else a, keywords)
    run = lambda p, x: layer.apply(p, state, x, key=apply_key, train=train, **keywords)[0]
    with _check(label, "float64"):
        params, state = layer.init(init_key, x)
        wrong = [(p, a.dtype) for p, a in jax.tree_util.tree_leaves_with_path(params)
                 if _is_float(a) and a.dtype != jnp.float64]
        assert not wrong, f"params not float64 for a float64 input: {wrong}"
        y = jax.jit(run)(params, x)   # one program: eagerly, each float64 op compiles on its own
        wrong = [a.dtype for a in jax.tree_util.tree_leaves(y) if _is_float(a) and a.dtype != jnp.float64]
        assert not wrong, f"outputs not float64 for a float64 input: {wrong}"
        chex.assert_tree_all_finite(y)
    if grad_order < 1:
        return
    loss = lambda y: sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(y) if _is_float(a))
    args = {"params": params, "input": x}
    wrt = []
    if any(_is_float(a) for a in jax.tree_util.tree_leaves(params)):
        wrt.append("params")
    if input_grads and all(map(_is_float, jax.tree_util.tree_leaves(x))):
        wrt.append("input")

    def check(names):
        def objective(*values):
            given = {**args, **dict(zip(names, values))}
            return loss(run(given["params"], given["input"]))
        with _check(label, f"check_grads ({' and '.join(names)}, orders 1-{grad_order})"):
            check_grads(jax.jit(objective), tuple(args[n] for n in names), order=grad_order, modes=grad_modes,
                        eps=_FD_EPS)

    if len(wrt) == 2:   # one check along a random direction in both: half the programs to compile
        try:
            check(wrt)
            return
        except AssertionError as both:
            for name in wrt:   # name the culprit
                check([name])
            raise both
    for name in wrt:
        check([name])
