"""``remat``: recompute a layer's activations in the backward pass (``jax.checkpoint``); :data:`POLICIES`
save ``"nothing"``, ``"dots"``, ``"dots_no_batch"``, ``"offload"`` (to pinned host) or ``"everything"``."""
from __future__ import annotations

import jax

from jnn import _checks as checks
from jnn.core import Layer

__all__ = ["remat", "POLICIES"]

POLICIES = ("nothing", "dots", "dots_no_batch", "offload", "everything")


def _policy(label: str, policy: str):
    cp = jax.checkpoint_policies
    if policy == "offload":
        memories = {m.kind for m in jax.devices()[0].addressable_memories()}
        checks.require("pinned_host" in memories, label, f"policy='offload' needs a backend with pinned host "
                       f"memory; {jax.default_backend()} has memory kinds {sorted(memories)} (use 'nothing' or "
                       f"'dots_no_batch' here)")
        return cp.offload_dot_with_no_batch_dims("device", "pinned_host")
    return {"nothing": cp.nothing_saveable, "dots": cp.dots_saveable,
            "dots_no_batch": cp.dots_with_no_batch_dims_saveable,
            "everything": cp.everything_saveable}[policy]


@checks.declare(layer=checks.jnn_layer, policy=checks.one_of(*POLICIES))
def remat(layer: Layer, *, policy: str = "nothing", name: str | None = None) -> Layer:
    """``layer`` (same kind, params and outputs) with its ``apply`` under ``jax.checkpoint``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.remat(jnn.serial(jnn.dense(8), jnn.relu()), policy="dots")
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 8)))
      >>> block.kind, jax.grad(lambda p: block.apply(p, state, jnp.ones((2, 8)))[0].sum())(params)["dense_0"]["w"].shape
      ('serial', (8, 8))
    """
    checkpoint_policy = _policy(name or layer.label, policy)

    def apply(params, state, x, *, key=None, train=False, **keywords):
        def run(params, state, x, key, keywords):
            return layer.apply(params, state, x, key=key, train=train, **keywords)

        return jax.checkpoint(run, policy=checkpoint_policy)(params, state, x, key, keywords)

    return Layer(layer.init, apply, layer.kind, name if name is not None else layer.name, layer.keywords,
                 layer.children, methods=layer.methods)
