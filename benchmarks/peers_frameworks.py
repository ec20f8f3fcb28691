"""The peer-benchmark models in Flax Linen, Flax NNX, Equinox and PyTorch (see peers_jax.py for
the architectures). Each ``make_*(name, key, batch)`` returns ``(step, carry)`` with
``step(carry, x, y) -> carry``; a missing framework raises ImportError at the call."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from peers_jax import HEADS, HIDDEN, MLP_DIM, SHAPES, cross_entropy, optimizer


def _jax_step(apply_fn, params):
    opt = optimizer()

    @jax.jit
    def step(carry, x, y):
        params, opt_state = carry
        grads = jax.grad(lambda p: cross_entropy(apply_fn(p, x), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step, (params, opt.init(params))


# --- Flax Linen ---------------------------------------------------------------------------------

def make_linen(name, key, batch):
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.MultiHeadDotProductAttention(HEADS)(nn.LayerNorm()(x))
            x = x + h
            return x + nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(MLP_DIM)(nn.LayerNorm()(x))))

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            if name == "mlp":
                x = x.reshape(x.shape[0], -1)
                return nn.Dense(10)(nn.relu(nn.Dense(64)(nn.relu(nn.Dense(128)(x)))))
            if name == "cnn":
                for c in (32, 64):
                    x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3))(x)), (2, 2), (2, 2))
                return nn.Dense(10)(nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1))))
            if name == "lstm":
                return nn.Dense(10)(nn.RNN(nn.OptimizedLSTMCell(HIDDEN))(x)[:, -1])
            return nn.Dense(10)(Block()(x).mean(axis=1))

    model = Model()
    params = model.init(key, jnp.zeros((batch, *SHAPES[name])))
    return _jax_step(model.apply, params)


# --- Flax NNX -----------------------------------------------------------------------------------

def make_nnx(name, key, batch):
    from flax import nnx
    rngs = nnx.Rngs(0)
    d = SHAPES[name][-1]

    class Model(nnx.Module):
        def __init__(self):
            if name == "mlp":
                self.layers = nnx.List([nnx.Linear(784, 128, rngs=rngs), nnx.Linear(128, 64, rngs=rngs),
                                        nnx.Linear(64, 10, rngs=rngs)])
            elif name == "cnn":
                self.convs = nnx.List([nnx.Conv(1, 32, (3, 3), rngs=rngs), nnx.Conv(32, 64, (3, 3), rngs=rngs)])
                self.layers = nnx.List([nnx.Linear(7 * 7 * 64, 128, rngs=rngs), nnx.Linear(128, 10, rngs=rngs)])
            elif name == "lstm":
                self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(28, HIDDEN, rngs=rngs))
                self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)
            else:
                self.norms = nnx.List([nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)])
                self.attn = nnx.MultiHeadAttention(HEADS, d, decode=False, rngs=rngs)
                self.mlp = nnx.List([nnx.Linear(d, MLP_DIM, rngs=rngs), nnx.Linear(MLP_DIM, d, rngs=rngs)])
                self.out = nnx.Linear(d, 10, rngs=rngs)

        def __call__(self, x):
            if name == "mlp":
                x = nnx.relu(self.layers[0](x.reshape(x.shape[0], -1)))
                return self.layers[2](nnx.relu(self.layers[1](x)))
            if name == "cnn":
                for conv in self.convs:
                    x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), (2, 2))
                return self.layers[1](nnx.relu(self.layers[0](x.reshape(x.shape[0], -1))))
            if name == "lstm":
                return self.out(self.rnn(x)[:, -1])
            x = x + self.attn(self.norms[0](x))
            x = x + self.mlp[1](nnx.gelu(self.mlp[0](self.norms[1](x))))
            return self.out(x.mean(axis=1))

    model = Model()
    opt = nnx.Optimizer(model, optimizer(), wrt=nnx.Param)

    @nnx.jit
    def step(carry, x, y):
        model, opt = carry
        grads = nnx.grad(lambda m: cross_entropy(m(x), y))(model)
        opt.update(model, grads)
        return carry

    return step, (model, opt)


# --- Equinox ------------------------------------------------------------------------------------

def make_equinox(name, key, batch):
    import equinox as eqx
    k = iter(jax.random.split(key, 8))
    d = SHAPES[name][-1]

    class Model(eqx.Module):
        layers: list
        extra: list

        def __init__(self):
            if name == "mlp":
                self.layers = [eqx.nn.Linear(784, 128, key=next(k)), eqx.nn.Linear(128, 64, key=next(k)),
                               eqx.nn.Linear(64, 10, key=next(k))]
                self.extra = []
            elif name == "cnn":
                self.layers = [eqx.nn.Linear(7 * 7 * 64, 128, key=next(k)), eqx.nn.Linear(128, 10, key=next(k))]
                self.extra = [eqx.nn.Conv2d(1, 32, 3, padding=1, key=next(k)),
                              eqx.nn.Conv2d(32, 64, 3, padding=1, key=next(k))]
            elif name == "lstm":
                self.layers = [eqx.nn.Linear(HIDDEN, 10, key=next(k))]
                self.extra = [eqx.nn.LSTMCell(28, HIDDEN, key=next(k))]
            else:
                self.layers = [eqx.nn.Linear(d, MLP_DIM, key=next(k)), eqx.nn.Linear(MLP_DIM, d, key=next(k)),
                               eqx.nn.Linear(d, 10, key=next(k))]
                self.extra = [eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d),
                              eqx.nn.MultiheadAttention(HEADS, d, key=next(k))]

        def __call__(self, x):  # one example; vmapped over the batch
            if name == "mlp":
                x = jax.nn.relu(self.layers[0](x.reshape(-1)))
                return self.layers[2](jax.nn.relu(self.layers[1](x)))
            if name == "cnn":
                x = jnp.moveaxis(x, -1, 0)  # Equinox convs are channels-first
                for conv in self.extra:
                    x = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(conv(x)))
                return self.layers[1](jax.nn.relu(self.layers[0](x.reshape(-1))))
            if name == "lstm":
                cell = self.extra[0]
                (h, _), _ = jax.lax.scan(lambda c, x_t: (cell(x_t, c), None), (jnp.zeros(HIDDEN),) * 2, x)
                return self.layers[0](h)
            norm_0, norm_1, attn = self.extra
            h = jax.vmap(norm_0)(x)
            x = x + attn(h, h, h)
            x = x + jax.vmap(lambda t: self.layers[1](jax.nn.gelu(self.layers[0](norm_1(t)))))(x)
            return self.layers[2](x.mean(axis=0))

    model, opt = Model(), optimizer()

    @eqx.filter_jit
    def step(carry, x, y):
        model, opt_state = carry
        grads = eqx.filter_grad(lambda m: cross_entropy(jax.vmap(m)(x), y))(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    return step, (model, opt.init(eqx.filter(model, eqx.is_array)))


# --- PyTorch eager ------------------------------------------------------------------------------

def make_torch(name, key, batch, threads=2):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d = SHAPES[name][-1]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_0, self.norm_1 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, HEADS, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, MLP_DIM), nn.GELU(approximate="tanh"), nn.Linear(MLP_DIM, d))

        def forward(self, x):
            h = self.norm_0(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return (x + self.mlp(self.norm_1(x))).mean(dim=1)

    class LastStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(28, HIDDEN, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0][:, -1]

    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                              nn.Linear(64, 10))
    elif name == "cnn":
        model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10))
    elif name == "lstm":
        model = nn.Sequential(LastStep(), nn.Linear(HIDDEN, 10))
    else:
        model = nn.Sequential(Block(), nn.Linear(d, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(carry, x, y):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return carry

    def to_torch(x, y):  # channels-first for the CNN, as PyTorch users write it
        x = torch.from_numpy(np.asarray(x))
        return (x.permute(0, 3, 1, 2).contiguous() if name == "cnn" else x), torch.from_numpy(np.asarray(y)).long()

    return step, None, to_torch
