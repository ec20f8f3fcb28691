"""The compile doctor: what each jitted function cost to trace, lower and compile, why it compiled
again (the argument path that changed, and how), a limit on compiles, and runs of identical blocks
that :func:`jnn.repeat` would compile once.

:func:`jit` is ``jax.jit`` that keeps this record; within :func:`watch` every ``jax.jit`` made (those
of :func:`jnn.train.fit` included) is one. Diagnostic: it adds Python work to each call.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.metadata
import inspect
import itertools
import re
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import core
from jnn.combinators import serial
from jnn.layers.repeat import repeat

__all__ = ["jit", "watch", "TooManyCompiles", "unrolled", "fingerprint", "check_fingerprint"]

_JIT = jax.jit   # the real one, also while watch() has replaced jax.jit
_EVENTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("jnn_doctor_events", default=None)
_PHASES = {"/jax/core/compile/jaxpr_trace_duration": "trace",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
           "/jax/core/compile/backend_compile_duration": "compile"}


def _listen(event, duration, **_):
    events = _EVENTS.get()
    if events is not None and event in _PHASES:
        events.append((_PHASES[event], duration))


@functools.cache
def _listening() -> None:   # registered on first use, not at import
    jax.monitoring.register_event_duration_secs_listener(_listen)


class Compile(NamedTuple):
    """One compile of a watched function: seconds spent per phase, the lowered program's lines, and
    ``changes`` from the closest earlier compile (empty for the first)."""

    name: str
    trace_s: float
    lower_s: float
    compile_s: float
    hlo_lines: int
    changes: tuple


class Report(list):
    """The :class:`Compile` records of a run, in order; ``print`` it for a table."""

    def __str__(self) -> str:
        lines = [f"{'function':<28} {'trace s':>8} {'lower s':>8} {'compile s':>9} {'HLO lines':>9}  why"]
        lines += [f"{c.name:<28} {c.trace_s:8.3f} {c.lower_s:8.3f} {c.compile_s:9.3f} {c.hlo_lines:9d}  "
                  f"{'; '.join(c.changes) or 'first compile'}" for c in self]
        return "\n".join(lines)


class TooManyCompiles(RuntimeError):
    """A watched function compiled more often than its limit (see :func:`jit`).

    Example:
      >>> import jnn
      >>> issubclass(jnn.doctor.TooManyCompiles, RuntimeError)
      True
    """


def _describe(value, static: bool):
    if static:
        return ("static value", repr(value))
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return ("array", tuple(value.shape), str(value.dtype), bool(getattr(value, "weak_type", False)))
    if isinstance(value, (bool, int, float, complex)):   # Python scalars: weakly typed
        return ("array", (), str(jnp.asarray(value).dtype), True)
    return ("object", type(value).__name__)


def _differences(old: dict, new: dict) -> list[str]:
    """How argument signature ``new`` differs from ``old``: ``"path: shape (4,) -> (5,)"``."""
    out = [f"{p}: added" for p in new if p not in old] + [f"{p}: removed" for p in old if p not in new]
    for path in (p for p in new if p in old and old[p] != new[p]):
        a, b = old[path], new[path]
        if a[0] != b[0] or a[0] != "array":
            out.append(f"{path}: {a[0]} {a[1]!s} -> {b[0]} {b[1]!s}" if a[0] != b[0] else
                       f"{path}: {a[0]} {a[1]} -> {b[1]}")
            continue
        out += [f"{path}: {what} {x} -> {y}" for what, x, y in zip(("shape", "dtype", "weak type"), a[1:], b[1:])
                if x != y]
    return out


class _Watched:
    """A jitted function that records each of its compiles in a :class:`Report`."""

    def __init__(self, fn, report: Report, max_compiles: int | None, name: str | None, jit_kwargs: dict):
        _listening()
        self.jitted, self.report, self.max_compiles = _JIT(fn, **jit_kwargs), report, max_compiles
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        nums, names = jit_kwargs.get("static_argnums", ()), jit_kwargs.get("static_argnames", ())
        self.static_nums = {nums} if isinstance(nums, int) else set(nums or ())
        self.static_names = {names} if isinstance(names, str) else set(names or ())
        try:
            self.parameters = inspect.signature(fn)
        except (TypeError, ValueError):
            self.parameters = None
        self.signatures: list[dict] = []
        functools.update_wrapper(self, fn, updated=())

    def __getattr__(self, name):   # lower, trace, _cache_size, ... of the jitted function
        return getattr(self.jitted, name)

    def _signature(self, args, kwargs) -> dict:
        """``{argument path: description}``, the arguments named as ``fn`` names them (defaults included)."""
        try:
            bound = self.parameters.bind(*args, **kwargs)
            bound.apply_defaults()
            named = list(bound.arguments.items())
        except (AttributeError, TypeError):
            named = [*((f"args[{i}]", a) for i, a in enumerate(args)), *kwargs.items()]
        signature = {}
        for i, (name, value) in enumerate(named):
            static = name in self.static_names or i in self.static_nums
            leaves = [((), value)] if static else jax.tree_util.tree_leaves_with_path(value)
            signature.update({name + jax.tree_util.keystr(path): _describe(leaf, static) for path, leaf in leaves})
        return signature

    def __call__(self, *args, **kwargs):
        before = self.jitted._cache_size()
        events: list = []
        token = _EVENTS.set(events)
        try:
            out = self.jitted(*args, **kwargs)
        finally:
            _EVENTS.reset(token)
        if any(phase == "compile" for phase, _ in events) or self.jitted._cache_size() > before:
            self._record(args, kwargs, events)
        return out

    def _record(self, args, kwargs, events) -> None:
        signature = self._signature(args, kwargs)
        changes = min((_differences(old, signature) for old in self.signatures), key=len, default=[])
        self.signatures.append(signature)
        time_of = lambda phase: sum(d for p, d in events if p == phase)
        try:
            hlo = len(self.jitted.lower(*args, **kwargs).as_text().splitlines())
        except (RuntimeError, ValueError):   # a donated argument, deleted by the call: no count (0)
            hlo = 0
        self.report.append(Compile(self.name, time_of("trace"), time_of("lower"), time_of("compile"), hlo,
                                   tuple(changes)))
        if self.max_compiles is not None and len(self.signatures) > self.max_compiles:
            raise TooManyCompiles(f"jnn.doctor: {self.name} compiled {len(self.signatures)} times (limit "
                                  f"{self.max_compiles}); this time because "
                                  f"{'; '.join(changes) or 'of no argument change (a new jit of it?)'}")


def jit(fn=None, *, max_compiles: int | None = None, report: Report | None = None, name: str | None = None,
        **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` that records each compile in ``report`` (``.report``) and raises
    :class:`TooManyCompiles` beyond ``max_compiles``; a decorator too.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> f = jnn.doctor.jit(lambda x: x * 2, max_compiles=1)
      >>> _ = f(jnp.ones(3)); _ = f(jnp.zeros(3))          # same signature: one compile
      >>> try:
      ...     f(jnp.ones(4))
      ... except jnn.doctor.TooManyCompiles as e:
      ...     print(e)
      jnn.doctor: <lambda> compiled 2 times (limit 1); this time because x: shape (3,) -> (4,)
    """
    if fn is None:
        return functools.partial(jit, max_compiles=max_compiles, report=report, name=name, **jit_kwargs)
    return _Watched(fn, Report() if report is None else report, max_compiles, name, jit_kwargs)


@contextlib.contextmanager
def watch(max_compiles: int | None = None):
    """Within the block every ``jax.jit`` is :func:`jit` (``max_compiles`` each), recording into the
    yielded :class:`Report`; a decorator too.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> with jnn.doctor.watch(max_compiles=1) as report:
      ...     _ = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (x, y), key=jax.random.key(0),
      ...                       epochs=3, batch_size=4, metrics={}, verbose=0)
      >>> len(report) >= 1 and all(c.changes == () for c in report)
      True
    """
    report = Report()
    original = jax.jit

    def patched(fn=None, **kwargs):
        return jit(fn, max_compiles=max_compiles, report=report, **kwargs)

    jax.jit = patched
    try:
        yield report
    finally:
        jax.jit = original


class Unrolled(NamedTuple):
    """A run of ``n`` identical blocks in a ``serial`` (``first`` .. ``last`` at ``path``) and the
    measured seconds to lower and compile a forward and backward pass of them as written
    (``serial_s``) and as ``jnn.repeat(block, n)`` (``repeat_s``)."""

    path: str
    first: str
    last: str
    n: int
    serial_s: float
    repeat_s: float

    def __str__(self) -> str:
        where, saved = (f"{self.path}/" if self.path else ""), self.serial_s - self.repeat_s
        return (f"{where}{self.first}..{self.last}: {self.n} identical blocks; jnn.repeat(block, {self.n}) compiles "
                f"in {self.repeat_s:.2f} s, as written {self.serial_s:.2f} s (" + (
                    f"saves {saved:.2f} s" if saved > 0 else "no saving at this depth") +
                "; params: jnn.layers.repeat.stack_params)")


def _compile_seconds(layer, x) -> float:
    params, state = jax.eval_shape(layer.init, jax.random.key(0), x)
    loss = lambda p, s, x: jnp.sum(layer.apply(p, s, x)[0].astype(jnp.float32))
    start = time.perf_counter()
    _JIT(jax.grad(loss)).lower(params, state, x).compile()
    return time.perf_counter() - start


def unrolled(model: core.Layer, example, *, min_copies: int = 2, measure: bool = True) -> list[Unrolled]:
    """Runs of at least ``min_copies`` identical consecutive children (same config, same param shapes,
    shape-keeping) in the ``serial`` composites of ``model``, with the compile time of each as written
    and as ``jnn.repeat`` (both compiled when ``measure``, else 0).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> block = jnn.residual(jnn.dense(8), jnn.relu())
      >>> [(u.first, u.last, u.n) for u in jnn.doctor.unrolled(jnn.serial(*[block] * 4), jnp.zeros((2, 8)),
      ...                                                      measure=False)]
      [('residual_0', 'residual_3', 4)]
    """
    params, state = jax.eval_shape(model.init, jax.random.key(0), core.shape_of(example))
    outputs: dict[str, Any] = {}

    def forward(p, s, x):
        with core.recording() as records:
            model.apply(p, s, x)
        outputs.update({path: jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), y)
                        for path, _, y, _ in records})

    jax.eval_shape(forward, params, state, core.shape_of(example))
    found = []

    def visit(layer, path, params):
        join = lambda key: f"{path}/{key}" if path else key
        items = list((layer.children or {}).items())
        same = lambda item: (repr(item[1]), str(outputs.get(join(item[0]))),
                             str(jax.tree_util.tree_map(lambda a: a.shape, params.get(item[0], {}))))
        for _, run in itertools.groupby(items if layer.kind == "serial" else (), key=same):
            run = list(run)
            x, n, block = outputs.get(join(run[0][0])), len(run), run[0][1]
            if n >= min_copies and isinstance(x, jax.ShapeDtypeStruct):   # identical outputs: shape-keeping
                times = ((_compile_seconds(serial(*[block] * n), x), _compile_seconds(repeat(block, n), x))
                         if measure else (0.0, 0.0))
                found.append(Unrolled(path, run[0][0], run[-1][0], n, *times))
        for key, child in items:
            visit(child, join(key), params.get(key, {}) if isinstance(params, dict) else {})

    visit(model, "", params)
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(step, train_state, batch, *, data_order=None) -> dict:
    """What a checkpoint should record to tell whether restoring code still runs the same program:
    ``{"program": hash of ``step(train_state, batch)`` lowered for their shapes (StableHLO), "versions":
    {library: version}, "data_order": hash of ``data_order`` (arrays, e.g. an epoch's
    :func:`jnn.train.epoch_order`) or None}``. JSON-serializable; compare with :func:`check_fingerprint`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> model, opt = jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((4, 2)))
      >>> step = jnn.train.make_train_step(model, jnn.losses.mse, opt)
      >>> old = jnn.doctor.fingerprint(step, ts, (jnp.zeros((4, 2)), jnp.zeros((4, 1))))
      >>> sorted(old), jnn.doctor.check_fingerprint(old, old)
      (['data_order', 'program', 'versions'], [])
    """
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), (train_state, batch))
    text = _JIT(step).lower(*abstract).as_text()   # placement (a restored state is committed) is not the program
    text = re.sub(r"^module @[\w.$-]+", "module", text, count=1)   # the function's name is not the program
    from jnn import __version__ as jnn_version   # jnn/__init__ imports this module
    versions = {"jnn": jnn_version, **{dist: importlib.metadata.version(dist) for dist in ("jax", "jaxlib", "optax",
                                                                                          "numpy")}}
    order = None if data_order is None else _sha(b"".join(
        np.ascontiguousarray(a).tobytes() for a in jax.tree_util.tree_leaves(jax.device_get(data_order))))
    return {"program": _sha(text.encode()), "versions": versions, "data_order": order}


def check_fingerprint(old: dict, new: dict, *, warn: bool = True) -> list[str]:
    """What differs between fingerprints ``old`` (saved) and ``new`` (now), one line each (entries
    missing from either are not compared); with ``warn``, a ``UserWarning`` listing them.

    Example:
      >>> import jnn
      >>> old = {"program": "a1", "versions": {"jax": "0.9"}, "data_order": None}
      >>> jnn.doctor.check_fingerprint(old, {**old, "versions": {"jax": "0.10"}}, warn=False)
      ['jax 0.9 -> 0.10']
    """
    changes = []
    if old.get("program") and new.get("program") and old["program"] != new["program"]:
        changes.append(f"the train step compiles to another program ({old['program']} -> {new['program']})")
    old_versions, new_versions = old.get("versions") or {}, new.get("versions") or {}
    changes += [f"{k} {old_versions[k]} -> {new_versions[k]}" for k in old_versions
                if k in new_versions and old_versions[k] != new_versions[k]]
    if old.get("data_order") and new.get("data_order") and old["data_order"] != new["data_order"]:
        changes.append("the data order differs (another seed, dataset or shuffling)")
    if changes and warn:
        warnings.warn("jnn.doctor: this run differs from the checkpoint's: " + "; ".join(changes), stacklevel=2)
    return changes
