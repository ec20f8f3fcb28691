"""Atomic writes, and weight files (``.safetensors``, ``.npz``) of ``"block_0/dense_1/w" -> array`` with
sha256s (safetensors: in ``__metadata__[DIGEST_KEY]``)."""
from __future__ import annotations

import errno
import hashlib
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

__all__ = ["atomic_write", "write_error", "check_target", "fresh_path", "flatten", "unflatten", "save_params",
           "load_params", "structure_problems", "DIGEST_KEY"]


def check_target(where: str, path, overwrite) -> pathlib.Path:
    """``path`` as a ``pathlib.Path``, refused if it is a directory, or exists and ``overwrite`` is not True.

    Example:
      >>> import tempfile, pathlib, jnn
      >>> jnn.io.check_target("save", pathlib.Path(tempfile.mkdtemp()) / "new.npz", overwrite=False).name
      'new.npz'
    """
    checks.flag(where, "overwrite", overwrite)
    path = pathlib.Path(path)
    checks.require(not path.is_dir(), where, f"{path} is a directory; give a file path", IsADirectoryError)
    checks.require(overwrite or not path.exists(), where, f"{path} already exists; choose another path or pass "
                   f"overwrite=True", FileExistsError)
    return path


def atomic_write(path, data, *, overwrite: bool = False, where: str = "jnn.io.atomic_write") -> pathlib.Path:
    """Writes ``data`` (``bytes``, ``str`` or bytes-like pieces) to ``path`` via a temporary file and a rename.

    Example:
      >>> import tempfile, pathlib, jnn
      >>> jnn.io.atomic_write(pathlib.Path(tempfile.mkdtemp()) / "a.txt", [b"sec", b"ond"]).read_text()
      'second'
    """
    path = check_target(where, path, overwrite)
    pieces = [data] if isinstance(data, (str, bytes, bytearray, memoryview)) else data
    mode = "w" if isinstance(data, str) else "wb"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as f:
            f.writelines(pieces)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(where, path, e) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            pathlib.Path(tmp).unlink(missing_ok=True)
    return path


_SPACE_ERRNOS = {getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EDQUOT") if hasattr(errno, name)}


def write_error(where: str, path, error: OSError) -> OSError:
    """The ``OSError`` (same errno) for a failed write of ``path``, naming ``where`` and ``path``.

    Example:
      >>> import errno, jnn
      >>> e = jnn.io.write_error("save", "/data/w.npz", OSError(errno.EFBIG, "File too large"))
      >>> e.errno == errno.EFBIG, str(e).startswith("[Errno 27] save: could not write /data/w.npz: File too large")
      (True, True)
    """
    hint = " (the disk is full, or the file is over a size limit or quota)" if error.errno in _SPACE_ERRNOS else ""
    message = (f"{where}: could not write {path}: {error.strerror or error}{hint}; nothing was written (an existing "
               f"file is left as it was)")
    return OSError(message) if error.errno is None else OSError(error.errno, message)


def fresh_path(path) -> pathlib.Path:
    """``path`` if nothing is there yet, else ``name-2.ext``, ``name-3.ext``, ... (first free).

    Example:
      >>> import tempfile, pathlib, jnn
      >>> (path := pathlib.Path(tempfile.mkdtemp()) / "run.json").write_text("{}")
      2
      >>> jnn.io.fresh_path(path).name
      'run-2.json'
    """
    path = pathlib.Path(path)
    candidate, i = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        i += 1
    return candidate


def _paths(tree) -> list[str]:
    """Each leaf's ``/``-joined path, in leaf order."""
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

    Example:
      >>> import numpy as np, jnn
      >>> flat = jnn.io.flatten({"dense_0": {"w": np.zeros((3, 2)), "b": np.zeros(2)}})
      >>> {path: a.shape for path, a in flat.items()}
      {'dense_0/b': (2,), 'dense_0/w': (3, 2)}
    """
    return dict(zip(_paths(tree), (np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree))))


def unflatten(flat: dict[str, Any], *, like=None, where: str = "jnn.io.unflatten"):
    """The inverse of :func:`flatten`: nested dicts, or ``like``'s structure and dtypes after checking
    ``flat`` holds exactly its paths and shapes (a ``ValueError`` lists every problem).

    Example:
      >>> unflatten({"dense_0/w": 1, "dense_0/b": 2, "scale": 3})
      {'dense_0': {'w': 1, 'b': 2}, 'scale': 3}
    """
    if like is not None:
        problems = structure_problems(flat, like)
        checks.require(not problems, where, "does not match the expected structure:\n  " + "\n  ".join(problems))
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
    """How ``flat`` differs from ``like``: missing, unexpected and mis-shaped entries by path.

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


DIGEST_KEY = "jnn.sha256"   # safetensors metadata: JSON {name: [dtype, shape, sha256], "__metadata__": sha256}


def _digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _damaged_name(names, target: str) -> str | None:
    """A name in ``names`` that is ``target`` with one character changed or something appended."""
    return next((k for k in names if k != target and (k.startswith(target) or (
        len(k) == len(target) and sum(a != b for a, b in zip(k, target)) == 1))), None)


def _metadata_digest(metadata: dict) -> str:
    return _digest(json.dumps({k: v for k, v in metadata.items() if k != DIGEST_KEY}, sort_keys=True).encode())


def _safetensors_pieces(flat: dict[str, np.ndarray], metadata: dict[str, str]) -> list:
    """The file as pieces: length, JSON header, then each tensor's bytes (views, not copies)."""
    header, chunks, digests, offset = {}, [], {}, 0
    for name, array in flat.items():
        if array.dtype not in _DTYPE_CODES:
            raise TypeError(f"jnn.io.save_params: {name} has dtype {array.dtype}, which safetensors cannot store")
        data = memoryview(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
        code = _DTYPE_CODES[array.dtype]
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        digests[name] = [code, list(array.shape), _digest(data)]
        chunks.append(data)
        offset += len(data)
    digests["__metadata__"] = _metadata_digest(metadata)
    header = {"__metadata__": {**metadata, DIGEST_KEY: json.dumps(digests, separators=(",", ":"))}, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)), text, *chunks]


def _intact(ok, path, what: str) -> None:
    """``load_params``' error for a corrupt file, unless ``ok``."""
    checks.require(ok, "jnn.io.load_params", f"{path} is corrupt: {what}; restore the file from a copy or save it again")


def _recorded_digests(metadata, path) -> dict | None:
    """The digests :func:`save_params` recorded in ``metadata``, or None for a file without them."""
    if not isinstance(metadata, dict):
        return None
    if DIGEST_KEY not in metadata:
        near = _damaged_name(metadata, DIGEST_KEY)
        _intact(near is None, path, f"its header names {near!r} where jnn writes {DIGEST_KEY!r} (a changed byte)")
        return None
    try:
        digests = json.loads(metadata[DIGEST_KEY])
    except (TypeError, ValueError):
        digests = None
    _intact(isinstance(digests, dict), path, f"its {DIGEST_KEY} header entry is unreadable")
    _intact(digests.get("__metadata__") == _metadata_digest(metadata), path, "its header metadata fails the sha256 "
            "check (changed since it was written)")
    return digests


def _check_digest(digests, name, entry, data, path) -> None:
    recorded = digests.get(name)
    _intact(isinstance(recorded, list) and len(recorded) == 3, path, f"tensor {name!r} has no recorded digest (its "
            f"name or the digests changed)")
    _intact(recorded[:2] == [entry["dtype"], entry["shape"]], path, f"the header gives tensor {name!r} dtype "
            f"{entry['dtype']} and shape {entry['shape']}, it was written as {recorded[0]} {recorded[1]}")
    _intact(_digest(data) == recorded[2], path, f"tensor {name!r} fails its sha256 check (its bytes changed since it "
            f"was written)")


def _read_safetensors(data: bytes, path) -> dict[str, np.ndarray]:
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8:8 + n]))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    body = memoryview(data)[8 + n:]
    digests = _recorded_digests(header.get("__metadata__"), path)
    flat = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _CODES:
            raise ValueError(f"jnn.io.load_params: {path}: {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"tensor {name!r} needs bytes [{start}, {end}) of the data, the file holds {len(body)}")
        if digests is not None:
            _check_digest(digests, name, entry, body[start:end], path)
        dtype = np.dtype(_CODES[entry["dtype"]]).newbyteorder("<")
        array = np.frombuffer(body[start:end], dtype).reshape(entry["shape"])
        flat[name] = array if dtype.isnative else array.astype(dtype.newbyteorder("="))
    missing = sorted(set(digests or {}) - {"__metadata__"} - set(flat))
    _intact(not missing, path, f"tensor(s) {missing} were written but are not in its header")
    return flat


_NPZ_DTYPES = "__jnn_dtypes__"  # npz entry: JSON {path: dtype} for dtypes NumPy cannot name (bfloat16)
_NPZ_DIGESTS = "__jnn_sha256__"  # npz entry, the archive's first: JSON {path: [dtype, shape, sha256]}


def _npz_bytes(flat: dict[str, np.ndarray]) -> memoryview:
    odd = {p: str(a.dtype) for p, a in flat.items() if a.dtype.kind == "V" or a.dtype.name == "bfloat16"}
    stored = {p: np.ascontiguousarray(a.view(f"u{a.dtype.itemsize}") if p in odd else a) for p, a in flat.items()}
    stored.update({_NPZ_DTYPES: np.array(json.dumps(odd))} if odd else {})
    digests = {p: [a.dtype.str, list(a.shape), _digest(a.reshape(-1).view(np.uint8))] for p, a in stored.items()}
    buffer = _io.BytesIO()
    np.savez(buffer, **{_NPZ_DIGESTS: np.array(json.dumps(digests))}, **stored)
    return buffer.getbuffer()   # a view, not a copy


def _read_npz(path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(2) != b"PK":   # np.load would take anything else for a pickle
            raise ValueError("not a zip archive")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                flat = {k: npz[k] for k in npz.files}
        except OSError as e:   # e.g. a seek to a damaged offset
            raise ValueError(f"the zip archive cannot be read ({e})") from e
    for own in (_NPZ_DIGESTS, _NPZ_DTYPES):
        near = _damaged_name(flat, own)
        _intact(near is None, path, f"the archive names {near!r} where jnn writes {own!r}")
    if _NPZ_DIGESTS in flat:
        digests = json.loads(str(flat.pop(_NPZ_DIGESTS)))
        for name, array in flat.items():
            entry = {"dtype": array.dtype.str, "shape": list(array.shape)}
            _check_digest(digests, name, entry, np.ascontiguousarray(array).reshape(-1).view(np.uint8), path)
        missing = sorted(set(digests) - set(flat))
        _intact(not missing, path, f"array(s) {missing} were written but are not in the archive")
    odd = json.loads(str(flat.pop(_NPZ_DTYPES))) if _NPZ_DTYPES in flat else {}
    flat.update({p: flat[p].view(np.dtype(getattr(ml_dtypes, d, d))) for p, d in odd.items()})
    return flat


def _check_savable(where: str, tree) -> None:
    """A whole train state, or a PRNG key anywhere in ``tree``, is refused with what to use instead."""
    checks.require(not (hasattr(tree, "params") and hasattr(tree, "opt_state")), where, f"got a whole "
                   f"{type(tree).__name__} (params, optimizer state, PRNG key, step); a weight file holds arrays of "
                   f"params and state: save_params(path, {{'params': ts.params, 'state': ts.state}}), or save the "
                   f"whole state with jnn.train.Checkpointer", TypeError)
    for name, leaf in zip(_paths(tree), jax.tree_util.tree_leaves(tree)):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            raise TypeError(f"{where}: {name} is a PRNG key, which a weight file cannot hold; store "
                            f"jax.random.key_data(key) instead, or save a whole train state with jnn.train.Checkpointer")


@checks.declare_as("jnn.io.save_params", overwrite=checks.flag, metadata=checks.optional(checks.satisfies(
    lambda m: isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()),
    "a dict of strings to strings (the safetensors header holds text only)")))
def save_params(path, tree, *, overwrite: bool = False, metadata: dict[str, str] | None = None) -> None:
    """Writes the arrays of ``tree`` to a ``.safetensors`` or ``.npz`` file, atomically, with digests;
    ``metadata`` (strings) goes into the safetensors header.

    Example:
      >>> import tempfile, pathlib, jax.numpy as jnp, jnn
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.npz"
      >>> jnn.io.save_params(path, {"params": {"w": jnp.ones((3, 2))}, "state": {}})
      >>> sorted(jnn.io.flatten(jnn.io.load_params(path)))
      ['params/w']
    """
    where = "jnn.io.save_params"
    path = check_target(where, _weight_file(where, path), overwrite)
    checks.require(DIGEST_KEY not in (metadata or {}), where, f"metadata key {DIGEST_KEY!r} is where jnn records the "
                   f"tensors' digests; use another key")
    _check_savable(where, tree)
    flat = flatten(tree)
    for name, array in flat.items():   # numbers, bool and bfloat16-like; not str/object
        checks.require(array.dtype.kind in "biufcV", where, f"{name} is not a numeric array (dtype {array.dtype})",
                       TypeError)
    data = (_safetensors_pieces(flat, {"format": "jnn", **(metadata or {})}) if path.suffix == ".safetensors"
            else _npz_bytes(flat))
    atomic_write(path, data, overwrite=overwrite, where=where)


def _weight_file(where: str, path) -> pathlib.Path:
    path = pathlib.Path(path)
    checks.require(path.suffix in (".safetensors", ".npz"), where, f"{path} must end in .safetensors or .npz")
    return path


def load_params(path, *, like=None):
    """A weight file as nested dicts of ``jax.Array``, digests verified (a corrupt file is a ValueError
    naming it); with ``like`` (a tree of arrays or shapes), checked and shaped as :func:`unflatten`.

    Example:
      >>> import tempfile, pathlib, jax.numpy as jnp, jnn
      >>> path, params = pathlib.Path(tempfile.mkdtemp()) / "w.npz", {"w": jnp.ones((3, 2), jnp.bfloat16)}
      >>> jnn.io.save_params(path, params)
      >>> jnn.io.load_params(path, like=params)["w"].dtype
      dtype(bfloat16)
    """
    path = _weight_file("jnn.io.load_params", path)
    try:
        flat = _read_safetensors(np.fromfile(path, np.uint8), path) if path.suffix == ".safetensors" else _read_npz(path)
    except (ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile, EOFError, RuntimeError,
            NotImplementedError) as e:   # zipfile: "encrypted", "compression method not supported"
        if str(e).startswith("jnn.io.load_params"):   # already names the file and the fault
            raise
        raise ValueError(f"jnn.io.load_params: {path} is not a readable {path.suffix} weight file (truncated "
                         f"or corrupt?): {type(e).__name__}: {e}") from e
    if like is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, unflatten(flat))
    return unflatten(flat, like=like, where=f"jnn.io.load_params({str(path)!r})")
