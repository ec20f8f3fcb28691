"""Grain input pipelines for :func:`jnn.train.fit` over random-access record sources (``__len__``,
``__getitem__``, optionally ``read_batch``): epoch ``e`` reads ``IndexShuffle(len(source), seed=[seed,
e])`` order; global batch ``k`` is positions ``[k * B, (k + 1) * B)``, process ``p`` of ``P`` reads ``p::P``."""
from __future__ import annotations

import functools
import os
import tempfile
from typing import Callable

import jax
import numpy as np

from jnn import _checks as checks
from jnn.io import write_error
from jnn.data import mnist
from jnn.train.permutation import IndexShuffle

__all__ = ["ArraySource", "NpySource", "write_npy", "stack_records", "mnist_record", "mnist_source",
           "shakespeare_source", "Pipeline", "pipeline", "random_translate"]


_function = checks.kind(lambda f: f is None or callable(f), "a function or None")
_count = checks.integer(0)
_shape = checks.satisfies(lambda s: isinstance(s, (tuple, list)) and len(s) > 0 and all(
    checks.is_integer(d) and d >= 0 for d in s), "a tuple of non-negative integers (records first)")


def _grain():
    try:
        import grain
    except ImportError:
        raise ImportError("jnn.data.grain needs Grain: pip install 'jnn[data]' (or pip install grain)") from None
    return grain


class ArraySource:
    """Records ``transform((a[i], b[i], ...))`` (``a[i]`` for one array) of arrays, memmaps or
    :class:`NpySource` files sharing axis 0.

    Example:
      >>> import numpy as np, jnn
      >>> src = jnn.data.grain.ArraySource(np.zeros((3, 2)), np.arange(3))
      >>> len(src), int(src[2][1]), [a.shape for a in src.read_batch(np.array([2, 0]))]
      (3, 2, [(2, 2), (2,)])
    """

    def __init__(self, *arrays, transform: Callable | None = None):
        checks.require(arrays, "ArraySource", "expected at least one array")
        for i, a in enumerate(arrays):
            if not (hasattr(a, "shape") and hasattr(a, "__getitem__")) or len(a.shape) < 1:
                hint = " (pass several arrays as separate arguments: ArraySource(x, y))" \
                    if isinstance(a, (tuple, list)) else ""
                got = f"{type(a).__name__} of shape {a.shape}" if hasattr(a, "shape") else f"a {type(a).__name__}"
                raise TypeError(f"ArraySource: each array must be a NumPy array, memmap or NpySource with records "
                                f"on axis 0; argument {i} is {got}{hint}")
            dtype = getattr(a, "dtype", None)
            checks.require(not getattr(dtype, "hasobject", False), "ArraySource", f"argument {i} holds Python "
                           f"objects (dtype {dtype}); records must be numeric arrays (of one shape each), so that "
                           f"they stack into batches", TypeError)
        _function("ArraySource", "transform", transform)
        sizes = [len(a) for a in arrays]
        checks.require(len(set(sizes)) == 1, "ArraySource", f"the arrays must have the same number of records, "
                       f"got {sizes}")
        self.arrays, self.transform = arrays, transform

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index: int):
        return self._convert(tuple(np.asarray(a[index]) for a in self.arrays))

    def read_batch(self, indices: np.ndarray):
        """The records at ``indices`` (int ``[B]``), stacked: ``(a[indices], b[indices], ...)``."""
        indices = np.asarray(indices)
        return self._convert(tuple(a.read_batch(indices) if hasattr(a, "read_batch") else np.asarray(a[indices])
                                   for a in self.arrays))

    def _convert(self, arrays: tuple):
        arrays = arrays[0] if len(arrays) == 1 else arrays
        return arrays if self.transform is None else self.transform(arrays)

    def __repr__(self) -> str:
        return f"ArraySource({len(self)} records, shapes {[a.shape[1:] for a in self.arrays]})"


class NpySource:
    """Records of a C-ordered ``.npy`` file, read with ``os.pread`` (nothing mapped: bounded memory).

    Example:
      >>> import os, tempfile, numpy as np, jnn
      >>> path = os.path.join(tempfile.mkdtemp(), "a.npy"); np.save(path, np.arange(12).reshape(4, 3))
      >>> src = jnn.data.grain.NpySource(path)
      >>> len(src), src[2].tolist()
      (4, [6, 7, 8])
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            try:
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
            except (ValueError, EOFError, SyntaxError, TypeError) as e:   # NumPy's words for a bad header
                raise ValueError(f"NpySource: {self.path} is not a readable .npy file ({e}); write it with "
                                 f"np.save or jnn.data.grain.write_npy") from None
            self.offset = f.tell()
            size = os.fstat(f.fileno()).st_size
        checks.require(not fortran, "NpySource", f"{self.path} is Fortran-ordered; save it C-ordered")
        checks.require(not dtype.hasobject, "NpySource", f"{self.path} holds Python objects (dtype {dtype}), which "
                       f"are pickled and cannot be read by record; save a numeric array")
        checks.require(shape, "NpySource", f"{self.path} holds one value (shape ()); records lie on axis 0")
        self.shape, self.dtype = shape, dtype
        self.record_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        whole = (size - self.offset) // self.record_bytes if self.record_bytes else shape[0]
        checks.require(whole >= shape[0], "NpySource", f"short read of record {whole} from {self.path}: the file is "
                       f"truncated (its header says shape {shape} of {dtype}, {shape[0] * self.record_bytes} bytes of "
                       f"records; it holds {size - self.offset}); write it again", OSError)
        self._fd = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"NpySource: record {index} out of range [0, {len(self)}) in {self.path}")
        return self.read_batch(np.array([index]))[0]

    def read_batch(self, indices: np.ndarray) -> np.ndarray:
        """The records at ``indices`` as one ``[B, ...]`` array (one ``pread`` per record)."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"NpySource: records [{indices.min()}, {indices.max()}] out of range "
                             f"[0, {len(self)}) in {self.path}")
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        rows = out.reshape(len(indices), -1).view(np.uint8)
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            for row, index in zip(rows, indices.tolist()):
                if os.preadv(self._fd, [row], self.offset + index * self.record_bytes) != self.record_bytes:
                    raise OSError(f"NpySource: short read of record {index} from {self.path} (file truncated?)")
        except OSError as e:
            if str(e).startswith("NpySource"):
                raise
            raise OSError(e.errno, f"NpySource: reading {self.path} failed: {e.strerror or e}") from e
        return out

    def __getstate__(self):   # worker processes open their own file descriptor
        return {**self.__dict__, "_fd": None}

    def __repr__(self) -> str:
        return f"NpySource({self.path!r}, shape={self.shape}, dtype={self.dtype})"


@checks.declare(shape=_shape, overwrite=checks.flag)
def write_npy(path, shape: tuple[int, ...], dtype, chunks, *, overwrite: bool = False) -> None:
    """Writes a ``.npy`` file of ``shape`` from ``chunks`` (first axes adding up to ``shape[0]``), one
    chunk in memory at a time, atomically.

    Example:
      >>> import os, tempfile, numpy as np, jnn
      >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
      >>> jnn.data.grain.write_npy(path, (5, 2), np.int32, (np.ones((n, 2), np.int32) for n in (2, 3)))
      >>> np.load(path).sum()
      np.int64(10)
    """
    path, dtype, shape, written = os.fspath(path), np.dtype(dtype), tuple(shape), 0
    checks.require(not dtype.hasobject, "write_npy", f"dtype {dtype} holds Python objects, which a .npy file can "
                   f"only pickle; records must be numeric")
    checks.require(overwrite or not os.path.exists(path), "write_npy", f"{path} exists; pass overwrite=True to "
                   f"replace it", FileExistsError)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")   # a fresh name, never a user's
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": shape})
            for i, chunk in enumerate(chunks):
                try:
                    chunk = np.ascontiguousarray(chunk, dtype)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"write_npy: chunk {i} cannot be converted to {dtype} ({e})") from None
                checks.require(chunk.shape[1:] == shape[1:], "write_npy", f"a chunk has records of shape "
                               f"{chunk.shape[1:]}, expected {shape[1:]}")
                f.write(chunk.tobytes())
                written += len(chunk)
        checks.require(written == shape[0], "write_npy", f"the chunks hold {written} records, the shape says "
                       f"{shape[0]}")
        os.replace(tmp, path)
    except OSError as e:
        raise write_error("write_npy", path, e) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def mnist_record(record):
    """uint8 MNIST ``(image, label)`` -> ``(float32 image / 255 [..., 1], int32 label)``, elementwise.

    Example:
      >>> import numpy as np, jnn
      >>> image, label = jnn.data.grain.mnist_record((np.full((2, 28, 28), 255, np.uint8), np.array([3, 7])))
      >>> image.shape, image.dtype, float(image.max()), label.dtype
      ((2, 28, 28, 1), dtype('float32'), 1.0, dtype('int32'))
    """
    image, label = record
    return (image.astype(np.float32) / np.float32(255.0))[..., None], np.asarray(label, np.int32)


def mnist_source(split: str = "train", *, data_dir: str | os.PathLike[str] | None = None,
                 download: bool = True) -> ArraySource:
    """MNIST as a source of ``(float32 [28, 28, 1] in [0, 1], int32 label)``, converted on read.

    Example:
      >>> jnn.data.grain.mnist_source("test", download=False)[0][0].shape  # doctest: +SKIP
      (28, 28, 1)
    """
    images, labels = mnist.read_mnist(split, data_dir=data_dir, download=download, where="mnist_source")
    return ArraySource(images, labels, transform=mnist_record)


class _Windows:
    def __init__(self, ids: np.ndarray, seq_len: int, stride: int):
        self.ids, self.seq_len, self.stride = ids, seq_len, stride

    def __len__(self) -> int:
        return (len(self.ids) - self.seq_len - 1) // self.stride + 1

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"shakespeare_source: window {index} out of range [0, {len(self)})")
        start = index * self.stride
        return self.ids[start:start + self.seq_len], self.ids[start + 1:start + self.seq_len + 1]

    def read_batch(self, indices: np.ndarray):
        cut = np.asarray(indices)[:, None] * self.stride + np.arange(self.seq_len)
        return self.ids[cut], self.ids[cut + 1]


@checks.declare(seq_len=checks.positive_int, stride=checks.optional(checks.positive_int))
def shakespeare_source(seq_len: int, *, stride: int | None = None, text: str | None = None, vocab=None):
    """``(source, vocab)``: Tiny Shakespeare (or ``text``) as :func:`jnn.data.lm_windows`-style int32
    records; ``vocab`` defaults to a :class:`jnn.data.CharVocab` of ``text``.

    Example:
      >>> import jnn
      >>> src, vocab = jnn.data.grain.shakespeare_source(4, text="to be or not")
      >>> len(src), vocab.decode(src[1][0]), vocab.decode(src[1][1])
      (2, 'e or', ' or ')
    """
    from jnn.data.shakespeare import load_tiny_shakespeare
    from jnn.data.text import CharVocab
    text = load_tiny_shakespeare() if text is None else text
    vocab = CharVocab(text) if vocab is None else vocab
    ids = np.asarray(vocab.encode(text), np.int32)
    checks.require(len(ids) > seq_len, "shakespeare_source", f"the text has {len(ids)} characters, fewer than "
                   f"seq_len + 1 = {seq_len + 1}")
    return _Windows(ids, seq_len, stride or seq_len), vocab


class Pipeline:
    """Batches from :func:`pipeline` (iterate it or pass it to ``fit``): ``dataset``, ``steps_per_epoch``
    (per process), ``batch_size`` (global), ``shard_count``.

    Example:
      >>> import numpy as np, jnn
      >>> p = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(np.arange(6.0)), batch_size=2, seed=0)
      >>> p.steps_per_epoch, next(iter(p)).shape
      (3, (2,))
    """

    def __init__(self, dataset, steps_per_epoch: int, batch_size: int, shard_count: int = 1, read_options=None):
        self.dataset, self.steps_per_epoch, self.batch_size = dataset, steps_per_epoch, batch_size
        self.shard_count, self.read_options = shard_count, read_options

    def __iter__(self):
        if self.read_options is not None and isinstance(self.dataset, _grain().MapDataset):
            return iter(self.dataset.to_iter_dataset(self.read_options))
        return iter(self.dataset)

    def __repr__(self) -> str:
        return (f"Pipeline(steps_per_epoch={self.steps_per_epoch}, batch_size={self.batch_size}, "
                f"shard_count={self.shard_count})")


@checks.declare_as("jnn.data.grain.pipeline", batch_size=checks.positive_int, shuffle=checks.flag,
                   drop_remainder=checks.flag, seed=checks.integer(0, described="a non-negative integer"),
                   num_epochs=checks.integer(1, or_none=True), transform=_function, random_transform=_function,
                   worker_count=_count, worker_nice=checks.integer(0, 19), read_threads=_count, prefetch=_count)
def pipeline(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
             drop_remainder: bool = True, transform: Callable | None = None, random_transform: Callable | None = None,
             worker_count: int = 0, worker_nice: int = 19, read_threads: int = 2, prefetch: int = 4,
             shard=None) -> Pipeline:
    """Shuffled, sharded Grain pipeline of global ``batch_size`` over a record source (order: module
    docstring; ``num_epochs=None``: endless). ``random_transform(record, rng)`` gets
    ``rng = np.random.default_rng([seed, epoch, record index])``; ``worker_count`` processes (0: threads)
    run at ``worker_nice``; ``shard`` defaults to ``ShardByJaxProcess()``.

    Example:
      >>> import numpy as np, jnn
      >>> src = jnn.data.grain.ArraySource(np.arange(10))
      >>> p = jnn.data.grain.pipeline(src, batch_size=4, seed=0, num_epochs=2)
      >>> [sorted(b.tolist()) != sorted(c.tolist()) for b, c in zip(p.dataset[:2], p.dataset[2:])]
      [True, True]
    """
    grain = _grain()
    if shard is None:
        shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    where, count = "jnn.data.grain.pipeline", shard.shard_count
    checks.require(hasattr(source, "__len__") and hasattr(source, "__getitem__"), where, f"source must support "
                   f"len() and indexing (e.g. jnn.data.grain.ArraySource), got {type(source).__name__}", TypeError)
    checks.require(batch_size % count == 0, where, f"the global batch_size {batch_size} does not split over {count} "
                   f"shards (processes); use a multiple of {count}")
    checks.require(0 <= shard.shard_index < count, where, f"shard_index {shard.shard_index} is not in [0, {count})")
    checks.require(drop_remainder or count == 1, where, f"drop_remainder=False works with one shard only (got "
                   f"{count}); evaluate on one process, or keep drop_remainder=True")
    steps = len(source) // batch_size if drop_remainder else -(-len(source) // batch_size)
    checks.require(steps, where, f"the source has {len(source)} records, fewer than one global batch of {batch_size}")
    reader = _BatchReader(source, batch_size, steps, seed, shuffle, drop_remainder, shard.shard_index, count,
                          transform, random_transform)
    ds = grain.MapDataset.range(steps).repeat(num_epochs).map_with_index(reader)
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
    if worker_count:
        from absl import flags   # Grain reads an absl flag in mp_prefetch: unparsed flags raise (google/grain#1355)
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        group = _worker_group(reader(0, 0)) if drop_remainder else 1   # equal batches only
        if group > 1:   # a worker sends `group` consecutive batches at a time (see _Unstack)
            ds = ds.batch(group, drop_remainder=False)
        options = grain.MultiprocessingOptions(num_workers=worker_count)
        ds = ds.to_iter_dataset(read).mp_prefetch(options, worker_init_fn=functools.partial(_renice, int(worker_nice)))
        if group > 1:
            ds = grain.experimental.FlatMapIterDataset(ds, _Unstack(group))
    return Pipeline(ds, steps, batch_size, count, read)


_WORKER_GROUP_BYTES = 16 * 2**20   # workers send consecutive batches together, up to this many bytes


def _worker_group(batch) -> int:
    """Batches per worker element: up to 32, at most ``_WORKER_GROUP_BYTES`` (at least one)."""
    size = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(batch))
    return int(max(1, min(32, _WORKER_GROUP_BYTES // max(size, 1))))


def _renice(increment: int, worker_index: int, worker_count: int) -> None:
    """Grain ``worker_init_fn`` (with ``increment`` bound): lowers a worker's priority (``os.nice``)."""
    if increment and hasattr(os, "nice"):
        os.nice(increment)


class _Unstack:
    """Grain flat-map: a group of stacked batches -> the batches, in order (views)."""

    def __init__(self, group: int):
        self.max_fan_out = group

    def flat_map(self, group):
        leaves, treedef = jax.tree_util.tree_flatten(group)
        return [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves])
                for i in range(len(leaves[0]))]


def stack_records(records: list, indices) -> object:
    """``records`` (pytrees of arrays) stacked into one batch; a mismatch names two records that differ.

    Example:
      >>> import numpy as np
      >>> stack_records([(np.zeros(2), 1), (np.ones(2), 2)], [0, 1])[0].shape
      (2, 2)
    """
    try:
        return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *records)   # any pytree of records
    except (ValueError, TypeError):   # say which records differ (the cost is paid only on failure)
        shapes = lambda r: [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(r)]
        for what, first, then, describe in (("structures", "is", "is", jax.tree_util.tree_structure),
                                            ("shapes", "has shapes", "has", shapes)):
            seen = [describe(r) for r in records]
            odd = next((i for i, d in enumerate(seen) if d != seen[0]), None)
            if odd is not None:
                raise ValueError(f"records of different {what} cannot be batched: record {int(indices[0])} {first} "
                                 f"{seen[0]}, record {int(indices[odd])} {then} {seen[odd]}") from None
        raise


class _BatchReader:
    """``(i, k) -> batch k of epoch i // steps`` for this shard (see the module docstring)."""

    def __init__(self, source, batch_size, steps, seed, shuffle, drop_remainder, shard_index, shard_count,
                 transform, random_transform):
        self.source, self.batch_size, self.steps, self.seed = source, batch_size, steps, seed
        self.shuffle, self.shard_index, self.shard_count = shuffle, shard_index, shard_count
        self.transform, self.random_transform = transform, random_transform
        self.kept = steps * batch_size if drop_remainder else len(source)
        # the shuffle is evaluated for blocks of 64 global batches at a time (the per-call cost of
        # NumPy dominates at one batch's size); memory O(64 batches), not O(source)
        self.block_positions = 64 * batch_size
        self._block = (None, 0, None)   # ((epoch, block), first position, record indices)

    def indices(self, epoch: int, k: int) -> np.ndarray:
        """The record indices of this shard's part of global batch ``k`` in ``epoch``."""
        start = k * self.batch_size
        positions = np.arange(start + self.shard_index, min(start + self.batch_size, self.kept), self.shard_count)
        if not self.shuffle:
            return positions
        block = start // self.block_positions
        cached = self._block   # read once: reader threads may be on different blocks
        if cached[0] != (epoch, block):
            first = block * self.block_positions
            values = IndexShuffle(len(self.source), seed=[self.seed, epoch])(
                np.arange(first, min(first + self.block_positions, len(self.source))))
            self._block = cached = ((epoch, block), first, values)
        return cached[2][positions - cached[1]]

    def __call__(self, i: int, k: int):
        epoch = i // self.steps
        indices = self.indices(epoch, k)
        if self.transform is None and self.random_transform is None and hasattr(self.source, "read_batch"):
            return self.source.read_batch(indices)
        if hasattr(self.source, "__getitems__"):
            records = list(self.source.__getitems__(indices.tolist()))
        else:
            records = [self.source[index] for index in indices.tolist()]
        if self.transform is not None:
            records = [self.transform(r) for r in records]
        if self.random_transform is not None:
            records = [self.random_transform(r, np.random.default_rng([self.seed, epoch, index]))
                       for r, index in zip(records, indices.tolist())]
        return stack_records(records, indices)

    def __getstate__(self):   # worker processes evaluate their own blocks of the shuffle
        return {**self.__dict__, "_block": (None, 0, None)}


@checks.declare(max_shift=checks.integer(0, described="a non-negative integer"))
def random_translate(max_shift: int) -> Callable:
    """A ``random_transform`` shifting an ``(image [H, W, C], label)`` by up to ``max_shift`` pixels.

    Example:
      >>> import numpy as np, jnn
      >>> image = np.zeros((5, 5, 1), np.float32); image[2, 2] = 1
      >>> out, label = jnn.data.grain.random_translate(2)((image, 3), np.random.default_rng(0))
      >>> float(out.sum()), label
      (1.0, 3)
    """

    def apply(record, rng: np.random.Generator):
        image, label = record
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        out = np.zeros_like(image)
        h, w = image.shape[:2]
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out, label

    return apply

