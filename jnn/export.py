"""Exported models (``.jnnx``, through :mod:`jax.export`): an inference function or a whole training
run in one file that :func:`load` (jax, NumPy and the standard library only) reads back.

Format: :data:`MAGIC`, a little-endian uint64 ``n``, ``n`` bytes of JSON header (sections' offsets,
lengths, kinds, sha256s and avals; ``header_sha256`` over ``json.dumps(header, sort_keys=True)``),
then the sections (serialized ``jax.export.Exported`` functions, optionally an ``.npz`` of data).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import io as _stdio
import json
import pathlib
import struct
import traceback
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks
from jnn import io as _io
from jnn import tree as _tree
from jnn.core import Layer

__all__ = ["export_model", "export_capsule", "export_onnx", "load", "MAGIC"]

MAGIC = b"JNNEXPRT"
_FORMAT = 2   # 2: the header and each section carry a sha256; format 1 files load unchecked


def load(path):
    """``(header, sections)`` of a ``.jnnx`` file (functions as callables, data as NumPy arrays), its
    sha256s verified (a ValueError names the file and the part).

    Example:
      >>> import tempfile, pathlib, jax, jax.numpy as jnp, jnn
      >>> model = jnn.dense(2)
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "dense.jnnx"
      >>> jnn.export.export_model(path, model, params, state, jnp.zeros((1, 3)), platforms=("cpu",))
      >>> path.read_bytes()[:8] == jnn.export.MAGIC
      True
      >>> header, fns = jnn.export.load(path)
      >>> header["kind"], list(fns), fns["predict"](jnp.ones((5, 3))).shape
      ('model', ['predict'], (5, 2))
    """
    import hashlib, io, json, struct
    import jax, numpy as np
    data = open(path, "rb").read()
    if data[:8] != b"JNNEXPRT":
        raise ValueError(f"{path} is not a jnn export (.jnnx) file")
    try:
        (n,) = struct.unpack("<Q", data[8:16])
        header, body = json.loads(data[16:16 + n]), data[16 + n:]
        recorded = header.pop("header_sha256", None)   # format 2 records digests; format 1 did not
        if (recorded is not None or header.get("format") != 1) and recorded != hashlib.sha256(
                json.dumps(header, sort_keys=True).encode()).hexdigest():
            raise ValueError("its header fails its sha256 check")
        sections = {}
        for name, s in header["sections"].items():
            blob = body[s["offset"]:s["offset"] + s["length"]]
            if len(blob) != s["length"]:
                raise ValueError(f"section {name!r} needs {s['length']} bytes, the file holds {len(blob)}")
            if "sha256" in s and hashlib.sha256(blob).hexdigest() != s["sha256"]:
                raise ValueError(f"section {name!r} fails its sha256 check")
            sections[name] = (jax.export.deserialize(bytearray(blob)).call if s["kind"] == "function"
                              else dict(np.load(io.BytesIO(blob))))
    except Exception as e:  # noqa: BLE001 - any parse failure means the same thing here
        raise ValueError(f"{path} is a truncated or corrupt jnn export (.jnnx) file: {type(e).__name__}: {e}") from e
    return header, sections


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _avals(avals) -> list[dict]:
    return [{"shape": [d if isinstance(d, int) else str(d) for d in a.shape], "dtype": str(a.dtype)}
            for a in avals]


def _write(where: str, path, functions: dict, description: str, extra: dict, data: dict | None, overwrite: bool):
    """Writes the ``.jnnx`` file: header, then each section (``functions``, then ``data`` as ``.npz``)."""
    sections, blobs = {}, []

    def add(name: str, blob: bytes, kind: str, **info):
        sections[name] = {"kind": kind, "offset": sum(map(len, blobs)), "length": len(blob), "sha256": _sha256(blob),
                          **info}
        blobs.append(blob)

    for name, e in functions.items():
        add(name, bytes(e.serialize()), "function", platforms=list(e.platforms), inputs=_avals(e.in_avals),
            outputs=_avals(e.out_avals))
    if data:
        buffer = _stdio.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in data.items()})
        add("data", buffer.getvalue(), "npz", arrays={k: _avals([np.asarray(v)])[0] for k, v in data.items()})
    header = {"format": _FORMAT, "description": description, "versions": {
        name: _version(name) for name in ("jnn", "jax", "jaxlib")}, **extra, "sections": sections}
    header["header_sha256"] = _sha256(json.dumps(header, sort_keys=True).encode())
    text = json.dumps(header).encode()
    _io.atomic_write(path, [MAGIC + struct.pack("<Q", len(text)) + text, *blobs], overwrite=overwrite, where=where)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _platforms(where: str, what: str, platforms) -> tuple[str, ...]:
    """A rule: a non-empty sequence of the platforms jax.export lowers for, as a tuple."""
    _checks.require(isinstance(platforms, Sequence) and not isinstance(platforms, str) and platforms and all(
        isinstance(p, str) for p in platforms), where, f"{what} must be a non-empty tuple of platform names such as "
                    f"('cpu', 'cuda'), got {platforms!r}")
    for platform in platforms:
        hint = "; for NVIDIA GPUs use 'cuda', for AMD GPUs 'rocm'" if platform.lower() == "gpu" else ""
        _checks.require(platform in _PLATFORMS, where, f"platform {platform!r} is not one jax.export lowers for (it "
                        f"lowers for {', '.join(map(repr, _PLATFORMS))}){hint}")
    return tuple(platforms)


def _input_spec(where: str, example, batch_polymorphic: bool, symbol: str) -> jax.ShapeDtypeStruct:
    """The input's spec from ``example`` (batch axis first), its batch size named ``symbol`` if polymorphic."""
    example = example if hasattr(example, "shape") and hasattr(example, "dtype") else np.asarray(example)
    shape = tuple(example.shape)
    _checks.require(len(shape) >= 1, where, f"example must have a batch axis first, shape (batch, ...), got shape {shape}")
    batch = jax.export.symbolic_shape(symbol)[0] if batch_polymorphic else shape[0]
    return jax.ShapeDtypeStruct((batch, *shape[1:]), example.dtype)


def _check_pair(where: str, what: str, data):
    """``(x, y)`` as arrays with the same number of examples."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{where}: {what} must be a pair (x, y) of arrays, got {type(data).__name__}"
                         + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    x, y = map(jnp.asarray, data)
    _checks.require(x.ndim and y.ndim and len(x) == len(y), where, f"{what}'s x and y must have the same number of "
                    f"examples, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _export(where: str, fn: Callable, platforms, *specs):
    try:
        return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*specs)
    except Exception as e:  # lowering errors name the op; add what to try
        raise type(e)(f"{where}: jax.export failed ({e}); if a layer needs a concrete batch size, "
                      f"pass batch_polymorphic=False; if a platform is unsupported, drop it from "
                      f"platforms") from e


@_checks.declare_as("jnn.export.export_model", bake_params=_checks.flag, batch_polymorphic=_checks.flag,
                    platforms=_platforms)
def export_model(path, model: Layer, params, state, example, *, bake_params: bool = True,
                 batch_polymorphic: bool = True, platforms: Sequence[str] = ("cpu", "cuda"),
                 description: str = "", overwrite: bool = False) -> None:
    """Writes ``model``'s inference function (``train=False``) to a ``.jnnx`` file: ``predict(x)`` with
    params baked in, or ``predict(params, state, x)`` with ``bake_params=False``; for any batch size
    (``batch_polymorphic``), ``example``'s shape and dtype, each of ``platforms`` (cpu, cuda, rocm, tpu).

    Example:
      >>> import tempfile, pathlib, jax, jax.numpy as jnp, jnn
      >>> model = jnn.dense(2)
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "dense.jnnx"
      >>> jnn.export.export_model(path, model, params, state, jnp.zeros((1, 3)), bake_params=False,
      ...                         platforms=("cpu",))
      >>> header, fns = jnn.export.load(path)
      >>> fns["predict"](params, state, jnp.ones((4, 3))).shape   # weights passed in, any batch size
      (4, 2)
    """
    where = "jnn.export.export_model"
    _io.check_target(where, path, overwrite)
    x_spec = _input_spec(where, example, batch_polymorphic, "b")
    if bake_params:
        fn, specs = (lambda x: model.apply(params, state, x, train=False)[0]), (x_spec,)
    else:
        abstract = lambda t: jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
        fn = lambda p, s, x: model.apply(p, s, x, train=False)[0]
        specs = (abstract(params), abstract(state), x_spec)
    exported = _export(where, fn, platforms, *specs)
    _write(where, path, {"predict": exported}, description,
           {"kind": "model", "bake_params": bake_params,
            "param_paths": None if bake_params else sorted(_io.flatten(params))}, None, overwrite)


@_checks.declare_as("jnn.export.export_capsule", batch_size=_checks.positive_int, eval_batch_size=_checks.positive_int,
                    include_data=_checks.flag, platforms=_platforms)
def export_capsule(path, model: Layer, loss, optimizer, train_data, *, batch_size: int = 128,
                   val_data=None, metrics=None, regularizer=None, eval_batch_size: int = 1000,
                   platforms: Sequence[str] = ("cpu", "cuda"), include_data: bool = False,
                   description: str = "", overwrite: bool = False) -> None:
    """Writes a training run of :func:`jnn.train.fit` (same arguments) as three functions:
    ``init(key_data) -> leaves`` (the train-state arrays, named by the header's ``leaf_paths``),
    ``train_epoch(leaves, x, y) -> (leaves, logs)`` (one fused epoch with ``fit``'s shuffle) and,
    given ``val_data``, ``evaluate(leaves, x_val, y_val) -> metrics``. Epochs match ``fit`` with
    ``fused=True`` bit for bit on the same platform; ``include_data=True`` stores the data too.

    Example:
      >>> import tempfile, pathlib, jax, jax.numpy as jnp, optax, jnn
      >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.jnnx"
      >>> jnn.export.export_capsule(path, jnn.dense(2), jnn.losses.mse, optax.sgd(0.1), (x, y), batch_size=4,
      ...                           metrics={}, platforms=("cpu",))
      >>> header, fns = jnn.export.load(path)
      >>> sorted(fns), header["steps_per_epoch"]
      (['init', 'train_epoch'], 2)
      >>> leaves = fns["init"](jax.random.key_data(jax.random.key(0)))
      >>> leaves, logs = fns["train_epoch"](leaves, x, y)
      >>> sorted(logs)
      ['loss']
    """
    from jnn.train import guard, step as _step
    where = "jnn.export.export_capsule"
    _io.check_target(where, path, overwrite)
    x, y = _check_pair(where, "train_data", train_data)
    _checks.require(len(x) > 0, where, "train_data is empty (0 examples); pass at least one batch")
    batch_size = min(batch_size, len(x))
    metrics = guard.default_metrics(loss) if metrics is None else dict(_checks.log_names(where, "metrics", metrics))
    is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)

    def init_state(key):
        init_key, _ = jax.random.split(key)   # fit's split: (init_key, validation split key)
        return _step.init_train_state(model, optimizer, init_key,
                                      jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype))

    template = jax.eval_shape(init_state, jax.random.key(0))
    treedef = jax.tree_util.tree_structure(template)
    keys = [is_key(a) for a in jax.tree_util.tree_leaves(template)]   # default impl, as jax.random.key
    to_leaves = lambda ts: [jax.random.key_data(a) if is_key(a) else a for a in jax.tree_util.tree_leaves(ts)]
    from_leaves = lambda leaves: jax.tree_util.tree_unflatten(treedef, [
        jax.random.wrap_key_data(a) if k else a for a, k in zip(leaves, keys)])
    step = _step.make_train_step(model, loss, optimizer, metrics=metrics, regularizer=regularizer)
    epoch = _step.make_train_epoch(step, len(x), batch_size)
    evaluate = _step.make_eval_fn(model, loss, metrics=metrics, batch_size=eval_batch_size)

    def train_epoch(leaves, xs, ys):
        ts, logs = epoch(from_leaves(leaves), (xs, ys))
        return to_leaves(ts), logs

    def eval_fn(leaves, xs, ys):
        ts = from_leaves(leaves)
        return evaluate(ts.params, ts.state, (xs, ys))

    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    init_leaves = lambda k: to_leaves(init_state(jax.random.wrap_key_data(k)))
    key_data = spec(jax.random.key_data(jax.random.key(0)))
    leaf_specs = [spec(a) for a in jax.eval_shape(init_leaves, key_data)]
    functions = {"init": _export(where, init_leaves, platforms, key_data),
                 "train_epoch": _export(where, train_epoch, platforms, leaf_specs, spec(x), spec(y))}
    data = {"x": x, "y": y}
    if val_data is not None:
        xv, yv = _check_pair(where, "val_data", val_data)
        functions["evaluate"] = _export(where, eval_fn, platforms, leaf_specs, spec(xv), spec(yv))
        data.update(x_val=xv, y_val=yv)
    _write(where, path, functions, description,
           {"kind": "capsule", "batch_size": batch_size, "steps_per_epoch": len(x) // batch_size,
            "leaf_paths": [p for p, _ in _tree.leaves_with_paths(template)]}, data if include_data else None,
           overwrite)


def _onnx_culprit(model: Layer, error: Exception) -> str:
    """What jax2onnx failed on: the innermost equation in the traceback, with its layer, else the innermost layer."""
    frames = [frame.f_locals for frame, _ in traceback.walk_tb(error.__traceback__)]
    eqns = [f["eqn"] for f in frames if hasattr(f.get("eqn"), "source_info")]   # outermost first
    scopes = "/".join(dict.fromkeys(s for s in (str(e.source_info.name_stack) for e in eqns) if s))
    if not eqns:   # failed while tracing
        return f"layer {([model.label] + [f['label'] for f in frames if isinstance(f.get('label'), str)])[-1]!r}"
    reverse = " (reverse=True)" if eqns[-1].params.get("reverse") else ""
    return f"{eqns[-1].primitive}{reverse} in layer [{scopes or model.label}] of model {model.label!r}"


@_checks.declare_as("jnn.export.export_onnx", batch_polymorphic=_checks.flag)
def export_onnx(path, model: Layer, params, state, example, *, batch_polymorphic: bool = True,
                opset: int = 21, overwrite: bool = False) -> None:
    """Writes ``model``'s inference function, params baked in, as ONNX through ``jax2onnx`` (``pip install
    'jnn[onnx]'``): input ``x`` (batch ``B`` symbolic if ``batch_polymorphic``), output ``y``. ``embedding``
    has no converter yet.

    Example:
      >>> import tempfile, pathlib, jax, jax.numpy as jnp, jnn
      >>> model = jnn.dense(2)
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "dense.onnx"
      >>> jnn.export.export_onnx(path, model, params, state, jnp.zeros((1, 3)))  # doctest: +SKIP
      >>> import onnxruntime                                                     # doctest: +SKIP
      >>> session = onnxruntime.InferenceSession(str(path))                     # doctest: +SKIP
      >>> session.run(["y"], {"x": jnp.ones((5, 3)).__array__()})[0].shape       # doctest: +SKIP
      (5, 2)
    """
    try:
        import jax2onnx
    except ImportError as e:
        raise ImportError("jnn.export.export_onnx needs jax2onnx: pip install 'jnn[onnx]'") from e
    where = "jnn.export.export_onnx"
    _io.check_target(where, path, overwrite)
    fn = lambda x: model.apply(params, state, x, train=False)[0]
    try:
        proto = jax2onnx.to_onnx(fn, [_input_spec(where, example, batch_polymorphic, "B")], opset=opset,
                                 model_name="jnn_model", input_names=["x"], output_names=["y"])
    except Exception as e:  # noqa: BLE001 - any converter failure, told with the layer it was converting
        error = type(e) if type(e) in (NotImplementedError, TypeError, ValueError) else RuntimeError
        raise error(f"{where}: jax2onnx cannot convert {_onnx_culprit(model, e)}: {e}") from e
    _io.atomic_write(path, proto.SerializeToString(), overwrite=overwrite, where=where)
