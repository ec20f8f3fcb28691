"""The four peer-benchmark models written in raw JAX and in jnn (see peers.py).

Every model maps a batch to logits ``[B, 10]`` and trains with softmax cross-entropy and
``optax.adam(1e-3)``:
  mlp          [B, 28, 28, 1] -> flatten -> dense 128 -> relu -> dense 64 -> relu -> dense 10
  cnn          [B, 28, 28, 1] -> (conv3x3 SAME -> relu -> max_pool 2x2) for 32, 64 channels
               -> flatten -> dense 128 -> relu -> dense 10
  lstm         [B, 28, 28] (rows as time steps) -> LSTM 128 -> last output -> dense 10
  transformer  [B, 64, 128] -> one pre-norm encoder block (4 heads, MLP 512, tanh GELU)
               -> mean over time -> dense 10
Each ``make_*`` returns ``(step, carry)`` with ``step(carry, x, y) -> carry`` jitted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jnn

SHAPES = {"mlp": (28, 28, 1), "cnn": (28, 28, 1), "lstm": (28, 28), "transformer": (64, 128)}
HEADS, MLP_DIM, HIDDEN = 4, 512, 128
DN = ("NHWC", "HWIO", "NHWC")


def optimizer():
    return optax.adam(1e-3)


def cross_entropy(logits, y):
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --- raw JAX ------------------------------------------------------------------------------------

def _dense(key, n_in, n_out):
    return {"w": jax.random.normal(key, (n_in, n_out)) / jnp.sqrt(n_in), "b": jnp.zeros(n_out)}


def _apply_dense(p, h):
    return h @ p["w"] + p["b"]


def _max_pool_2x2(h):
    b, height, width, c = h.shape
    return h.reshape(b, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))


def _layer_norm(p, h):
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    return (h - mean) * jax.lax.rsqrt(var + 1e-6) * p["scale"] + p["bias"]


def raw_init(name, key):
    k = iter(jax.random.split(key, 8))
    if name == "mlp":
        return [_dense(next(k), 784, 128), _dense(next(k), 128, 64), _dense(next(k), 64, 10)]
    if name == "cnn":
        convs = [{"w": jax.random.normal(next(k), (3, 3, c_in, c)) / jnp.sqrt(9 * c_in), "b": jnp.zeros(c)}
                 for c_in, c in [(1, 32), (32, 64)]]
        return {"convs": convs, "dense": [_dense(next(k), 7 * 7 * 64, 128), _dense(next(k), 128, 10)]}
    if name == "lstm":
        return {"input": _dense(next(k), 28, 4 * HIDDEN), "hidden": _dense(next(k), HIDDEN, 4 * HIDDEN),
                "out": _dense(next(k), HIDDEN, 10)}
    d = SHAPES["transformer"][1]
    norm = lambda: {"scale": jnp.ones(d), "bias": jnp.zeros(d)}
    return {"norm_0": norm(), "qkv": _dense(next(k), d, 3 * d), "proj": _dense(next(k), d, d), "norm_1": norm(),
            "mlp_in": _dense(next(k), d, MLP_DIM), "mlp_out": _dense(next(k), MLP_DIM, d), "out": _dense(next(k), d, 10)}


def raw_apply(name, p, x):
    if name == "mlp":
        h = x.reshape(x.shape[0], -1)
        h = jax.nn.relu(_apply_dense(p[0], h))
        return _apply_dense(p[2], jax.nn.relu(_apply_dense(p[1], h)))
    if name == "cnn":
        h = x
        for c in p["convs"]:
            h = jax.lax.conv_general_dilated(h, c["w"], (1, 1), "SAME", dimension_numbers=DN) + c["b"]
            h = _max_pool_2x2(jax.nn.relu(h))
        h = jax.nn.relu(_apply_dense(p["dense"][0], h.reshape(h.shape[0], -1)))
        return _apply_dense(p["dense"][1], h)
    if name == "lstm":
        def cell(carry, x_t):
            c, h = carry
            z = _apply_dense(p["input"], x_t) + h @ p["hidden"]["w"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            return (c, jax.nn.sigmoid(o) * jnp.tanh(c)), None
        zeros = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
        (_, h), _ = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(x, 0, 1))
        return _apply_dense(p["out"], h)
    b, t, d = x.shape
    q, k, v = jnp.split(_apply_dense(p["qkv"], _layer_norm(p["norm_0"], x)), 3, axis=-1)
    heads = lambda a: a.reshape(b, t, HEADS, d // HEADS)
    attn = jax.nn.dot_product_attention(heads(q), heads(k), heads(v)).reshape(b, t, d)
    h = x + _apply_dense(p["proj"], attn)
    h = h + _apply_dense(p["mlp_out"], jax.nn.gelu(_apply_dense(p["mlp_in"], _layer_norm(p["norm_1"], h))))
    return _apply_dense(p["out"], h.mean(axis=1))


def make_raw(name, key, batch):
    opt, params = optimizer(), raw_init(name, key)

    @jax.jit
    def step(carry, x, y):
        params, opt_state = carry
        grads = jax.grad(lambda p: cross_entropy(raw_apply(name, p, x), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step, (params, opt.init(params))


# --- jnn ----------------------------------------------------------------------------------------

def jnn_model(name):
    if name == "mlp":
        return jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(64), jnn.relu(), jnn.dense(10))
    if name == "cnn":
        blocks = [layer for c in (32, 64) for layer in (jnn.conv(c, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)))]
        return jnn.serial(*blocks, jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(10))
    if name == "lstm":
        return jnn.serial(jnn.recurrent(jnn.lstm_cell(HIDDEN), return_sequences=False), jnn.dense(10))
    mean_over_time = jnn.stateless("mean_over_time", lambda h: h.mean(axis=1))
    # tanh GELU, as the raw JAX, Flax, Equinox (jax.nn.gelu's default) and PyTorch blocks
    return jnn.serial(jnn.encoder_block(HEADS, MLP_DIM, mlp="gelu_tanh"), mean_over_time, jnn.dense(10))


def make_jnn(name, key, batch):
    model, opt = jnn_model(name), optimizer()
    train_step = jax.jit(jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={}),
                         compiler_options=jnn.train.compiler_options())   # as fit compiles it
    ts = jnn.train.init_train_state(model, opt, key, jax.ShapeDtypeStruct((batch, *SHAPES[name]), jnp.float32))
    return (lambda ts, x, y: train_step(ts, (x, y))[0]), ts
