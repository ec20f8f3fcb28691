"""Recurrent cells and layers against flax.linen, a NumPy reference and unpadded runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jnn
from jnn.layers.cells import gru_cell, lstm_cell, rnn_cell
from jnn.layers.recurrent import bidirectional, recurrent, run

nn = pytest.importorskip("flax.linen")  # flax is a test extra, not a jnn dependency

CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}
KEY = jax.random.key(0)


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _random_leaves(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(0.5 * _normal(rng, *a.shape)), tree)


def _flax_run(cell, flax_params, x):
    """Reference: the flax cell stepped over time in Python."""
    carry, ys = cell.initialize_carry(KEY, x[:, 0].shape), []
    for t in range(x.shape[1]):
        carry, y = cell.apply({"params": flax_params}, carry, x[:, t])
        ys.append(y)
    return jnp.stack(ys, 1), carry


def test_lstm_matches_flax_lstm_cell():
    B, T, F, H = 2, 4, 3, 5
    x = jnp.asarray(_normal(np.random.default_rng(1), B, T, F))
    fp = nn.LSTMCell(H).init(KEY, nn.LSTMCell(H).initialize_carry(KEY, (B, F)), x[:, 0])["params"]
    fp = _random_leaves(fp, 2)  # random biases too (flax starts them at zero)
    gates = ["i", "f", "g", "o"]  # flax's per-gate Dense modules, fused in this order
    params = {
        "input": {"w": jnp.concatenate([fp[f"i{g}"]["kernel"] for g in gates], 1),
                  "b": jnp.concatenate([fp[f"h{g}"]["bias"] for g in gates])},
        "hidden": {"w": jnp.concatenate([fp[f"h{g}"]["kernel"] for g in gates], 1)},
    }
    ys, (c, h) = run(lstm_cell(H), params, x)
    ref_ys, (ref_c, ref_h) = _flax_run(nn.LSTMCell(H), fp, x)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    np.testing.assert_allclose(c, ref_c, atol=1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)


def test_gru_matches_flax_gru_cell():
    B, T, F, H = 2, 4, 3, 5
    x = jnp.asarray(_normal(np.random.default_rng(1), B, T, F))
    fp = nn.GRUCell(H).init(KEY, jnp.zeros((B, H)), x[:, 0])["params"]
    fp = _random_leaves(fp, 3)
    gates = ["r", "z", "n"]
    params = {
        "input": {"w": jnp.concatenate([fp[f"i{g}"]["kernel"] for g in gates], 1),
                  "b": jnp.concatenate([fp[f"i{g}"]["bias"] for g in gates])},
        "hidden": {"w": jnp.concatenate([fp[f"h{g}"]["kernel"] for g in gates], 1),
                   "b": fp["hn"]["bias"]},  # inside r * (W_hn h + b_hn)
    }
    ys, h = run(gru_cell(H), params, x)
    ref_ys, ref_h = _flax_run(nn.GRUCell(H), fp, x)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)


def _numpy_rnn(params, x, h=None, reverse=False):
    wi, b, wh = (np.asarray(a, np.float64) for a in
                 (params["input"]["w"], params["input"]["b"], params["hidden"]["w"]))
    x = np.asarray(x, np.float64)
    h = np.zeros((x.shape[0], wh.shape[0])) if h is None else np.asarray(h, np.float64)
    ys = np.zeros(x.shape[:2] + (wh.shape[0],))
    for t in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
        h = np.tanh(x[:, t] @ wi + b + h @ wh)
        ys[:, t] = h
    return ys, h


@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_layer_matches_numpy(reverse):
    x = _normal(np.random.default_rng(0), 2, 4, 3)
    layer = recurrent(rnn_cell(5), reverse=reverse)
    params, state = layer.init(KEY, x)
    params = _random_leaves(params, 1)
    ys, _ = layer.apply(params, state, jnp.asarray(x))
    ref, _ = _numpy_rnn(params, x, reverse=reverse)
    np.testing.assert_allclose(ys, ref, atol=1e-5)


def test_initial_carry_continues_a_split_sequence():
    x = _normal(np.random.default_rng(0), 2, 5, 3)
    cell = rnn_cell(4)
    params = _random_leaves(cell.init(KEY, 3), 1)
    ys1, h1 = run(cell, params, jnp.asarray(x[:, :2]))
    ys2, h2 = run(cell, params, jnp.asarray(x[:, 2:]), initial_carry=h1)
    ref, ref_h = _numpy_rnn(params, x)
    np.testing.assert_allclose(np.concatenate([ys1, ys2], 1), ref, atol=1e-5)
    np.testing.assert_allclose(h2, ref_h, atol=1e-5)


def _step_loop(cell, params, seq, reverse):
    """Reference: one unpadded sequence [T, F], stepped in Python (no scan, no mask)."""
    carry, ys = cell.initial_carry((1,)), []
    for x_t in (seq[::-1] if reverse else seq):
        carry, y = cell.step(params, carry, jnp.asarray(x_t)[None])
        ys.append(np.asarray(y[0]))
    ys = np.stack(ys[::-1] if reverse else ys) if ys else np.zeros((0, cell.hidden_size))
    return ys, jax.tree_util.tree_map(lambda a: np.asarray(a[0]), carry)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_masked_sequences_equal_unpadded_runs(kind, reverse):
    T, lengths = 4, [4, 1, 0, 3]
    cell = CELLS[kind](3)
    params = _random_leaves(cell.init(KEY, 2), 4)
    rng = np.random.default_rng(0)
    seqs = [_normal(rng, n, 2) for n in lengths]
    x = np.full((len(lengths), T, 2), np.nan, np.float32)  # padding must never leak
    for b, s in enumerate(seqs):
        x[b, :lengths[b]] = s
    layer = recurrent(cell, reverse=reverse)
    last_layer = recurrent(cell, reverse=reverse, return_sequences=False)
    lens = jnp.array(lengths)
    ys, carry = run(cell, params, x, lengths=lens, reverse=reverse)
    ys_layer, _ = layer.apply(params, {}, jnp.asarray(x), lengths=lens)
    last, _ = last_layer.apply(params, {}, jnp.asarray(x), lengths=lens)
    np.testing.assert_array_equal(ys, ys_layer)
    for b, (s, n) in enumerate(zip(seqs, lengths)):
        ref_ys, ref_carry = _step_loop(cell, params, s, reverse)
        np.testing.assert_allclose(ys[b, :n], ref_ys, atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(a[b], r, atol=1e-6),
                               carry, ref_carry)
        # the last output is the one after the whole (valid) sequence was read
        expected_last = np.zeros(3) if n == 0 else ref_ys[0 if reverse else n - 1]
        np.testing.assert_allclose(last[b], expected_last, atol=1e-6)


def test_bidirectional_concatenates_forward_and_backward_runs():
    x = jnp.asarray(_normal(np.random.default_rng(0), 3, 4, 2))
    lengths = jnp.array([4, 1, 3])
    fwd, bwd = lstm_cell(2), gru_cell(3)
    layer = bidirectional(fwd, bwd)
    params, state = layer.init(KEY, x)
    y, _ = layer.apply(params, state, x, lengths=lengths)
    y_f, _ = run(fwd, params["forward"], x, lengths=lengths)
    y_b, _ = run(bwd, params["backward"], x, lengths=lengths, reverse=True)
    np.testing.assert_allclose(y, np.concatenate([y_f, y_b], -1), atol=1e-6)
    last = bidirectional(bwd, merge="add", return_sequences=False)
    params, state = last.init(KEY, x)
    y, _ = last.apply(params, state, x)
    y_f, _ = run(bwd, params["forward"], x)
    y_b, _ = run(bwd, params["backward"], x, reverse=True)
    np.testing.assert_allclose(y, y_f[:, -1] + y_b[:, 0], atol=1e-6)


def test_serial_stacks_layers_keyed_by_cell_kind():
    x = jnp.asarray(_normal(np.random.default_rng(0), 2, 4, 3))
    cell1, cell2 = lstm_cell(4), lstm_cell(2)
    model = jnn.serial(recurrent(cell1), recurrent(cell2, return_sequences=False))
    params, state = model.init(KEY, x)
    assert sorted(params) == ["lstm_0", "lstm_1"]
    y, _ = model.apply(params, state, x)
    h1, _ = run(cell1, params["lstm_0"], x)
    _, (_, h2) = run(cell2, params["lstm_1"], h1)
    np.testing.assert_allclose(y, h2, atol=1e-6)


def test_unroll_gives_the_same_values():
    x = jnp.asarray(_normal(np.random.default_rng(0), 2, 5, 3))
    cell = gru_cell(4)
    params = cell.init(KEY, 3)
    for unroll in (2, True):
        np.testing.assert_allclose(run(cell, params, x, unroll=unroll)[0], run(cell, params, x)[0],
                                   atol=1e-6)


def test_lstm_init_forget_bias_and_orthogonal_recurrent_blocks():
    H = 4
    params = lstm_cell(H).init(KEY, 3)
    b = np.asarray(params["input"]["b"]).reshape(4, H)
    np.testing.assert_array_equal(b, [[0] * H, [1] * H, [0] * H, [0] * H])
    wh = np.asarray(params["hidden"]["w"])
    assert wh.shape == (H, 4 * H) and params["input"]["w"].shape == (3, 4 * H)
    for g in range(4):
        block = wh[:, g * H:(g + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    assert not np.allclose(wh[:, :H], wh[:, H:2 * H])  # each gate block drawn separately
    assert float(lstm_cell(H, forget_bias=0.0).init(KEY, 3)["input"]["b"].sum()) == 0.0


def test_params_float32_and_compute_in_input_dtype():
    layer = recurrent(gru_cell(3))
    x = jnp.ones((2, 4, 2), jnp.bfloat16)
    params, state = layer.init(KEY, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
    assert layer.apply(params, state, x)[0].dtype == jnp.bfloat16


def test_masked_reverse_run_gradients():
    with jax.enable_x64(True):
        cell = rnn_cell(2)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cell.init(KEY, 2))
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 2)))
        lengths = jnp.array([3, 2])
        # the registry checks the scanned cells to second order; this covers the masked path
        f = lambda x: jnp.sum(jnp.sin(run(cell, params, x, lengths=lengths, reverse=True)[0]))
        check_grads(f, (x,), order=1, modes=("fwd", "rev"))


def test_construction_errors():
    with pytest.raises(ValueError, match=r"lstm_cell: hidden_size must be a positive integer, got 0"):
        lstm_cell(0)
    with pytest.raises(ValueError, match=r"gru_cell: hidden_size must be a positive integer, got True"):
        gru_cell(True)
    with pytest.raises(ValueError, match=r"rnn_cell: input_size must be a positive integer, got -1"):
        rnn_cell(2).init(KEY, -1)
    with pytest.raises(ValueError, match=r"lstm_cell b_init: unknown initializer 'nope'"):
        lstm_cell(2, b_init="nope")
    with pytest.raises(TypeError, match=r"recurrent: expected a Cell .* got function \(did you forget "
                                        r"to call it, e\.g\. lstm_cell\(64\)\?\)"):
        recurrent(lstm_cell)
    with pytest.raises(ValueError, match=r"recurrent: return_sequences must be True or False, got 1"):
        recurrent(lstm_cell(2), return_sequences=1)
    with pytest.raises(ValueError, match=r"enc: unroll must be a positive integer or True, got 0"):
        recurrent(gru_cell(2), unroll=0, name="enc")
    with pytest.raises(ValueError, match=r"bidirectional: merge must be one of \['add', 'concat', "
                                         r"'multiply'\] or a callable, got 'sum'"):
        bidirectional(gru_cell(2), merge="sum")
    with pytest.raises(ValueError, match=r"bidirectional: merge='add' needs cells of one hidden "
                                         r"size, got 2 and 3"):
        bidirectional(gru_cell(2), gru_cell(3), merge="add")
    with pytest.raises(TypeError, match=r"bidirectional: merge must be a string or a callable, got int"):
        bidirectional(gru_cell(2), merge=3)


def test_apply_errors():
    layer = recurrent(gru_cell(3))
    params, state = layer.init(KEY, jax.ShapeDtypeStruct((2, 4, 5), jnp.float32))
    with pytest.raises(ValueError, match=r"gru: expected a floating input of shape \[batch, time, "
                                         r"features\], got float32 of shape \(2, 5\)"):
        layer.init(KEY, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"gru: expected a floating input .* got int32 of shape "
                                         r"\(2, 4, 5\)"):
        layer.apply(params, state, jnp.zeros((2, 4, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"gru: expected input of shape \[batch, time, 5\] \(the size "
                                         r"it was initialized with\), got \(2, 4, 6\)"):
        layer.apply(params, state, jnp.zeros((2, 4, 6)))
    with pytest.raises(ValueError, match=r"gru: expected integer lengths of shape \(2,\) \(one per "
                                         r"sequence\), got int32 of shape \(3,\)"):
        layer.apply(params, state, jnp.zeros((2, 4, 5)), lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"run: expected integer lengths of shape \(2,\) .* got "
                                         r"float32 of shape \(2,\)"):
        run(gru_cell(3), params, jnp.zeros((2, 4, 5)), lengths=jnp.array([1.0, 2.0]))
