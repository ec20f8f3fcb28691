"""Training from an iterable of ``(x, y)`` batches (``fit``'s stream path): device prefetch,
shape checks, resumable epochs. Chunks of :data:`CHUNK` batches run as one jitted ``lax.scan``
while the next two are read; the same batches in the same order give the in-memory path's
params. Every batch must have the first one's shapes (drop or pad a ragged last batch).
"""
from __future__ import annotations

import collections
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn.parallel import distributed as _parallel
from jnn import _checks as checks
from jnn.doctor import fingerprint
from jnn.train.checkpoint import StepCheckpoints
from jnn.train.compiler import compiler_options

__all__ = ["is_stream", "Feed", "StreamEpochs", "StreamEvaluation", "CHUNK"]

#: Batches per jitted scan when ``fit`` streams (``fused=True``; see benchmarks/RESULTS.md).
CHUNK = 8


def is_stream(train_data) -> bool:
    """Whether ``fit`` streams ``train_data``: an iterable other than a tuple, dict, string or array, or
    a list of ``(x, y)`` pairs (a list of batches; ``(x, y)`` itself is a tuple).

    Example:
      >>> import numpy as np
      >>> is_stream((np.zeros(3), np.zeros(3))), is_stream([(np.zeros(3), np.zeros(3))] * 2)
      (False, True)
    """
    if isinstance(train_data, list):
        return bool(train_data) and all(isinstance(b, (tuple, list)) and len(b) == 2 for b in train_data)
    return (not isinstance(train_data, (tuple, dict, str, bytes)) and not hasattr(train_data, "shape")
            and hasattr(train_data, "__iter__"))


def _spec(batch):
    return jax.tree_util.tree_structure(batch), [(np.shape(a), str(np.asarray(a).dtype) if not hasattr(a, "dtype")
                                                  else str(a.dtype)) for a in jax.tree_util.tree_leaves(batch)]


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _stack_host(arrays) -> np.ndarray:
    """``np.stack(arrays)``, or, when they are consecutive slices of one C-contiguous array (as
    Grain workers send them), that slice of it without a copy.

    Example:
      >>> import numpy as np
      >>> group = np.arange(24.0).reshape(4, 2, 3).copy()   # owns its memory, like a worker group
      >>> chunk = _stack_host([group[1], group[2]])
      >>> np.shares_memory(chunk, group), np.array_equal(chunk, group[1:3])
      (True, True)
    """
    first = arrays[0]
    base = first.base if isinstance(first, np.ndarray) else None
    if isinstance(base, np.ndarray) and base.flags.c_contiguous and base.strides[0] > 0:
        step = base.strides[0]
        start, offset = divmod(_address(first) - _address(base), step)
        if offset == 0 and start + len(arrays) <= len(base) and all(
                isinstance(a, np.ndarray) and a.base is base and a.shape == base.shape[1:] and a.dtype == base.dtype
                and a.strides == base.strides[1:] and _address(a) == _address(first) + i * step
                for i, a in enumerate(arrays)):
            return np.asarray(base[start:start + len(arrays)])
    return np.stack(arrays)


class Feed:
    """Batches of ``data`` on the device, ``prefetch`` pieces (a batch, or a chunk stacked on a new
    leading axis) ahead, each checked against the first; :attr:`state`: the iterator's, after the
    last piece handed out.

    Example:
      >>> import numpy as np
      >>> feed = Feed([(np.ones((2, 3)), np.zeros(2))] * 3, None, where="demo")
      >>> feed.start_epoch(1, sizes=[2, 1]); x, y = feed.next(1, 0); x.shape, feed.steps_per_epoch
      ((2, 2, 3), 3)
    """

    def __init__(self, data, steps_per_epoch: int | None, *, mesh=None, prefetch: int = 2, where: str = "fit"):
        self.data, self.mesh, self.prefetch, self.where = data, mesh, prefetch, where
        shards, expected = getattr(data, "shard_count", None), jax.process_count() if mesh is not None else 1
        if shards is not None and shards != expected:
            raise ValueError(f"{where}: train_data is sharded over {shards} processes but jax.process_count() is "
                             f"{jax.process_count()} and fit runs {'with' if mesh is not None else 'without'} a "
                             f"mesh, so it needs {expected} shard(s): with a mesh, build the pipeline in every "
                             f"process after jax.distributed.initialize (its default shard is grain's "
                             f"ShardByJaxProcess); without one, pass shard=grain.sharding.NoSharding()")
        self.fresh_each_epoch = steps_per_epoch is None
        if steps_per_epoch is None:
            try:
                steps_per_epoch = len(data)
            except TypeError:
                raise TypeError(f"{where}: train_data is an iterable without a len(); pass steps_per_epoch "
                                f"(jnn.train.Data(data, steps_per_epoch=k)) or a jnn.data.grain.Pipeline") from None
        self.steps_per_epoch = checks.positive_int(where, "steps_per_epoch", steps_per_epoch)
        self._iterator = iter(data)
        self._queue: collections.deque = collections.deque()   # (device piece, iterator state after it)
        self._plan: collections.deque = collections.deque()    # sizes of this epoch's pieces not yet read
        self._epoch, self._pulled = 0, 0                        # the epoch, and its next batch to read
        self.state = self._get_state()
        self.first = self._pull(1, 0)    # (host batch, state); peeked for shapes, trained on first
        self.spec = _spec(self.first[0])
        self._used, self._positioned, self._sizes_compared = False, False, False

    def global_shapes(self):
        """The first batch's shapes and dtypes as the train step sees them (with a mesh: global)."""
        processes = jax.process_count() if self.mesh is not None else 1
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((np.shape(a)[0] * processes, *np.shape(a)[1:]),
                                                                     a.dtype), self.first[0])

    @property
    def stateful(self) -> bool:
        return hasattr(self._iterator, "get_state") and hasattr(self._iterator, "set_state")

    def _get_state(self):
        return self._iterator.get_state() if self.stateful else None

    def _pull(self, epoch: int, index: int):
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise ValueError(f"{self.where}: train_data ran out after {index} batches of epoch {epoch}, but "
                             f"steps_per_epoch is {self.steps_per_epoch}; pass a smaller steps_per_epoch or "
                             f"an endless pipeline (jnn.data.grain.pipeline with num_epochs=None)") from None
        except Exception as e:  # noqa: BLE001 - Grain re-raises a worker's error; name where it happened
            raise type(e)(f"{self.where}: reading batch {index} of epoch {epoch} from train_data failed: {e}") from e
        return batch, self._get_state()

    def _check(self, batch, epoch: int, index: int):
        if (spec := _spec(batch)) != self.spec:
            names = ["batch" + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(batch)]
            checks.like_first_batch(self.where, f"batch {index} of epoch {epoch}", names, spec, self.spec)

    def _put(self, batch):
        if self.mesh is not None:   # processes compare their batch sizes once (a collective), not every step
            compare, self._sizes_compared = not self._sizes_compared, True
            return _parallel.global_batch(batch, self.mesh, check=compare)
        return jax.device_put(batch)

    def _piece(self, size: int):
        """The next ``size`` batches, checked, on the device (stacked if ``size > 1``), and the state after."""
        host = []
        for _ in range(size):
            if self.first is not None:
                (batch, state), self.first = self.first, None
            else:
                batch, state = self._pull(self._epoch, self._pulled)
            self._check(batch, self._epoch, self._pulled)
            host.append(batch)
            self._pulled += 1
        if size == 1:
            return self._put(host[0]), state
        if self.mesh is not None:   # global batches first (each process holds its part), then stacked
            return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[self._put(b) for b in host]), state
        stack = lambda *a: jnp.stack(a) if isinstance(a[0], jax.Array) else _stack_host(a)
        return jax.device_put(jax.tree_util.tree_map(stack, *host)), state

    def _fill(self):
        while len(self._queue) < self.prefetch and self._plan:
            self._queue.append(self._piece(self._plan.popleft()))

    def start_epoch(self, epoch: int, start: int = 0, sizes=None) -> None:
        """Begins epoch ``epoch`` at batch ``start``, read in pieces of ``sizes`` batches (default: 1s)."""
        if self.fresh_each_epoch and self._used and not self._positioned:
            self._iterator = iter(self.data)
        self._used, self._positioned = True, False
        sizes = [1] * (self.steps_per_epoch - start) if sizes is None else list(sizes)
        if sum(sizes) != self.steps_per_epoch - start or min(sizes, default=1) < 1:
            raise ValueError(f"{self.where}: the pieces {sizes} do not cover batches {start}.."
                             f"{self.steps_per_epoch - 1} of the epoch")
        self._queue.clear()
        self._plan, self._epoch, self._pulled = collections.deque(sizes), epoch, start
        self._fill()

    def next(self, epoch: int, index: int):
        """The next piece of ``epoch`` (starting at batch ``index``) on the device; prefetches on."""
        if not self._queue:
            self._fill()
        if not self._queue:
            raise ValueError(f"{self.where}: batch {index} of epoch {epoch} is past the epoch's plan")
        piece, self.state = self._queue.popleft()
        self._fill()
        return piece

    def close(self) -> None:
        """Closes the iterator if it can be (a Grain iterator stops its workers)."""
        self._queue.clear()
        close = getattr(self._iterator, "close", None)
        if callable(close):
            close()

    def restore(self, state, *, epoch_end: bool = False) -> None:
        """Continues from an iterator ``state`` saved with a checkpoint (see :attr:`state`); at an
        ``epoch_end``, a stream re-iterated every epoch needs none."""
        if not self.stateful and not (epoch_end and self.fresh_each_epoch):
            raise TypeError(f"{self.where}: train_data's iterator ({type(self._iterator).__name__}) has no "
                            f"get_state/set_state, so it cannot resume mid-epoch; use a Grain pipeline")
        if self.fresh_each_epoch:
            self._iterator = iter(self.data)
        if self.stateful:
            self._iterator.set_state(state.encode() if isinstance(state, str) and
                                     isinstance(self._get_state(), bytes) else state)
        self._queue.clear()
        self._plan.clear()
        self.first, self.state, self._positioned = None, state, True


class StreamEpochs:
    """``fit``'s epoch function over a :class:`Feed`, ``(train_state, _) -> (train_state, mean metrics)``,
    checkpointing finite states as ``checkpoint`` (:class:`~jnn.train.checkpoint.StepCheckpoints`) says;
    ``chunk`` batches run as one jitted ``lax.scan``, never across an epoch's end or a checkpoint.

    Example:
      >>> import jax, numpy as np, optax, jnn
      >>> (x, y), model, opt = jnn.data.xor(), jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:2])
      >>> feed = Feed([(x[:2], y[:2]), (x[2:], y[2:])], None)
      >>> epochs = StreamEpochs(jnn.train.make_train_step(model, jnn.losses.mse, opt), feed, ts)
      >>> ts, logs = epochs(ts, None); int(ts.step), sorted(logs)
      (2, ['loss'])
    """

    @checks.declare_as("StreamEpochs", chunk=checks.positive_int)
    def __init__(self, train_step, feed: Feed, ts, *, checkpoint=None, epochs: int | None = None,
                 initial_epoch: int = 0, chunk: int = 1):
        self.checkpoint, self.every, self.resuming = (checkpoint if isinstance(checkpoint, StepCheckpoints)
                                                      else StepCheckpoints(checkpoint, None, False))
        self.feed, self.chunk, self.epochs, self.saved = feed, chunk, epochs, None
        self.epoch, self.start, self.history = initial_epoch, 0, {}
        self.batch_size = int(jax.tree_util.tree_leaves(feed.global_shapes())[0].shape[0])
        logs = jax.eval_shape(train_step, ts, feed.global_shapes())[1]
        self._zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), logs)
        self.totals, self.fingerprint = None, None
        if self.checkpoint is not None:   # saved with each checkpoint, compared on resume; data order: the first
            self.fingerprint = fingerprint(train_step, ts, feed.global_shapes(),   # batch (one process's: its own)
                                           data_order=feed.first[0] if jax.process_count() == 1 else None)

        def step(ts, totals, batch):
            ts, logs = train_step(ts, batch)
            return ts, jax.tree_util.tree_map(jnp.add, totals, logs)

        def scan_chunk(ts, totals, batches):   # batches: `chunk` batches stacked on a leading axis
            return jax.lax.scan(lambda carry, batch: (step(*carry, batch), None), (ts, totals), batches)[0]

        options = compiler_options()
        self.step, self.scan_chunk = jax.jit(step, compiler_options=options), jax.jit(scan_chunk, compiler_options=options)
        self._split = jax.jit(lambda key: jax.random.split(key)[0])   # make_train_epoch's split
        finite = lambda a: jnp.isfinite(a).all() if jnp.issubdtype(a.dtype, jnp.inexact) else True
        self._finite = jax.jit(lambda tree: jnp.all(jnp.asarray([finite(a) for a in jax.tree_util.tree_leaves(tree)])))

    def resume(self, template, *, verbose: bool = False) -> tuple[Any, int]:
        """``(train_state, initial_epoch)``: ``template`` and the given epoch, or with ``resume=True``
        the latest checkpoint's, said in a ``jnn`` log record (and printed if ``verbose``)."""
        ckpt, n = self.checkpoint, self.feed.steps_per_epoch
        latest = None if ckpt is None else ckpt.latest_step()
        if ckpt is not None:
            self._finite(template)   # compiled before the first step
        checks.unused_directory("fit", ckpt and ckpt.directory, latest, self.resuming)
        if latest is None:
            if self.resuming:
                _say(f"fit: no checkpoint in {ckpt.directory}; starting fresh", verbose)
            return template, self.epoch
        ts, meta = ckpt.restore(template, fingerprint=self.fingerprint)
        where, progress = f"checkpoint {meta['step']} in {ckpt.directory}", meta.get("progress")
        checks.stream_progress("fit", where, progress, n, self.batch_size)
        self.feed.restore(meta["data_state"], epoch_end=progress["step_in_epoch"] == n)
        self.epoch, self.start, self.saved = progress["epoch"] - 1, progress["step_in_epoch"], int(meta["step"])
        self.totals = jax.tree_util.tree_map(lambda z, v: jnp.asarray(v, z.dtype), self._zeros,
                                             progress["totals"])
        self.history = progress["history"]
        done = self.epochs is not None and self.epoch + (self.start == n) >= self.epochs
        _say(f"fit: resumed from {where} (epoch {self.epoch + 1}, {self.start} of {n} batches)"
             + ("; the run is already complete: nothing to train" if done else ""), verbose)
        return ts, self.epoch

    def _plan(self, start: int, step: int) -> list[int]:
        """The epoch's piece sizes from batch ``start`` at step ``step``, stopping at each checkpoint."""
        sizes, index, n = [], start, self.feed.steps_per_epoch
        while index < n:
            size = min(self.chunk, n - index, self.every - step % self.every if self.every else n)
            sizes += [size] if size == self.chunk > 1 else [1] * size
            index, step = index + size, step + size
        return sizes

    def _save(self, ts, index: int) -> None:
        """Checkpoints ``ts`` after batch ``index`` unless it, or the epoch's metrics, are not finite."""
        totals = jax.tree_util.tree_map(float, jax.device_get(self.totals))
        if not (np.isfinite(jax.tree_util.tree_leaves(totals)).all() and self._finite(ts)):
            return
        progress = {"epoch": self.epoch, "step_in_epoch": index, "totals": totals, "history": self.history,
                    "steps_per_epoch": self.feed.steps_per_epoch, "batch_size": self.batch_size}
        state = self.feed.state.decode() if isinstance(self.feed.state, bytes) else self.feed.state
        self.saved = int(ts.step)
        self.checkpoint.save(self.saved, ts, data_state=state, progress=progress, fingerprint=self.fingerprint)

    def __call__(self, ts, _data=None):
        self.epoch += 1
        start, self.start = self.start, 0
        if start == 0:
            ts, self.totals = ts._replace(key=self._split(ts.key)), self._zeros
        step = int(ts.step) if self.every is not None else 0   # one device sync per epoch, not per step
        sizes = self._plan(start, step)
        self.feed.start_epoch(self.epoch, start, sizes)
        index = start
        for size in sizes:
            piece = self.feed.next(self.epoch, index)
            ts, self.totals = (self.scan_chunk if size > 1 else self.step)(ts, self.totals, piece)
            index, step = index + size, step + size
            if self.every is not None and step % self.every == 0:
                self._save(ts, index)
        n = self.feed.steps_per_epoch
        if self.resuming and self.epoch == self.epochs and self.saved != int(ts.step):   # a rerun finds it done
            self._save(ts, n)
        return ts, jax.tree_util.tree_map(lambda v: v / n, self.totals)


def _say(message: str, verbose: bool) -> None:
    logging.getLogger("jnn").info(message)
    if verbose:
        print(message, flush=True)


class StreamEvaluation:
    """``evaluate(params, state, batches, step=None) -> metrics``, exact over an iterable of ``(x, y)``
    batches (``fit``'s streamed ``val_data``): a smaller last batch is padded and masked out.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jnn
      >>> model = jnn.dense(1)
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> x, y = np.ones((5, 2), np.float32), np.zeros((5, 1), np.float32)
      >>> eval_fn = jnn.train.make_eval_fn(model, jnn.losses.mse)
      >>> streamed = StreamEvaluation(eval_fn)(params, state, [(x[:2], y[:2]), (x[2:4], y[2:4]), (x[4:], y[4:])])
      >>> bool(jnp.isclose(streamed["loss"], eval_fn(params, state, (x, y))["loss"]))
      True
    """

    def __init__(self, eval_fn):
        self.totals = jax.jit(eval_fn.batch_totals, compiler_options=compiler_options())

    def __call__(self, params, state, batches, step=None):
        size, sums, count = None, None, 0
        for index, batch in enumerate(batches):
            leaves = jax.tree_util.tree_leaves(batch)
            n = int(np.shape(leaves[0])[0])
            size = n if size is None else size
            if n > size:
                raise ValueError(f"fit: val_data batch {index} has {n} examples, more than the first batch's "
                                 f"{size}; only the last batch may be smaller")
            pad = lambda a: np.concatenate([np.asarray(a), np.zeros((size - n, *np.shape(a)[1:]), np.asarray(a).dtype)])
            x, y = jax.tree_util.tree_map(pad, tuple(batch))
            out = self.totals(params, state, x, y, np.arange(size) < n, step)
            sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
            count += n
        checks.require(count, "fit", "val_data yielded no batches")
        return {k: v / count for k, v in sums.items()}
