"""Smoke tests (tiny configs) for the course-project experiments, plus the facts they rest on."""
import jax
import jax.numpy as jnp

import jnn
from experiments_path import load

explorer = load("activation_explorer")


def test_step_gives_zero_gradients_and_sigmoid_vanishes_in_depth():
    x, y = jnn.data.load_mnist("test")
    x, y = jnp.asarray(x[:128]), jnp.asarray(y[:128])
    key = jax.random.key(0)
    step = explorer.grad_norms_at_init(jnn.step, x, y, depth=6, width=32, key=key)
    sigmoid = explorer.grad_norms_at_init(jnn.sigmoid, x, y, depth=6, width=32, key=key)
    relu = explorer.grad_norms_at_init(jnn.relu, x, y, depth=6, width=32, key=key)
    assert all(g == 0.0 for g in step[:-1]) and step[-1] > 0  # only the output layer gets a gradient
    assert sigmoid[0] < 1e-2 * sigmoid[-1]  # vanishing: the input layer's gradient is 100x smaller
    assert relu[0] > 0.1 * relu[-1]


def test_dead_fraction_counts_units_silent_on_every_example():
    # Hand-built: 4 hidden units; unit 0 is always negative (dead), unit 1 fires only on the second
    # example (alive), units 2-3 always fire. One of four units is dead.
    x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    params = {"dense_0": {"w": jnp.array([[-1.0, 0.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]]),
                          "b": jnp.array([0.0, 0.0, 0.5, 0.5])}}
    assert explorer.dead_fraction(params, jax.nn.relu, x, (4,)) == 0.25
    params["dense_0"]["b"] = jnp.array([0.0, -2.0, 0.5, 0.5])          # now unit 1 never fires
    assert explorer.dead_fraction(params, jax.nn.relu, x, (4,)) == 0.5


def test_activation_explorer_smoke(tmp_path, capsys):
    rows = explorer.main(explorer.Config(activations=("step", "relu"), hidden=(16,), epochs=1, depth=3,
                                         deep_width=8, train_limit=1000, out=str(tmp_path)))
    assert set(rows) == {"step", "relu"}
    # One epoch on 900 images: ReLU trains every layer, step only the output layer (measured 0.22
    # against 0.13; chance is 0.1).
    assert rows["relu"]["test_accuracy"] > rows["step"]["test_accuracy"] + 0.05
    assert (tmp_path / "activation_explorer" / "activations.png").exists()
    assert "gradient norm of each layer's weights at init" in capsys.readouterr().out
