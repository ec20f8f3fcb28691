"""Checkpoints of a whole :class:`~jnn.train.TrainState`, written with Orbax: per step, a directory
``<directory>/<step>/`` of the train state and a JSON ``meta`` (your config, versions, ``fit``'s
fingerprint, every leaf's path, shape and dtype), renamed into place only when complete. Resume with
``fit(..., train_state=Start(ckpt.restore(template)[0], epoch=step))``.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import contextlib
import pathlib
import shutil
import warnings
from typing import Any, Callable, NamedTuple

import jax

from jnn import _checks as checks
from jnn import tree as _tree
from jnn.doctor import check_fingerprint


class _LazyOrbax:
    """``orbax.checkpoint``, imported on first use: importing it costs ~0.2 s of ``import jnn``."""

    def __getattr__(self, name):
        import orbax.checkpoint
        return getattr(orbax.checkpoint, name)


ocp = _LazyOrbax()

__all__ = ["Checkpointer", "StepCheckpoints"]

_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_FORMAT = 1


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _leaf_table(tree) -> dict[str, list]:
    """``{path: [shape, dtype]}`` of every leaf (keys as their raw uint32 key data)."""
    return {p: [list(leaf.shape), str(leaf.dtype)] for p, leaf in _tree.leaves_with_paths(tree)}


def _saveable(tree):
    """``tree`` with typed PRNG keys replaced by their ``key_data``."""
    return jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _with_shardings(abstract, template):
    """``abstract`` with each leaf given its template leaf's sharding (restores onto any mesh)."""
    def attach(a, t):
        sharding = getattr(t, "sharding", None)
        return a if sharding is None else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
    return jax.tree_util.tree_map(attach, abstract, template)


def _listing(items: list[str], sep: str = ", ", limit: int = 20) -> str:
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def _mismatch(saved: dict[str, list], expected: dict[str, list]) -> list[str]:
    found = [("missing from the checkpoint (in the template only): ", [p for p in expected if p not in saved], ", "),
             ("unexpected in the checkpoint (not in the template): ", [p for p in saved if p not in expected], ", "),
             ("shape mismatch: ", [f"{p}: checkpoint {tuple(saved[p][0])} vs template {tuple(expected[p][0])}"
                                   for p in expected if p in saved and saved[p][0] != expected[p][0]], "; ")]
    return [title + _listing(items, sep) for title, items, sep in found if items]


def _as_step(where: str, step) -> int:
    return checks.integral(f"Checkpointer.{where}", "step", step)


_CONFIG = checks.instance_of(dict, type(None), described="a JSON-serializable dict or None")


class StepCheckpoints(NamedTuple):
    """A checkpointer with how a streamed ``fit`` uses it (:meth:`Checkpointer.every_steps`)."""

    checkpointer: Any
    every: int | None
    resume: bool


class Checkpointer:
    """Saves and restores train states in ``directory`` (created by the first save), keeping the
    last ``keep`` (``None``: all); ``config``, a JSON-serializable dict, is stored with each save.
    Saves are synchronous and only go forward; in a multi-process run every process calls them.

    Example:
      >>> import os, tempfile, jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 2)))
      >>> with jnn.train.Checkpointer(os.path.join(tempfile.mkdtemp(), "ckpt"), keep=2, config={"units": 1}) as ckpt:
      ...     for epoch in (1, 2, 3):
      ...         ckpt.save(epoch, ts, logs={"loss": 0.5})
      ...     restored, meta = ckpt.restore(ts)   # ts is only the template: structure, shapes, dtypes
      ...     steps = ckpt.all_steps()
      >>> steps, meta["config"], bool(jnp.all(restored.params["w"] == ts.params["w"]))
      ([2, 3], {'units': 1}, True)
    """

    @checks.declare_as("Checkpointer", keep=checks.positive_int_or(None), config=_CONFIG)
    def __init__(self, directory, *, keep: int | None = 3, config: dict | None = None):
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.keep, self.config = keep, config
        checks.creatable_directory("Checkpointer", self.directory)
        self._options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False,
                                                     create=True, cleanup_tmp_directories=False)
        self._orbax = None

    @property
    def _manager(self):
        if self._orbax is None:
            self._orbax = ocp.CheckpointManager(self.directory, options=self._options,
                                                item_names=("train_state", "meta"))
        return self._orbax

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, keep={self.keep})"

    def all_steps(self) -> list[int]:
        """The committed checkpoint steps, ascending (partial saves and deletions are never listed)."""
        if not self.directory.is_dir():
            return []
        self._manager.reload()
        return sorted(s for s in self._manager.all_steps()
                      if all((self.directory / str(s) / item).is_dir() for item in ("train_state", "meta")))

    def latest_step(self) -> int | None:
        """The newest committed step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    @checks.declare_as("Checkpointer.save", config=_CONFIG)
    def save(self, step: int, train_state, *, config: dict | None = None, logs: dict | None = None,
             data_state=None, progress: dict | None = None, fingerprint: dict | None = None) -> None:
        """Writes ``train_state`` (any pytree of arrays) as checkpoint ``step``, a non-negative int
        after every saved step, then drops checkpoints beyond the last ``keep``. ``config``
        (default: the constructor's), ``logs``, ``data_state`` (a Grain iterator's state), ``progress``
        (position within an epoch) and ``fingerprint`` (:func:`jnn.doctor.fingerprint`; ``fit`` passes
        its own) are JSON-serializable and stored in ``meta``."""
        step, latest = _as_step("save", step), self.latest_step()
        checks.require(step >= 0 and (latest is None or step > latest), "Checkpointer.save",
                       f"step {step} must be >= 0 and after the latest checkpoint ({latest}) in {self.directory}; "
                       f"save to a new directory or delete the later checkpoints with Checkpointer.delete(step)")
        for tmp in self.directory.glob(f"*{_TMP_SUFFIX}*") if jax.process_index() == 0 else ():
            shutil.rmtree(tmp, ignore_errors=True)
        tree = _saveable(train_state)
        meta = {
            "format": _FORMAT, "step": step, "logs": logs, "config": self.config if config is None else config,
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {name: _version(dist) for name, dist in
                         (("jnn", "jnn"), ("jax", "jax"), ("jaxlib", "jaxlib"), ("optax", "optax"),
                          ("orbax", "orbax-checkpoint"), ("numpy", "numpy"))},
            "key_impls": {p: str(jax.random.key_impl(leaf))
                          for p, leaf in _tree.leaves_with_paths(train_state) if _is_key(leaf)},
            "tree": _leaf_table(tree), "fingerprint": fingerprint,
        }
        if data_state is not None or progress is not None:
            meta.update(data_state=data_state, progress=progress)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise TypeError(f"Checkpointer.save: config and logs must be JSON-serializable, as must data_state "
                            f"and progress ({e})") from None
        saved = self._manager.save(step, args=ocp.args.Composite(train_state=ocp.args.StandardSave(tree),
                                                                  meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
        if not saved:
            raise RuntimeError(f"Checkpointer.save: Orbax declined to save step {step} in {self.directory}")
        for old in self.all_steps()[:-self.keep] if self.keep else ():
            self._remove(old)

    @checks.declare_as("Checkpointer.save_every", every=checks.positive_int)
    def save_every(self, every: int = 1, *, config: dict | None = None) -> Callable:
        """A ``fit`` callback saving after every ``every``-th epoch and after the last (finite) one as step
        ``epoch``, with its logs; a new run (step 0) into a directory that holds checkpoints is refused
        before training."""
        def on_epoch_end(epoch: int, train_state, logs: dict) -> None:
            if epoch % every == 0:
                self.save(epoch, train_state, config=config, logs=logs, fingerprint=on_epoch_end.fingerprint)

        def on_train_begin(ts) -> None:   # a resumed run (step > 0) is compared with the latest checkpoint
            latest = self.latest_step()
            checks.unused_directory("Checkpointer.save_every", self.directory, None if int(ts.step) else latest,
                                    False, "restore one and pass train_state=jnn.train.Start(restored, epoch=step)"
                                           " to continue from it")
            if latest is not None and int(ts.step):
                self._compare(self.read_meta(latest), on_epoch_end.fingerprint)

        def on_train_end(ts, history: dict) -> None:   # the last epoch too, so a rerun trains nothing
            last = (history.get("epoch") or [0])[-1]
            logs = {k: v[-1] for k, v in history.items() if v}
            finite = all(bool(jax.numpy.isfinite(a).all()) for a in jax.tree_util.tree_leaves((logs, ts.params)))
            if last % every and finite:   # a run stopped by a non-finite epoch keeps its last good checkpoint
                self.save(int(last), ts, config=config, logs=logs, fingerprint=on_epoch_end.fingerprint)

        on_epoch_end.on_train_begin, on_epoch_end.on_train_end = on_train_begin, on_train_end
        on_epoch_end.fingerprint = None   # fit sets it
        return on_epoch_end

    @checks.declare_as("Checkpointer.every_steps", every=checks.optional(checks.positive_int), resume=checks.flag)
    def every_steps(self, every: int | None = None, *, resume: bool = False) -> "StepCheckpoints":
        """A stream ``fit``'s ``checkpoint=``: save every ``every`` steps (finite states only); ``resume``
        from the latest (saying which) and save the final step too, so that a rerun of a finished run trains nothing."""
        return StepCheckpoints(self, every, resume)

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of checkpoint ``step`` (default: the latest)."""
        step = self._resolve(step, "read_meta")
        with self._corrupt(step):
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        checks.require(isinstance(out.meta, dict) and "tree" in out.meta, "Checkpointer",
                       f"step {step} in {self.directory} has no jnn metadata; was it written by "
                       f"jnn.train.checkpoint.Checkpointer?")
        return checks.complete_meta(f"Checkpointer: checkpoint {step} in {self.directory}", out.meta)

    def restore(self, template, step: int | None = None, *, fingerprint: dict | None = None) -> tuple[Any, dict]:
        """``(train_state, meta)`` of checkpoint ``step`` (default: the latest), restored into
        ``template``'s structure, dtypes and shardings (its values unused); mismatches raise. A
        ``fingerprint`` (:func:`jnn.doctor.fingerprint`) of this run is compared with the saved one."""
        step = self._resolve(step, "restore")
        meta = self.read_meta(step)
        self._compare(meta, fingerprint)
        abstract = jax.eval_shape(_saveable, template)
        problems = _mismatch(meta["tree"], _leaf_table(abstract))
        if problems:
            raise ValueError(f"Checkpointer.restore: checkpoint {step} in {self.directory} does not match the "
                             f"template's structure (a different model or optimizer?):\n  "
                             + "\n  ".join(problems))
        with self._corrupt(step):
            out = self._manager.restore(step, args=ocp.args.Composite(
                train_state=ocp.args.StandardRestore(_with_shardings(abstract, template))))
        impls = meta.get("key_impls", {})

        def rewrap(path, tmpl, value):
            if not _is_key(tmpl):
                return value
            p = _tree.path_str(path)
            key = jax.random.wrap_key_data(value, impl=impls.get(p, "threefry2x32"))
            if key.dtype != tmpl.dtype:
                raise ValueError(f"Checkpointer.restore: key {p!r} was saved as {key.dtype}, the template "
                                 f"has {tmpl.dtype}")
            return key

        restored = jax.tree_util.tree_map_with_path(rewrap, template, out.train_state)
        return restored, meta

    @checks.declare_as("Checkpointer.restore_params", like=checks.optional(checks.kind(
        lambda v: isinstance(v, (tuple, list)) and len(v) == 2, "a (params, state) pair")))
    def restore_params(self, step: int | None = None, *, like=None) -> tuple[Any, Any]:
        """``(params, state)`` of checkpoint ``step`` (default: the latest), shaped like ``like`` if given."""
        from jnn import io as _io
        step = self._resolve(step, "restore_params")
        self.read_meta(step)  # a jnn checkpoint?
        with self._corrupt(step):
            tree = self._manager.restore(step, args=ocp.args.Composite(
                train_state=ocp.args.StandardRestore())).train_state
        params, state = tree["params"], tree["state"]
        if like is not None:
            both = _io.unflatten(_io.flatten({"params": params, "state": state}),
                                 like={"params": like[0], "state": like[1]},
                                 where=f"Checkpointer.restore_params (step {step} in {self.directory})")
            params, state = both["params"], both["state"]
        return params, state

    def _compare(self, meta: dict, fingerprint: dict | None) -> list[str]:
        """What differs between ``meta``'s fingerprint and ``fingerprint`` (either None: nothing),
        warned as a ``UserWarning`` naming the checkpoint (:func:`jnn.doctor.check_fingerprint`)."""
        changes = check_fingerprint(meta.get("fingerprint") or {}, fingerprint or {}, warn=False)
        if changes:
            warnings.warn(f"Checkpointer: checkpoint {meta['step']} in {self.directory} was saved by a run that "
                          f"differs from this one: " + "; ".join(changes), stacklevel=3)
        return changes

    def delete(self, step: int) -> None:
        """Deletes checkpoint ``step``."""
        self._remove(self._resolve(step, "delete"))

    def _remove(self, step: int) -> None:
        """Renames step ``step`` out of the listing (atomic), then deletes it: a kill leaves no half step."""
        if jax.process_index() == 0:
            gone = self.directory / f"{step}{_TMP_SUFFIX}-deleting"
            (self.directory / str(step)).rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending work and releases Orbax's resources."""
        if self._orbax is not None:
            self._orbax.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _corrupt(self, step: int):
        """Turns Orbax/zarr read failures into "checkpoint N is incomplete or corrupt"."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - tensorstore/zarr/asyncio raise many types
            good = [s for s in self.all_steps() if s != step and self._readable(s)]
            latest = f"the latest good one is {good[-1]}" if good else "there is no other checkpoint"
            raise ValueError(f"Checkpointer: checkpoint {step} in {self.directory} is incomplete or corrupt; "
                             f"{latest} (restore(step=...) it, or delete step {step}); cause: "
                             f"{type(e).__name__}: {str(e)[:200]}") from None

    def _readable(self, step: int) -> bool:
        try:
            self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return True
        except Exception:  # noqa: BLE001
            return False

    def _resolve(self, step: int | None, where: str) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"Checkpointer.{where}: no checkpoint in {self.directory}")
            return steps[-1]
        if _as_step(where, step) not in steps:
            raise FileNotFoundError(f"Checkpointer.{where}: no checkpoint {step} in {self.directory}; "
                                    f"saved steps: {steps}")
        return int(step)
