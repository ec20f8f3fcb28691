"""Embedding lookups and the tied head against NumPy; character vocabulary and LM windows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.data.text import CharVocab, lm_windows, random_windows
from jnn.layers.embedding import attend, embedding

KEY = jax.random.key(0)


def test_embedding_looks_up_rows():
    layer = embedding(7, 3)
    ids = np.array([[0, 6, 2], [2, 2, 5]], np.int32)
    params, state = layer.init(KEY, jax.ShapeDtypeStruct(ids.shape, jnp.int32))
    table = np.asarray(params["embedding"])
    assert table.shape == (7, 3) and table.dtype == np.float32
    assert 0.5 < table.std() < 1.5  # normal(1.0) by default
    y, new_state = layer.apply(params, state, jnp.asarray(ids))
    np.testing.assert_array_equal(y, table[ids])
    assert new_state == state == {}


def test_embedding_gradient_accumulates_repeated_ids():
    layer = embedding(4, 2)
    params, state = layer.init(KEY, jnp.zeros((1, 3), jnp.int32))
    ids = jnp.array([[1, 3, 1]])
    grad = jax.grad(lambda p: jnp.sum(layer.apply(p, state, ids)[0]))(params)["embedding"]
    np.testing.assert_array_equal(grad, [[0, 0], [2, 2], [0, 0], [1, 1]])


def test_out_of_range_ids_give_nan_rows_also_under_jit():
    layer = embedding(4, 2)
    params, state = layer.init(KEY, jnp.zeros((4,), jnp.int32))
    ids = jnp.array([0, 4, -1, 3])
    with pytest.raises(ValueError, match=r"embedding: token ids must lie in \[0, 4\), got -1"):
        layer.apply(params, state, ids)  # concrete ids are checked eagerly
    for apply in (jax.jit(layer.apply),):  # under jit values are unchecked: NaN rows
        y = np.asarray(apply(params, state, ids)[0])
        assert np.isnan(y[1]).all() and np.isnan(y[2]).all()  # -1 is not wrapped to the last row
        np.testing.assert_array_equal(y[[0, 3]], np.asarray(params["embedding"])[[0, 3]])


def test_embedding_dtype_follows_default_float_or_argument():
    ids = jnp.zeros((2, 3), jnp.int32)
    params, _ = embedding(5, 2, dtype=jnp.bfloat16).init(KEY, ids)
    assert params["embedding"].dtype == jnp.bfloat16
    with jax.enable_x64(True):
        params, state = embedding(5, 2).init(KEY, ids)
        assert params["embedding"].dtype == jnp.float64
    params, _ = embedding(5, 2, init="zeros").init(KEY, ids)
    assert not np.asarray(params["embedding"]).any()


def test_attend_is_a_tied_output_head():
    layer = embedding(6, 3)
    params, _ = layer.init(KEY, jnp.zeros((1,), jnp.int32))
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    expected = x @ np.asarray(params["embedding"]).T
    np.testing.assert_allclose(attend(params, jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attend(params["embedding"], jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_embedding_errors():
    with pytest.raises(ValueError, match=r"embedding: vocab_size must be a positive integer, got 0"):
        embedding(0, 3)
    with pytest.raises(ValueError, match=r"tok: features must be a positive integer, got -2"):
        embedding(5, -2, name="tok")
    with pytest.raises(ValueError, match=r"embedding: dtype must be a floating dtype, got <class "
                                         r"'jax.numpy.int32'>"):
        embedding(5, 2, dtype=jnp.int32)
    layer = embedding(5, 2)
    with pytest.raises(ValueError, match=r"embedding: expected integer token ids, got float32 of "
                                         r"shape \(2, 3\)"):
        layer.init(KEY, jnp.zeros((2, 3)))
    params, state = layer.init(KEY, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"embedding: expected integer token ids, got float32"):
        layer.apply(params, state, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"embedding: embedding has shape \(4, 2\) but this layer was built with "
                                         r"vocab_size=5, features=2 \(expected shape \(5, 2\)\)"):
        layer.apply({"embedding": jnp.zeros((4, 2))}, state, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"attend: expected x of shape \[\.\.\., 2\] \(the embedding "
                                         r"width\), got \(3, 4\)"):
        attend(params, jnp.zeros((3, 4)))


def test_embedding_feeds_a_recurrent_language_model():
    from jnn.layers.cells import gru_cell
    from jnn.layers.recurrent import recurrent, run
    cell = gru_cell(4)
    model = jnn.serial(embedding(5, 3), recurrent(cell))
    ids = jnp.array([[1, 4, 0]], jnp.int32)
    params, state = model.init(KEY, ids)
    assert sorted(params) == ["embedding_0", "gru_0"]
    y, _ = model.apply(params, state, ids)
    table = params["embedding_0"]["embedding"]
    np.testing.assert_allclose(y, run(cell, params["gru_0"], table[ids])[0], atol=1e-6)


def test_char_vocab_round_trips():
    text = "First Citizen:\nBefore we proceed, héllo ünïcode!"
    vocab = CharVocab(text)
    assert vocab.chars == "".join(sorted(set(text)))
    assert vocab.size == len(vocab) == len(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    np.testing.assert_array_equal(ids, [vocab.chars.index(c) for c in text])
    assert vocab.decode(ids) == text
    assert vocab.decode(jnp.asarray(ids)) == text and vocab.decode([]) == ""
    assert CharVocab(vocab.chars) == vocab and hash(CharVocab(vocab.chars)) == hash(vocab)


def test_char_vocab_errors():
    vocab = CharVocab("abc")
    with pytest.raises(ValueError, match=r"CharVocab.encode: characters not in the vocabulary: \['d', 'z'\]"):
        vocab.encode("abzdz")
    with pytest.raises(ValueError, match=r"CharVocab.decode: ids must lie in \[0, 3\), got \[3, -1\]"):
        vocab.decode([0, 3, -1])
    with pytest.raises(ValueError, match=r"CharVocab.decode: expected a 1-D sequence of integer ids, "
                                         r"got int64 of shape \(1, 2\)"):
        vocab.decode(np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match=r"CharVocab: expected a non-empty string, got ''"):
        CharVocab("")


def test_lm_windows_are_shifted_by_one():
    ids = np.arange(10, dtype=np.int32) * 3
    inputs, targets = lm_windows(ids, 4)
    np.testing.assert_array_equal(inputs, [[0, 3, 6, 9], [12, 15, 18, 21]])
    np.testing.assert_array_equal(targets, [[3, 6, 9, 12], [15, 18, 21, 24]])
    inputs, targets = lm_windows(ids, 3, stride=2)
    assert inputs.shape == targets.shape == (4, 3) and inputs.dtype == np.int32
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    np.testing.assert_array_equal(inputs[:, 0], [0, 6, 12, 18])
    np.testing.assert_array_equal(targets[-1], [21, 24, 27])
    with pytest.raises(ValueError, match=r"lm_windows: expected 1-D ids with at least seq_len \+ 1 = "
                                         r"11 tokens, got shape \(10,\)"):
        lm_windows(ids, 10)
    with pytest.raises(ValueError, match=r"lm_windows: stride must be a positive integer, got 0"):
        lm_windows(ids, 2, stride=0)


def test_random_windows_are_shifted_by_one_and_in_range():
    ids = jnp.arange(20) * 2
    x, y = jax.jit(random_windows, static_argnums=(2, 3))(jax.random.key(3), ids, 5, 64)
    assert x.shape == y.shape == (64, 5)
    np.testing.assert_array_equal(y, x + 2)
    np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 2)
    starts = np.asarray(x[:, 0]) // 2
    assert starts.min() == 0 and starts.max() == 20 - 5 - 1  # every start reachable, none past the end
    with pytest.raises(ValueError, match=r"random_windows: expected 1-D ids with at least seq_len \+ 1 "
                                         r"= 21 tokens, got shape \(20,\)"):
        random_windows(jax.random.key(0), ids, 20, 2)
    with pytest.raises(ValueError, match=r"random_windows: batch_size must be a positive integer, got 0"):
        random_windows(jax.random.key(0), ids, 3, 0)


def test_embedding_name_keys_its_params_and_labels_its_init_error():
    model = jnn.serial(embedding(5, 2, name="tok"), jnn.dense(3))
    params, _ = model.init(KEY, jnp.zeros((1, 4), jnp.int32))
    assert sorted(params) == ["dense_0", "tok"]
    with pytest.raises(ValueError, match=r"^tok init: unknown initializer 'nope'"):
        embedding(5, 2, init="nope", name="tok")
    with pytest.raises(ValueError, match=r"^embedding init: unknown initializer 'nope'"):
        embedding(5, 2, init="nope")


def test_attend_computes_in_the_dtype_of_x():
    params, _ = embedding(6, 3).init(KEY, jnp.zeros((1,), jnp.int32))   # a float32 table
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3)), jnp.bfloat16)
    scores = attend(params, x)
    assert scores.dtype == jnp.bfloat16
    expected = np.asarray(x, np.float32) @ np.asarray(params["embedding"].astype(jnp.bfloat16), np.float32).T
    np.testing.assert_allclose(np.asarray(scores, np.float32), expected, rtol=2e-2, atol=2e-2)
