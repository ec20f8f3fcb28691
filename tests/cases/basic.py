"""Registry cases: dense, shape plumbing, activations and the combinators, each with its NumPy
float64 reference."""
import numpy as np
from registry import Case
from scipy.special import erf

import jnn


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _dense(p, x):
    return x @ p["w"] + p["b"]


CASES = [
    Case("dense", lambda: jnn.dense(3), (4, 5), reference=lambda p, s, x: _dense(p, x)),
    Case("dense_no_bias", lambda: jnn.dense(2, use_bias=False, w_init="he_uniform"), (3, 4),
         reference=lambda p, s, x: x @ p["w"]),
    Case("dense_3d_input", lambda: jnn.dense(3), (2, 3, 4), reference=lambda p, s, x: _dense(p, x)),
    Case("flatten", lambda: jnn.flatten(), (2, 3, 4), reference=lambda p, s, x: x.reshape(len(x), -1)),
    Case("reshape", lambda: jnn.reshape((2, -1)), (3, 8), reference=lambda p, s, x: x.reshape(len(x), 2, 4)),
    Case("identity", lambda: jnn.identity(), (2, 3), reference=lambda p, s, x: x),
    Case("step", lambda: jnn.step(), (3, 4), reference=lambda p, s, x: (x >= 0).astype(np.float64)),
    Case("sigmoid", lambda: jnn.sigmoid(), (3, 4), reference=lambda p, s, x: _sigmoid(x)),
    Case("tanh", lambda: jnn.tanh(), (3, 4), reference=lambda p, s, x: np.tanh(x)),
    Case("relu", lambda: jnn.relu(), (3, 4), reference=lambda p, s, x: np.maximum(x, 0)),
    Case("leaky_relu", lambda: jnn.leaky_relu(0.1), (3, 4), reference=lambda p, s, x: np.where(x >= 0, x, 0.1 * x)),
    Case("elu", lambda: jnn.elu(), (3, 4), reference=lambda p, s, x: np.where(x > 0, x, np.expm1(x))),
    Case("gelu", lambda: jnn.gelu(), (3, 4), reference=lambda p, s, x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    Case("gelu_tanh", lambda: jnn.gelu(approximate=True), (3, 4),
         reference=lambda p, s, x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    Case("softplus", lambda: jnn.softplus(), (3, 4), reference=lambda p, s, x: np.log1p(np.exp(x))),
    Case("silu", lambda: jnn.silu(), (3, 4), reference=lambda p, s, x: x * _sigmoid(x)),
    Case("softmax", lambda: jnn.softmax(), (3, 4), reference=lambda p, s, x: _softmax(x)),
    Case("log_softmax", lambda: jnn.log_softmax(), (3, 4), reference=lambda p, s, x: np.log(_softmax(x))),
    Case("serial_mlp", lambda: jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(2)), (3, 5),
         reference=lambda p, s, x: _dense(p["dense_1"], np.tanh(_dense(p["dense_0"], x)))),
    Case("fan_out_concat", lambda: jnn.fan_out(jnn.dense(2), jnn.dense(3), merge="concat"), (3, 4),
         reference=lambda p, s, x: np.concatenate([_dense(p["dense_0"], x), _dense(p["dense_1"], x)], -1)),
    Case("residual", lambda: jnn.residual(jnn.dense(4), jnn.sigmoid()), (3, 4),
         reference=lambda p, s, x: x + _sigmoid(_dense(p["serial_0"]["dense_0"], x))),
    Case("named_serial", lambda: jnn.serial(jnn.named("hidden", jnn.dense(3)), jnn.dense(1)), (2, 3),
         reference=lambda p, s, x: _dense(p["dense_0"], _dense(p["hidden"], x))),
]
