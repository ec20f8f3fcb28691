"""Files: safe writes, and weight files (``.safetensors`` or ``.npz``) for params and state.

A weight file holds flat ``path -> array`` entries, paths as in :mod:`jnn.tree`
(``"block_0/dense_1/w"``). :func:`flatten` and :func:`unflatten` convert between the two forms;
:func:`load_params` with ``like=`` checks a file against a model's expected structure and lists
every missing, unexpected and mis-shaped entry by path.

The ``.safetensors`` reader and writer are jnn's own (the format is a JSON header and raw
little-endian bytes, https://github.com/huggingface/safetensors); files round-trip with the
``safetensors`` package, and bfloat16 works (which ``safetensors.numpy`` cannot load).

Example:
  >>> import tempfile, pathlib, jax, jax.numpy as jnp, jnn
  >>> model = jnn.serial(jnn.dense(3), jnn.relu(), jnn.dense(2))
  >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "mlp.safetensors"
  >>> jnn.io.save_params(path, params)
  >>> sorted(jnn.io.flatten(params))
  ['dense_0/b', 'dense_0/w', 'dense_1/b', 'dense_1/w']
  >>> loaded = jnn.io.load_params(path, like=params)
  >>> bool(jnp.array_equal(loaded["dense_1"]["w"], params["dense_1"]["w"]))
  True
"""
from __future__ import annotations

import io as _io
import json
import os
import pathlib
import struct
import tempfile
import zipfile
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jnn import _checks as checks

__all__ = ["atomic_write", "check_target", "fresh_path", "flatten", "unflatten", "save_params", "load_params",
           "structure_problems"]


def check_target(where: str, path, overwrite) -> pathlib.Path:
    """``path`` as a ``pathlib.Path``, once it is known to be writable as a new file: refused
    (before any work is done) when it is a directory, or exists and ``overwrite`` is not True.

    Example:
      >>> import tempfile, pathlib, jnn
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> jnn.io.check_target("save", folder / "new.npz", overwrite=False).name
      'new.npz'
    """
    checks.flag(where, "overwrite", overwrite)
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{where}: {path} is a directory; give a file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{where}: {path} already exists; choose another path or pass overwrite=True")
    return path


def atomic_write(path, data: bytes | str, *, overwrite: bool = False,
                 where: str = "jnn.io.atomic_write") -> pathlib.Path:
    """Writes ``data`` to ``path`` through a temporary file in the same directory and an
    atomic rename, so a crash leaves either the old file or the new one, never half of one.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False (the message starts with
        ``where``).
      IsADirectoryError: ``path`` is a directory.

    Example:
      >>> import tempfile, pathlib, jnn
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
      >>> jnn.io.atomic_write(path, "first").read_text()
      'first'
      >>> jnn.io.atomic_write(path, "second", overwrite=True).read_text()
      'second'
    """
    path = check_target(where, path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fresh_path(path) -> pathlib.Path:
    """``path`` if nothing is there yet, else ``name-2.ext``, ``name-3.ext``, ... (first free).

    Example:
      >>> import tempfile, pathlib, jnn
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> (folder / "run.json").write_text("{}")
      2
      >>> jnn.io.fresh_path(folder / "run.json").name, jnn.io.fresh_path(folder / "new.json").name
      ('run-2.json', 'new.json')
    """
    path = pathlib.Path(path)
    candidate, i = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        i += 1
    return candidate


def _paths(tree) -> list[str]:
    """Each leaf's ``/``-joined path, in leaf order (leaves may be arrays or ShapeDtypeStructs)."""
    from jnn import tree as _tree
    paths = []
    for path, _ in jax.tree_util.tree_leaves_with_path(tree):
        keys = [_tree.path_str((entry,)) for entry in path]
        if any("/" in k for k in keys):
            raise ValueError(f"jnn.io: key {'/'.join(keys)!r} contains '/', so its path is ambiguous")
        paths.append("/".join(keys))
    return paths


def flatten(tree) -> dict[str, np.ndarray]:
    """``{"block_0/dense_1/w": array, ...}``: every leaf of ``tree`` by its path, as NumPy.

    Raises:
      ValueError: a dict key contains ``"/"`` (the path would not unflatten to the same tree).

    Example:
      >>> import numpy as np, jnn
      >>> flat = jnn.io.flatten({"dense_0": {"w": np.zeros((3, 2)), "b": np.zeros(2)}})
      >>> {path: a.shape for path, a in flat.items()}
      {'dense_0/b': (2,), 'dense_0/w': (3, 2)}
    """
    return dict(zip(_paths(tree), (np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree))))


def unflatten(flat: dict[str, Any], *, like=None, where: str = "jnn.io.unflatten"):
    """The inverse of :func:`flatten` (and of :func:`jnn.tree.leaves_with_paths`).

    Args:
      flat: ``{path: array}``.
      like: optional expected tree (arrays or ``jax.ShapeDtypeStruct``). Without it the result
        is nested dicts; with it, ``flat`` must hold exactly ``like``'s paths and shapes, and
        the result has ``like``'s structure (empty dicts, tuples) and dtypes.
      where: the caller's name, for error messages.

    Raises:
      ValueError: with ``like``, ``flat`` does not match it; every problem is listed by path.

    Example:
      >>> unflatten({"dense_0/w": 1, "dense_0/b": 2, "scale": 3})
      {'dense_0': {'w': 1, 'b': 2}, 'scale': 3}
    """
    if like is not None:
        problems = structure_problems(flat, like)
        if problems:
            raise ValueError(f"{where}: does not match the expected structure:\n  " + "\n  ".join(problems))
        leaves = [jax.numpy.asarray(flat[p], dtype=leaf.dtype)
                  for p, leaf in zip(_paths(like), jax.tree_util.tree_leaves(like))]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for i, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"jnn.io.unflatten: {'/'.join(parents[:i + 1])!r} is both a leaf and a "
                                 f"prefix of {path!r}")
        if leaf in node:
            raise ValueError(f"jnn.io.unflatten: {path!r} is both a leaf and a prefix of another path")
        node[leaf] = value
    return tree


def structure_problems(flat: dict[str, Any], like) -> list[str]:
    """How ``flat`` (path -> array) differs from ``like`` (a tree of arrays or
    ``jax.ShapeDtypeStruct``): missing, unexpected and mis-shaped entries by path; ``[]`` if none.

    Example:
      >>> import numpy as np, jnn
      >>> like = {"dense_0": {"w": np.zeros((3, 2)), "b": np.zeros(2)}}
      >>> for problem in jnn.io.structure_problems({"dense_0/w": np.zeros((2, 2)), "extra": np.zeros(1)}, like):
      ...     print(problem)
      missing: dense_0/b (expected shape (2,))
      unexpected: extra (shape (1,))
      wrong shape: dense_0/w: got (2, 2), expected (3, 2)
    """
    expected = {p: tuple(leaf.shape) for p, leaf in zip(_paths(like), jax.tree_util.tree_leaves(like))}
    problems = [f"missing: {p} (expected shape {s})" for p, s in expected.items() if p not in flat]
    problems += [f"unexpected: {p} (shape {tuple(np.shape(a))})" for p, a in flat.items() if p not in expected]
    problems += [f"wrong shape: {p}: got {tuple(np.shape(flat[p]))}, expected {s}"
                 for p, s in expected.items() if p in flat and tuple(np.shape(flat[p])) != s]
    return problems


# safetensors dtype codes <-> NumPy dtypes (ml_dtypes adds bfloat16 and float8 to NumPy).
_CODES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
          "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
_DTYPE_CODES = {np.dtype(t): code for code, t in _CODES.items()}


def _safetensors_bytes(flat: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for name, array in flat.items():
        if array.dtype not in _DTYPE_CODES:
            raise TypeError(f"jnn.io.save_params: {name} has dtype {array.dtype}, which safetensors cannot store")
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DTYPE_CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _read_safetensors(data: bytes, path) -> dict[str, np.ndarray]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    flat = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _CODES:
            raise ValueError(f"jnn.io.load_params: {path}: {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        dtype = np.dtype(_CODES[entry["dtype"]]).newbyteorder("<")
        flat[name] = np.frombuffer(body[start:end], dtype).reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return flat


_NPZ_DTYPES = "__jnn_dtypes__"  # npz entry: JSON {path: dtype} for dtypes NumPy cannot name (bfloat16)


def save_params(path, tree, *, overwrite: bool = False, metadata: dict[str, str] | None = None) -> None:
    """Writes the arrays of ``tree`` (params, state, or ``{"params": ..., "state": ...}``) to
    ``path``, a ``.safetensors`` or ``.npz`` file, atomically.

    Args:
      path: ends in ``.safetensors`` or ``.npz``.
      tree: nested dicts of arrays; keys become ``/``-joined paths (:func:`flatten`).
      overwrite: replace an existing file (default: refuse).
      metadata: string-to-string notes stored in the safetensors header (ignored for npz).

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      ValueError: the suffix is neither ``.safetensors`` nor ``.npz``.

    Example:
      >>> import tempfile, pathlib, jax.numpy as jnp, jnn
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.npz"
      >>> jnn.io.save_params(path, {"params": {"w": jnp.ones((3, 2))}, "state": {}})
      >>> sorted(jnn.io.flatten(jnn.io.load_params(path)))
      ['params/w']
    """
    where = "jnn.io.save_params"
    path = pathlib.Path(path)
    if path.suffix not in (".safetensors", ".npz"):
        raise ValueError(f"{where}: {path} must end in .safetensors or .npz")
    path = check_target(where, path, overwrite)
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError(f"{where}: metadata must be a dict of strings to strings (the safetensors header "
                         f"holds text only), got {metadata!r}")
    flat = flatten(tree)
    for name, array in flat.items():
        if array.dtype.kind not in "biufcV":   # numbers, bool and bfloat16-like; not str/object
            raise TypeError(f"{where}: {name} is not a numeric array (dtype {array.dtype})")
    if path.suffix == ".safetensors":
        data = _safetensors_bytes(flat, {"format": "jnn", **(metadata or {})})
    else:
        odd = {p: str(a.dtype) for p, a in flat.items() if a.dtype.kind == "V" or a.dtype.name == "bfloat16"}
        stored = {p: (a.view(f"u{a.dtype.itemsize}") if p in odd else a) for p, a in flat.items()}
        buffer = _io.BytesIO()
        np.savez(buffer, **stored, **({_NPZ_DTYPES: np.array(json.dumps(odd))} if odd else {}))
        data = buffer.getvalue()
    atomic_write(path, data, overwrite=overwrite, where=where)


def load_params(path, *, like=None):
    """Reads a weight file written by :func:`save_params` (or by safetensors / ``np.savez``).

    Args:
      path: a ``.safetensors`` or ``.npz`` file.
      like: the expected tree (e.g. ``params`` of a fresh init, or
        ``jax.eval_shape(model.init, key, example)[0]``). When given, the file must hold exactly
        its paths with its shapes; the result has ``like``'s structure (empty dicts included)
        and dtypes.

    Returns:
      Nested dicts of ``jax.Array`` (or ``like``'s structure).

    Raises:
      ValueError: with ``like``, the file does not match it; every problem is listed by path.

    Example:
      >>> import tempfile, pathlib, jax, jax.numpy as jnp, jnn
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.npz"
      >>> params = {"dense_0": {"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.zeros(2)}}
      >>> jnn.io.save_params(path, params)
      >>> loaded = jnn.io.load_params(path, like=params)
      >>> loaded["dense_0"]["w"].dtype, loaded["dense_0"]["w"].shape
      (dtype(bfloat16), (3, 2))
    """
    path = pathlib.Path(path)
    if path.suffix not in (".safetensors", ".npz"):
        raise ValueError(f"jnn.io.load_params: {path} must end in .safetensors or .npz")
    data = path.read_bytes()
    try:
        if path.suffix == ".safetensors":
            flat = _read_safetensors(data, path)
        else:
            if data[:2] != b"PK":   # np.load would take anything else for a pickle
                raise ValueError("not a zip archive")
            with np.load(_io.BytesIO(data), allow_pickle=False) as npz:
                flat = {k: npz[k] for k in npz.files}
            odd = json.loads(str(flat.pop(_NPZ_DTYPES))) if _NPZ_DTYPES in flat else {}
            flat.update({p: flat[p].view(np.dtype(getattr(ml_dtypes, d, d))) for p, d in odd.items()})
    except (ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile, EOFError) as e:
        if str(e).startswith("jnn.io.load_params"):
            raise
        raise ValueError(f"jnn.io.load_params: {path} is not a readable {path.suffix} weight file (truncated "
                         f"or corrupt?): {type(e).__name__}: {e}") from e
    if like is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, unflatten(flat))
    return unflatten(flat, like=like, where=f"jnn.io.load_params({str(path)!r})")
