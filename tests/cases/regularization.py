"""Registry cases: dropout, spatial_dropout and the normalization layers; the deterministic ones
with NumPy references from test_norm (the dropout masks are checked in test_dropout.py)."""
import jax.numpy as jnp
from registry import Case
from test_norm import np_batch_norm, np_group_norm, np_layer_norm, np_rms_norm

import jnn
from jnn.layers.dropout import dropout, spatial_dropout
from jnn.layers.norm import batch_norm, group_norm, layer_norm, rms_norm


def _with_running_stats(layer: jnn.Layer) -> jnn.Layer:
    """``layer`` (a batch_norm) whose running statistics start away from (0, 1), for eval cases."""

    def init(key, example):
        params, state = layer.init(key, example)
        n = state["mean"].size
        mean = jnp.linspace(-0.5, 0.5, n, dtype=state["mean"].dtype).reshape(state["mean"].shape)
        var = jnp.linspace(0.5, 2.0, n, dtype=state["var"].dtype).reshape(state["var"].shape)
        return params, {"mean": mean, "var": var}

    return layer._replace(init=init)


CASES = [
    # train=True with the registry's fixed key: deterministic, but the mask depends on the call's
    # shape, so one example alone does not get the rows of the batched call's mask
    Case("dropout_train", lambda: dropout(0.5), (3, 4), train=True, stochastic=True, batch_independent=False),
    Case("dropout_eval", lambda: dropout(0.5), (3, 4), reference=lambda p, s, x: x),
    Case("spatial_dropout_train", lambda: spatial_dropout(0.5), (2, 3, 4), train=True, stochastic=True,
         batch_independent=False),
    Case("batch_norm_train", lambda: batch_norm(momentum=0.9), (4, 3), train=True, batch_independent=False,
         reference=lambda p, s, x: np_batch_norm(x, p["scale"], p["offset"], s["mean"], s["var"], train=True,
                                                 momentum=0.9, eps=1e-5)[0]),
    Case("batch_norm_eval", lambda: _with_running_stats(batch_norm()), (3, 4),
         reference=lambda p, s, x: np_batch_norm(x, p["scale"], p["offset"], s["mean"], s["var"], train=False,
                                                 momentum=0.99, eps=1e-5)[0]),
    Case("layer_norm", lambda: layer_norm(), (3, 4),
         reference=lambda p, s, x: np_layer_norm(x, p["scale"], p["offset"], 1e-5)),
    Case("rms_norm", lambda: rms_norm(), (3, 4), reference=lambda p, s, x: np_rms_norm(x, p["scale"], 1e-6)),
    Case("group_norm", lambda: group_norm(2), (2, 2, 2, 4),
         reference=lambda p, s, x: np_group_norm(x, 2, p["scale"], p["offset"], 1e-5)),
]
