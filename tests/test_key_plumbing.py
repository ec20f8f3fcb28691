"""Keys are passed on: consecutive steps, sibling layers and population members each draw
independent randomness. Observed through dropout masks, never by comparing jnn with jnn.

With independent keys, two dropout(0.5) masks over the same elements agree on about half of
them; with the same key they agree everywhere. Each test measures that agreement directly."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

N = 4096  # elements per mask: agreement of independent masks is 0.5 +- 0.008 (1 sigma)


def agreement(a, b) -> float:
    return float(np.mean((np.asarray(a) != 0) == (np.asarray(b) != 0)))


def mask_probe():
    """A model whose train-mode output is its dropout mask (scaled): dropout(0.5) on ones."""
    return jnn.serial(jnn.dropout(0.5))


def test_consecutive_train_steps_use_different_keys():
    # The metric returns the first element of the masked output per position, so the step's
    # mask can be read back from the logs; lr 0 keeps everything else fixed.
    model = mask_probe()
    masks = []
    metrics = {f"m{i}": (lambda i: lambda out, y: out[0, i])(i) for i in range(256)}
    step = jax.jit(jnn.train.make_train_step(model, lambda out, y: jnp.mean(out), optax.sgd(0.0), metrics=metrics))
    ts = jnn.train.init_train_state(model, optax.sgd(0.0), jax.random.key(0), jnp.zeros((1, 256)))
    for _ in range(3):
        ts, logs = step(ts, (jnp.ones((1, 256)), jnp.zeros((1,))))
        masks.append(np.array([float(logs[f"m{i}"]) for i in range(256)]))
    assert set(np.unique(masks[0])) <= {0.0, 2.0}
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert 0.35 < agreement(masks[a], masks[b]) < 0.65, (a, b, agreement(masks[a], masks[b]))


def test_fit_epochs_draw_new_masks():
    seen = []

    def record(epoch, ts, logs):
        seen.append(ts.key)

    x, y = np.ones((8, 4), np.float32), np.zeros((8, 1), np.float32)
    jnn.train.fit(jnn.serial(jnn.dropout(0.5), jnn.dense(1)), jnn.losses.mse, optax.sgd(0.0), (x, y),
                  key=jax.random.key(0), epochs=3, batch_size=8, metrics={}, verbose=0,
                  callbacks=[record])
    data = [np.asarray(jax.random.key_data(k)) for k in seen]
    assert not np.array_equal(data[0], data[1]) and not np.array_equal(data[1], data[2])


@pytest.mark.parametrize("combinator", ["serial", "fan_out", "residual"])
def test_siblings_get_independent_keys_at_apply(combinator):
    x = jnp.ones((1, N))
    if combinator in ("serial", "residual"):
        # Two dropouts in a row: with one shared key the second mask repeats the first, so an
        # element survives with probability 1/2 instead of 1/4. (residual: y = x + branch(x).)
        make = jnn.serial if combinator == "serial" else jnn.residual
        model = make(jnn.dropout(0.5), jnn.dropout(0.5))
        params, state = model.init(jax.random.key(1), x)
        y, _ = model.apply(params, state, x, key=jax.random.key(0), train=True)
        branch = y - x if combinator == "residual" else y
        kept = float(np.mean(np.asarray(branch) != 0))
        assert 0.22 < kept < 0.28, kept
        return
    model = jnn.fan_out(jnn.dropout(0.5), jnn.dropout(0.5), merge="concat")
    y, _ = model.apply({}, {}, x, key=jax.random.key(0), train=True)
    first, second = y[:, :N], y[:, N:]
    assert 0.45 < agreement(first, second) < 0.55, agreement(first, second)


def test_siblings_get_independent_keys_at_init():
    model = jnn.serial(jnn.dense(16), jnn.dense(16), jnn.fan_out(jnn.dense(16), jnn.dense(16)))
    params, _ = model.init(jax.random.key(0), jnp.zeros((1, 16)))
    weights = [params["dense_0"]["w"], params["dense_1"]["w"], params["fan_out_0"]["dense_0"]["w"],
               params["fan_out_0"]["dense_1"]["w"]]
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            assert not np.allclose(weights[i], weights[j]), (i, j)


def test_population_members_draw_independent_masks():
    # Identical members except for their keys (w_init ones, lr 0): per-member losses differ only
    # through dropout masks, so equal losses would mean a shared key.
    x = np.asarray(jax.random.normal(jax.random.key(3), (64, 32)), np.float32)
    y = np.zeros((64, 1), np.float32)
    result = jnn.train.fit_population(
        lambda hp: jnn.serial(jnn.dropout(0.5), jnn.dense(1, w_init="ones")), jnn.losses.mse,
        lambda hp: optax.sgd(0.0), (x, y), key=jax.random.key(0), hparams={"lr": jnp.zeros(4)},
        epochs=1, batch_size=64, metrics={})
    losses = [float(result.member(i).history["loss"][0]) for i in range(4)]
    assert len(set(losses)) == 4, losses
