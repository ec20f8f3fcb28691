"""A serial 2-4-1 network trained with jax.jit(jax.grad(...)) and optax.adam fits XOR, compiled once."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn


def test_xor_trains_to_100_percent_without_recompiling():
    x = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32)
    y = jnp.array([[0], [1], [1], [0]], jnp.float32)
    model = jnn.serial(jnn.dense(4), jnn.sigmoid(), jnn.dense(1))
    params, state = model.init(jax.random.key(0), x)
    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(params)
    traces = []

    def loss_fn(params):
        logits, _ = model.apply(params, state, x)
        return jnn.losses.binary_cross_entropy_with_logits(logits, y)

    @jax.jit
    def train_step(params, opt_state):
        traces.append(1)  # runs once per trace, i.e. per compilation
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(1000):
        params, opt_state, loss = train_step(params, opt_state)
    assert len(traces) == 1 and train_step._cache_size() == 1
    logits, _ = model.apply(params, state, x)
    np.testing.assert_array_equal(np.asarray(logits > 0), np.asarray(y > 0.5))
    assert float(loss) < 0.05
