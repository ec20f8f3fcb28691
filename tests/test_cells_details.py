"""jnn.layers.cells, the details its other tests left open (found by mutation testing,
tests/MUTATION.md): which key each parameter block is drawn from, dtypes, several batch axes,
kinds and error labels. The cells are built inside the tests, so that mutation testing sees
their constructors run; their formulas are checked against flax in tests/test_recurrent.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.layers.cells import gru_cell, lstm_cell, rnn_cell

KEY = jax.random.key(0)
FACTORIES = {"rnn": (rnn_cell, 1), "lstm": (lstm_cell, 4), "gru": (gru_cell, 3)}


class _Recorder:
    """An initializer (normal, stddev 1) that records the key of every draw."""

    def __init__(self):
        self.keys = []

    def __call__(self, key, shape, dtype=jnp.float32):
        self.keys.append(None if key is None else tuple(np.asarray(jax.random.key_data(key)).ravel()))
        return jax.random.normal(key, shape, dtype)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_every_block_and_bias_is_drawn_from_its_own_key(kind):
    factory, gates = FACTORIES[kind]
    w, r, b = _Recorder(), _Recorder(), _Recorder()
    params = factory(3, w_init=w, recurrent_init=r, b_init=b).init(KEY, 2)
    biases = 2 if kind == "gru" else 1                     # gru's hidden.b is a second draw of b_init
    assert (len(w.keys), len(r.keys), len(b.keys)) == (gates, gates, biases)
    keys = w.keys + r.keys + b.keys
    assert None not in keys and len(set(keys)) == len(keys), keys
    assert params["input"]["w"].shape == (2, 3 * gates) and params["hidden"]["w"].shape == (3, 3 * gates)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_params_carry_and_outputs_follow_the_dtype_asked(kind):
    factory, _ = FACTORIES[kind]
    cell = factory(3, b_init="normal")
    for dtype in (jnp.bfloat16, jnp.float16):
        params = cell.init(KEY, 2, dtype)
        assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(dtype)}
        carry = cell.initial_carry((4,), dtype)
        assert {a.dtype for a in jax.tree_util.tree_leaves(carry)} == {jnp.dtype(dtype)}
    params = cell.init(KEY, 2)                              # float32 params serve bfloat16 steps
    carry, y = cell.step(params, cell.initial_carry((4,), jnp.bfloat16), jnp.ones((4, 2), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and {a.dtype for a in jax.tree_util.tree_leaves(carry)} == {jnp.dtype(jnp.bfloat16)}
    with jax.enable_x64(True):
        assert {a.dtype for a in jax.tree_util.tree_leaves(cell.init(KEY, 2))} == {jnp.dtype(jnp.float32)}
        assert {a.dtype for a in jax.tree_util.tree_leaves(cell.initial_carry((4,)))} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_a_step_over_two_batch_axes_equals_the_flattened_batch(kind):
    factory, _ = FACTORIES[kind]
    cell = factory(3, b_init="normal")
    params = cell.init(KEY, 2)
    x = jax.random.normal(jax.random.key(1), (2, 4, 2))
    carry = jax.tree_util.tree_map(lambda c: jax.random.normal(jax.random.key(2), c.shape),
                                   cell.initial_carry((2, 4)))
    new, y = cell.step(params, carry, x)
    flat_new, flat_y = cell.step(params, jax.tree_util.tree_map(lambda c: c.reshape(8, 3), carry), x.reshape(8, 2))
    np.testing.assert_allclose(y.reshape(8, 3), flat_y, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(flat_new)):
        np.testing.assert_allclose(a.reshape(8, 3), b, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_kind_and_error_labels(kind):
    factory, _ = FACTORIES[kind]
    label = f"{kind}_cell"
    assert factory(2).kind == kind and factory(2).hidden_size == 2
    with pytest.raises(ValueError, match=rf"^{label}: hidden_size must be a positive integer, got 0"):
        factory(0)
    with pytest.raises(ValueError, match=rf"^{label}: input_size must be a positive integer, got 0"):
        factory(2).init(KEY, 0)
    for option in ("w_init", "recurrent_init", "b_init"):
        with pytest.raises(ValueError, match=rf"^{label} {option}: unknown initializer 'nope'"):
            factory(2, **{option: "nope"})
