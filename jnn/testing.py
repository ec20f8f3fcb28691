"""The conformance kit: :func:`check_layer` runs the checks jnn runs on every built-in layer."""
from __future__ import annotations

import contextlib
import pathlib
import tempfile
from typing import Any, Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jnn import _checks as checks
from jnn import core

__all__ = ["check_layer", "check_resume"]


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


# ---- provable resume ------------------------------------------------------------------------------

class Preempted(Exception):
    """The interruption :func:`check_resume` plants in a run (as a preemption would end it)."""


class Interruption:
    """What :func:`check_resume` gives a recipe: :meth:`data` wraps its batch stream, raising
    :class:`Preempted` when batch ``batch`` (from 1) is read; :meth:`callback`, a ``fit`` callback to
    list last, raises after epoch ``epoch``. Counts what the run read (``batches``, ``epochs``)."""

    def __init__(self, batch: int | None = None, epoch: int | None = None):
        self.batch, self.epoch, self.batches, self.epochs = batch, epoch, 0, 0

    def data(self, iterable):
        return _Interrupting(iterable, self)

    def callback(self, epoch, train_state, logs) -> None:
        self.epochs += 1
        if self.epoch is not None and self.epochs >= self.epoch:
            raise Preempted(f"check_resume: interrupted after epoch {epoch}")


class _Interrupting:
    """A batch stream (``get_state``/``set_state`` and ``len`` passed through) that counts its batches."""

    def __init__(self, data, interruption: Interruption):
        self.data, self.interruption, self.it = data, interruption, None

    def __iter__(self):
        self.it = iter(self.data)
        return self

    def __next__(self):
        owner = self.interruption
        owner.batches += 1
        if owner.batch is not None and owner.batches >= owner.batch:
            raise Preempted(f"check_resume: interrupted reading batch {owner.batches}")
        return next(self.it)

    def __len__(self):
        return len(self.data)

    def __getattr__(self, name):   # get_state, set_state: only where the iterator has them
        return getattr(self.__dict__.get("it"), name)


def _bits(a) -> bytes:
    a = jax.random.key_data(a) if jnp.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key) else a
    return np.asarray(a).dtype.str.encode() + np.ascontiguousarray(a).tobytes()


def _first_difference(reference, resumed) -> str | None:
    """The first part of ``resumed`` (``.train_state`` and ``.history``) not bitwise equal to ``reference``'s."""
    a, tree_a = jax.tree_util.tree_flatten_with_path(reference.train_state)
    b, tree_b = jax.tree_util.tree_flatten_with_path(resumed.train_state)
    if tree_a != tree_b:
        return f"in the train state's structure ({tree_b} vs {tree_a})"
    for (path, x), (_, y) in zip(a, b):
        if _bits(x) != _bits(y):
            return f"in train_state{jax.tree_util.keystr(path)}"
    history = lambda r: {k: v for k, v in r.history.items() if k != "time"}   # wall-clock times differ
    ha, hb = history(reference), history(resumed)
    for key in sorted(set(ha) | set(hb)):
        if key not in ha or key not in hb or _bits(np.asarray(ha[key], float)) != _bits(np.asarray(hb[key], float)):
            return f"in history[{key!r}]: {hb.get(key)} vs {ha.get(key)}"
    return None


def check_resume(recipe: Callable, *, points: int | Sequence[int] = 2, seed: int = 0, directory=None) -> list[int]:
    """Runs ``recipe`` straight through, then interrupted at ``points`` random points (or those listed)
    and run again to resume; asserts its train state and history (but ``time``) are bitwise the same.

    ``recipe(checkpointer, interruption)`` trains with a fresh :class:`jnn.train.Checkpointer`,
    resuming from its latest checkpoint if any; it reads batches through ``interruption.data(...)``
    (points are batches: mid-epoch, mid-accumulation) or lists ``interruption.callback`` last (points
    are epochs), and returns a ``FitResult`` with the whole history. Returns the points; an
    ``AssertionError`` names the point and what differs.

    Example:
      >>> import jax, optax, jnn, jnn.testing
      >>> x, y = jnn.data.xor()
      >>> class Stream:   # XOR's two halves, again and again, with a resumable position
      ...     i = 0
      ...     def __iter__(self): return self
      ...     def __next__(self): self.i += 1; return x[self.i % 2 * 2:][:2], y[self.i % 2 * 2:][:2]
      ...     def get_state(self): return {"i": self.i}
      ...     def set_state(self, state): self.i = state["i"]
      >>> def recipe(checkpointer, interruption):
      ...     data = jnn.train.Data(interruption.data(Stream()), steps_per_epoch=2, check=False)
      ...     return jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), data, key=jax.random.key(0),
      ...                          epochs=2, metrics={}, verbose=0,
      ...                          checkpoint=checkpointer.every_steps(1, resume=True))
      >>> jnn.testing.check_resume(recipe, points=[3])
      [3]
    """
    from jnn.train import Checkpointer
    with tempfile.TemporaryDirectory() if directory is None else contextlib.nullcontext(directory) as root:
        run = lambda name, interruption: recipe(Checkpointer(pathlib.Path(root) / name, keep=None), interruption)
        counter = Interruption()
        reference = run("straight", counter)
        unit, total = ("batch", counter.batches) if counter.batches else ("epoch", counter.epochs)
        rng = np.random.default_rng(seed)
        chosen = (sorted(int(p) for p in rng.choice(np.arange(1, total), min(points, total - 1), replace=False))
                  if isinstance(points, int) else list(points))
        for at in chosen:
            try:
                run(f"{unit}_{at}", Interruption(**{unit: at}))
            except Preempted:
                pass
            saved, again = Checkpointer(pathlib.Path(root) / f"{unit}_{at}").latest_step(), Interruption()
            difference = _first_difference(reference, run(f"{unit}_{at}", again))
            if saved is not None and (again.batches if unit == "batch" else again.epochs) >= total:
                difference = f"where it restarted: it read all {total} {unit}(e)s again instead of resuming from " \
                             f"checkpoint {saved}"
            if difference is not None:
                raise AssertionError(f"check_resume: interrupted at {unit} {at} of {total} and resumed, the run "
                                     f"differs from the straight one {difference}")
    return chosen
