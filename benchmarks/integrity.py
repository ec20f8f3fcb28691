"""Cost of the integrity checks on a 100 MB weight file (issue 40): ``jnn.io.save_params`` and
``load_params`` (sha256 of every tensor recorded on save and verified on load) against the
unchecked path they replaced, timed in the same process, interleaved, medians.

"before" is the previous implementation, kept here verbatim in miniature: the same file format
without digests, written as one joined ``bytes`` and read with a copy of every tensor.
"after, no digest" loads a file written without digests (by another tool) with the new reader.

Run (about a minute):
  python benchmarks/integrity.py [--mb 100] [--repeats 5] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import hashlib
import io as _stdio
import json
import pathlib
import struct
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jnn
from jnn import io as jio

from common import block, machine, time_interleaved


def _old_safetensors_bytes(flat: dict) -> bytes:
    header, chunks, offset = {"__metadata__": {"format": "jnn"}}, [], 0
    for name, array in flat.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _old_read_safetensors(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    flat = {}
    for name, entry in header.items():
        if name != "__metadata__":
            start, end = entry["data_offsets"]
            dtype = np.dtype("<f4")
            flat[name] = np.frombuffer(body[start:end], dtype).reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return flat


def _old_npz_bytes(flat: dict) -> bytes:
    buffer = _stdio.BytesIO()
    np.savez(buffer, **flat)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the files (default: the temp folder)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.mb * 2**20 // 4 // 8   # eight float32 tensors, args.mb MiB in all
    tree = {f"block_{i}": {"w": rng.standard_normal(n, np.float32).reshape(-1, 256)} for i in range(8)}
    flat = jio.flatten(tree)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:   # 420 MB of files, removed at the end
        run(tree, flat, pathlib.Path(folder), args.repeats)


def run(tree, flat, folder: pathlib.Path, repeats: int) -> None:
    paths = {k: folder / f"{k}" for k in ("new.safetensors", "old.safetensors", "new.npz", "old.npz")}

    def save_new(suffix):
        jnn.io.save_params(paths[f"new{suffix}"], tree, overwrite=True)

    def save_old(suffix):
        data = _old_safetensors_bytes(flat) if suffix == ".safetensors" else _old_npz_bytes(flat)
        jio.atomic_write(paths[f"old{suffix}"], data, overwrite=True)

    def load_old_safetensors():   # the old load_params: read, then to jax arrays
        block(jax.tree_util.tree_map(jnp.asarray, _old_read_safetensors(paths["old.safetensors"].read_bytes())))

    def load_old_npz():
        with np.load(_stdio.BytesIO(paths["old.npz"].read_bytes())) as npz:
            block({k: jnp.asarray(npz[k]) for k in npz.files})

    load = lambda name: block(jio.load_params(paths[name]))

    save_new(".safetensors"), save_old(".safetensors"), save_new(".npz"), save_old(".npz")
    times = time_interleaved({
        "save .safetensors before": lambda: save_old(".safetensors"),
        "save .safetensors after": lambda: save_new(".safetensors"),
        "load .safetensors before": load_old_safetensors,
        "load .safetensors after": lambda: load("new.safetensors"),
        "load .safetensors after, file without digests": lambda: load("old.safetensors"),
        "sha256 of the tensors alone": lambda: [hashlib.sha256(a).hexdigest() for a in flat.values()],
        "save .npz before": lambda: save_old(".npz"),
        "save .npz after": lambda: save_new(".npz"),
        "load .npz before": load_old_npz,
        "load .npz after": lambda: load("new.npz"),
    }, repeats=repeats, warmup=1)
    size = paths["new.safetensors"].stat().st_size / 1e6
    print(f"{machine()}\n{size:.1f} MB weight file, 8 float32 tensors, median of {repeats} runs "
          f"(interleaved, after 1 warm-up), in {folder.parent}")
    for name, seconds in times.items():
        print(f"  {name:<48} {seconds * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
