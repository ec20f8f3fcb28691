"""jnn.layers.recurrent, the details its other tests left open (found by mutation testing,
tests/MUTATION.md): user-written cells (params that are not the built-in cells' dicts, integer
leaves), dtypes, the last output with lengths, lengths past the sequence, unbatched input,
bidirectional's merge function, children and names, and error labels. Layers are built inside the
tests; the cells' formulas and the scans are checked against flax in tests/test_recurrent.py."""
import re

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.cells import Cell, gru_cell, lstm_cell
from jnn.layers.recurrent import bidirectional, recurrent, run

KEY = jax.random.key(0)


def _x(shape=(3, 5, 2), seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _leaky_cell(params_as_tuple: bool) -> Cell:
    """h' = decay * h + x @ w (a cell written against the Cell protocol, not a built-in one), with
    an integer leaf that must stay an integer: the number of input features."""
    def init(key, input_size, dtype=jnp.float32):
        w = jax.random.normal(key, (input_size, 2), dtype)
        decay, size = jnp.asarray(0.5, dtype), jnp.asarray(input_size, jnp.int32)
        return (w, decay, size) if params_as_tuple else {"w": w, "decay": decay, "size": size}

    def step(params, h, x):
        w, decay, size = params if params_as_tuple else (params["w"], params["decay"], params["size"])
        assert size.dtype == jnp.int32, size.dtype            # integer leaves are not cast
        h = decay * h + x @ w
        return h, h

    return Cell(init, lambda batch=(), dtype=jnp.float32: jnp.zeros((*batch, 2), dtype), step, 2, "leaky")


@pytest.mark.parametrize("as_tuple", [False, True])
def test_a_user_written_cell_runs_in_the_input_dtype(as_tuple):
    cell = _leaky_cell(as_tuple)
    layer = recurrent(cell)
    x = _x()
    params, _ = layer.init(KEY, x)
    w, decay = (params[0], params[1]) if as_tuple else (params["w"], params["decay"])
    h, expected = np.zeros((3, 2)), []
    for t in range(5):
        h = float(decay) * h + np.asarray(x[:, t]) @ np.asarray(w)
        expected.append(h)
    np.testing.assert_allclose(layer.apply(params, {}, x)[0], np.stack(expected, 1), atol=1e-5)
    y16, _ = layer.apply(params, {}, x.astype(jnp.bfloat16))       # float32 params, bfloat16 compute
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), np.stack(expected, 1), atol=0.1)


def test_dtypes_of_params_outputs_and_carry():
    layer = recurrent(lstm_cell(3))
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.float64):
            params, _ = layer.init(KEY, _x(dtype=dtype))
            assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(dtype)}
    params, _ = layer.init(KEY, _x())
    ys, carry = run(lstm_cell(3), params, _x(dtype=jnp.bfloat16))
    assert ys.dtype == jnp.bfloat16 and {c.dtype for c in carry} == {jnp.dtype(jnp.bfloat16)}


def test_the_last_output_with_lengths_and_lengths_past_the_end():
    cell = gru_cell(3)
    x = _x((3, 5, 2))
    sequences, last = recurrent(cell), recurrent(cell, return_sequences=False)
    params, _ = sequences.init(KEY, x)
    lengths = jnp.array([5, 2, 4])
    ys, _ = sequences.apply(params, {}, x, lengths=lengths)
    np.testing.assert_allclose(last.apply(params, {}, x, lengths=lengths)[0], ys[jnp.arange(3), lengths - 1],
                               atol=1e-6)
    # lengths are clipped to [0, T]: 9 reads the whole sequence, 0 nothing (a zero output)
    y_clipped = last.apply(params, {}, x, lengths=jnp.array([9, 0, 5]))[0]
    np.testing.assert_allclose(y_clipped[0], ys[0, -1], atol=1e-6)
    np.testing.assert_allclose(y_clipped[1], 0.0)
    np.testing.assert_allclose(y_clipped[2], last.apply(params, {}, x)[0][2], atol=1e-6)


def test_run_takes_one_unbatched_sequence():
    cell = lstm_cell(3)
    params = cell.init(KEY, 2)
    x = _x((1, 5, 2))
    ys, (c, h) = run(cell, params, x[0])
    batched, (bc, bh) = run(cell, params, x)
    np.testing.assert_allclose(ys, batched[0], atol=1e-6)
    np.testing.assert_allclose(h, bh[0], atol=1e-6)


def test_bidirectional_merge_function_children_and_names():
    cell = gru_cell(3)
    layer = bidirectional(cell, merge=lambda f, b: f - b, name="bi")
    x = _x()
    params, _ = layer.init(KEY, x)
    forward, backward = recurrent(cell), recurrent(cell, reverse=True)
    expected = forward.apply(params["forward"], {}, x)[0] - backward.apply(params["backward"], {}, x)[0]
    np.testing.assert_allclose(layer.apply(params, {}, x)[0], expected, atol=1e-6)
    assert (layer.kind, layer.name, list(layer.children)) == ("bidirectional", "bi", ["forward", "backward"])
    assert (layer["forward"].name, layer["backward"].name) == ("bi/forward", "bi/backward")
    assert layer["forward"].kind == layer["backward"].kind == "gru"
    assert bidirectional(cell).name is None and bidirectional(cell)["forward"].name == "bidirectional/forward"
    assert recurrent(cell, name="enc").name == "enc" and recurrent(cell).name is None
    with pytest.raises(ValueError, match=r"^bi/forward: expected input of shape \[batch, time, 2\]"):
        layer.apply(params, {}, _x((3, 5, 4)))


def test_errors_name_the_function_or_layer():
    cell = lstm_cell(3)
    params = cell.init(KEY, 2)
    for bad, got in ((3, r"int$"), ("lstm", r"str$")):
        with pytest.raises(TypeError, match=rf"^run: expected a Cell \(rnn_cell, lstm_cell, gru_cell\), got {got}"):
            run(bad, params, _x())
        with pytest.raises(TypeError, match=rf"^bidirectional: expected a Cell .*got {got}"):
            bidirectional(bad)
        with pytest.raises(TypeError, match=rf"^bidirectional: expected a Cell .*got {got}"):
            bidirectional(cell, bad)
    with pytest.raises(TypeError, match=r"got function \(did you forget to call it, e\.g\. lstm_cell\(64\)\?\)$"):
        run(lstm_cell, params, _x())
    for unroll in (0, 1.5, False):
        with pytest.raises(ValueError, match=rf"^run: unroll must be a positive integer or True, got {unroll!r}"):
            run(cell, params, _x(), unroll=unroll)
    for bad in (jnp.ones((3, 5, 2), jnp.int32), jnp.ones((2,))):
        with pytest.raises(ValueError, match=rf"^run: expected a floating input of shape \[\.\.\., time, "
                                             rf"features\], got {bad.dtype} of shape "
                                             rf"{re.escape(str(tuple(bad.shape)))} \(embed integer ids first\)"):
            run(cell, params, bad)
    layer = recurrent(cell)
    with pytest.raises(ValueError, match=r"^lstm: expected a floating input of shape \[batch, time, features\], "
                                         r"got int32 of shape \(3, 5, 2\)"):
        layer.init(KEY, jnp.ones((3, 5, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"^recurrent: reverse must be True or False, got 1"):
        recurrent(cell, reverse=1)
    assert jnn.serial(recurrent(cell)).init(KEY, _x())[0].keys() == {"lstm_0"}



def _scan_unrolls(fn, *args) -> list:
    """The ``unroll`` of every ``lax.scan`` in ``fn``'s jaxpr (nested jaxprs included)."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                found.append(eqn.params["unroll"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_unroll_reaches_every_scan():
    cell, x = gru_cell(3), _x()
    params = cell.init(KEY, 2)
    assert _scan_unrolls(lambda p, x: run(cell, p, x, unroll=3), params, x) == [3]
    assert _scan_unrolls(lambda p, x: run(cell, p, x), params, x) == [1]
    for kwargs, expected in (({"unroll": 4}, [4]), ({}, [1])):
        layer = recurrent(cell, **kwargs)
        assert _scan_unrolls(lambda p, x: layer.apply(p, {}, x)[0], layer.init(KEY, x)[0], x) == expected
        both = bidirectional(cell, **kwargs)
        assert _scan_unrolls(lambda p, x: both.apply(p, {}, x)[0], both.init(KEY, x)[0], x) == expected * 2
