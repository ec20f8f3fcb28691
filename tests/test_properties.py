"""Property-based tests (Hypothesis) for what has invariants over many shapes: shape inference,
conv/pool output sizes, losses against NumPy, jnn.tree patterns, and the IDX reader.

Example counts are small by default so the suite stays fast in CI; run more locally with
``HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties.py``."""
import fnmatch
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

import jnn  # noqa: E402
from jnn.data import read_idx  # noqa: E402

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --- shape inference -----------------------------------------------------------------------

LAYERS = {
    "dense": lambda d: jnn.dense(d.draw(st.integers(1, 6))),
    "relu": lambda d: jnn.relu(),
    "tanh": lambda d: jnn.tanh(),
    "layer_norm": lambda d: jnn.layer_norm(),
    "dropout": lambda d: jnn.dropout(0.5),
}


@settings(max_examples=6)          # each example compiles a new model: keep CI fast
@given(st.data())
def test_serial_output_shape_equals_eval_shape_of_apply(data):
    names = data.draw(st.lists(st.sampled_from(["dense", "relu", "tanh", "layer_norm", "dropout"]),
                               min_size=1, max_size=5))
    layers = [LAYERS[n](data) for n in names]
    batch, width = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    model = jnn.serial(*layers)
    example = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    params, state = model.init(jax.random.key(0), example)
    inferred = jnn.output_shape(model, params, state, example)
    y, _ = model.apply(params, state, jnp.ones((batch, width)), key=jax.random.key(1), train=True)
    dense_widths = [params[f"dense_{i}"]["w"].shape[1] for i in range(names.count("dense"))]
    expected_width = dense_widths[-1] if dense_widths else width      # the last dense layer sets it
    assert inferred.shape == y.shape == (batch, expected_width)
    assert inferred.dtype == y.dtype == jnp.float32


# --- conv and pool output sizes ------------------------------------------------------------

def numpy_out_size(size, kernel, stride, dilation, padding):
    if padding == "SAME":
        return math.ceil(size / stride)
    lo, hi = (0, 0) if padding == "VALID" else padding
    effective = dilation * (kernel - 1) + 1
    return (size + lo + hi - effective) // stride + 1


@given(size=st.integers(5, 12), kernel=st.integers(1, 4), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       padding=st.one_of(st.sampled_from(["SAME", "VALID"]), st.tuples(st.integers(0, 2), st.integers(0, 2))))
def test_conv_output_size_matches_the_formula(size, kernel, stride, dilation, padding):
    pad = padding if isinstance(padding, str) else [padding, padding]
    layer = jnn.conv(2, (kernel, kernel), strides=stride, dilation=dilation, padding=pad)
    expected = numpy_out_size(size, kernel, stride, dilation, padding)
    hypothesis.assume(expected >= 1)
    params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
    y, _ = layer.apply(params, state, jnp.ones((1, size, size, 1)))
    assert y.shape == (1, expected, expected, 2)


@given(size=st.integers(2, 12), window=st.integers(1, 4), stride=st.integers(1, 4),
       padding=st.sampled_from(["SAME", "VALID"]), kind=st.sampled_from(["max", "avg"]))
def test_pool_output_size_and_values_match_numpy(size, window, stride, padding, kind):
    hypothesis.assume(window <= size)
    x = np.arange(size * size, dtype=np.float32).reshape(1, size, size, 1) % 7
    pool = (jnn.max_pool if kind == "max" else jnn.avg_pool)((window, window), strides=stride, padding=padding)
    y, _ = pool.apply({}, {}, jnp.asarray(x))
    out = numpy_out_size(size, window, stride, 1, padding)
    assert y.shape == (1, out, out, 1)
    if padding == "VALID":   # values against a NumPy loop
        ref = np.array([[(x[0, i * stride:i * stride + window, j * stride:j * stride + window, 0].max() if kind == "max"
                          else x[0, i * stride:i * stride + window, j * stride:j * stride + window, 0].mean())
                         for j in range(out)] for i in range(out)])
        np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], ref, rtol=1e-6)


# --- losses against NumPy ------------------------------------------------------------------

floats = st.floats(-30, 30, allow_nan=False, width=32)


@settings(max_examples=8)
@given(st.integers(1, 5), st.integers(2, 6), st.data())
def test_softmax_cross_entropy_matches_numpy(batch, classes, data):
    logits = np.array(data.draw(st.lists(floats, min_size=batch * classes, max_size=batch * classes)),
                      np.float64).reshape(batch, classes)
    labels = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))
    shifted = logits - logits.max(-1, keepdims=True)
    ref = -(shifted[np.arange(batch), labels] - np.log(np.exp(shifted).sum(-1)))
    got = jnn.losses.softmax_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), reduction="none")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@given(st.lists(st.tuples(floats, st.sampled_from([0.0, 1.0])), min_size=1, max_size=8))
def test_binary_cross_entropy_with_logits_matches_numpy(pairs):
    z, t = (np.array(v, np.float64) for v in zip(*pairs))
    ref = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    got = jnn.losses.binary_cross_entropy_with_logits(jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32),
                                                      reduction="none")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@given(st.lists(st.tuples(floats, floats), min_size=1, max_size=8))
def test_mse_matches_numpy(pairs):
    p, t = (np.array(v, np.float32) for v in zip(*pairs))
    np.testing.assert_allclose(jnn.losses.mse(jnp.asarray(p), jnp.asarray(t)), np.mean((p - t) ** 2), rtol=1e-5)


# --- jnn.tree path patterns ----------------------------------------------------------------

names = st.sampled_from(["dense_0", "dense_1", "block_0", "encoder", "w", "b", "scale"])


@given(st.lists(names, min_size=1, max_size=4), st.sampled_from(["w", "b", "dense_*", "*/w", "encoder/*",
                                                                   "block_0/*", "*", "dense_?/b"]))
def test_tree_matches_follows_its_documented_rule(parts, pattern):
    path = "/".join(parts)
    # documented rule: a pattern without "/" matches the leaf name; with "/", the whole path (fnmatch)
    expected = fnmatch.fnmatchcase(path if "/" in pattern else parts[-1], pattern)
    assert jnn.tree.matches(path, pattern) == expected
    tree, node = {}, None
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = jnp.zeros(1)
    assert jax.tree_util.tree_leaves(jnn.tree.mask(tree, pattern)) == [expected]


# --- IDX reader ----------------------------------------------------------------------------

IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@given(st.sampled_from(sorted(IDX_CODES)), st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data())
def test_idx_roundtrip_of_random_valid_files(tmp_path_factory, code, dims, data):
    dtype = np.dtype(IDX_CODES[code])
    values = np.arange(math.prod(dims)).astype(dtype).reshape(dims)
    raw = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + values.tobytes()
    path = tmp_path_factory.mktemp("idx") / "x-idx"
    path.write_bytes(raw)
    got = read_idx(path)
    assert got.shape == tuple(dims) and got.dtype == dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, values)


@given(position=st.integers(0, 11), value=st.integers(0, 255))
def test_idx_corrupted_header_raises_value_error_or_reads_consistently(tmp_path_factory, position, value):
    raw = bytearray([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    raw[position] = value
    path = tmp_path_factory.mktemp("idx") / "y-idx"
    path.write_bytes(bytes(raw))
    try:
        got = read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:  # a changed byte that still describes a valid file: the array must match the header
        dims = struct.unpack(">II", bytes(raw[4:12])) if raw[3] == 2 else None
        assert raw[:2] == b"\x00\x00" and got.size * got.dtype.itemsize == len(raw) - 4 - 4 * raw[3]
        if dims is not None:
            assert got.shape == dims
