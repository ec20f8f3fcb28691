"""Does XLA CPU use a second core on an LSTM step? The gradient of a 28-step LSTM (batch 128,
hidden 128) as one recurrence, and as two independent half-batch recurrences in one scan body
(which XLA could run side by side). Raw JAX, ms per call; see benchmarks/RESULTS.md (issue 41).

    python benchmarks/lstm_threads.py           # then: taskset -c 1 python benchmarks/lstm_threads.py
"""
import time, jax, jax.numpy as jnp
B, T, H, F = 128, 28, 128, 28
def cell(p, carry, xw):
    h, c = carry
    z = xw + h @ p["u"]
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h
def run(p, x, split):
    xw = jnp.einsum("btf,fg->tbg", x, p["w"]) + p["b"]
    if split == 1:
        (h, c), _ = jax.lax.scan(lambda cr, xt: cell(p, cr, xt), (jnp.zeros((B, H)),) * 2, xw)
        return h
    parts = jnp.split(xw, split, axis=1)
    def body(crs, xts):
        outs = [cell(p, cr, xt) for cr, xt in zip(crs, xts)]
        return tuple(o[0] for o in outs), None
    crs, _ = jax.lax.scan(body, tuple((jnp.zeros((B // split, H)),) * 2 for _ in range(split)), tuple(parts))
    return jnp.concatenate([cr[0] for cr in crs])
def loss(p, x, split): return jnp.mean(run(p, x, split) ** 2)
k = jax.random.key(0)
p = {"w": jax.random.normal(k, (F, 4 * H)) * .1, "u": jax.random.normal(k, (H, 4 * H)) * .1, "b": jnp.zeros(4 * H)}
x = jax.random.normal(k, (B, T, F))
for split in (1, 2, 1, 2):   # interleaved
    f = jax.jit(jax.grad(loss), static_argnums=2)
    jax.block_until_ready(f(p, x, split))
    t = time.perf_counter()
    for _ in range(50): g = f(p, x, split)
    jax.block_until_ready(g)
    print(split, (time.perf_counter() - t) / 50 * 1e3, "ms")
