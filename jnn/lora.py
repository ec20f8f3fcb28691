"""LoRA: low-rank adapters over a trained model's weights, ``w + (alpha / rank) * a @ b``.

:func:`wrap` returns a :class:`jnn.Layer` whose params are the adapters alone, nested like the
base: ``{..., "w": {"a": [m, rank], "b": [rank, n]}}`` for each selected weight ``[..., n]`` (``m``
= the product of its other axes: dense, conv and attention weights alike). The frozen base stays
out of the params, so ``fit``, the optimizer (state for the adapters only, no ``freeze`` needed),
``jnn.io.save_params`` and sharding rules see the adapters and nothing else. Where the base lives:
``frozen="state"`` (default) puts it in the layer's state, ``{"base", "model"}``, an input of the
compiled step; ``frozen="closure"`` closes over it, so it becomes constants of the compiled program
(fine for small models) and one base serves every member of ``fit_population``. ``b`` starts at
zero: the wrapped model starts equal to the base.

Example:
  >>> import jax, jax.numpy as jnp, jnn
  >>> model = jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(2))
  >>> base, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  >>> adapted = jnn.lora.wrap(model, base, rank=2)
  >>> adapters, lora_state = adapted.init(jax.random.key(1), jnp.zeros((1, 4)))
  >>> jax.tree_util.tree_map(jnp.shape, adapters["dense_1"]), sorted(lora_state)
  ({'w': {'a': (8, 2), 'b': (2, 2)}}, ['base', 'model'])
  >>> x = jnp.ones((3, 4))
  >>> bool(jnp.allclose(adapted.apply(adapters, lora_state, x)[0], model.apply(base, state, x)[0]))
  True
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn import io, tree
from jnn.core import Layer

__all__ = ["wrap", "merge"]


def _targets(where: str, base, include, exclude) -> dict[str, tuple[int, int]]:
    """``{path: (m, n)}`` of the selected weights (rank >= 2)."""
    include, exclude = tree.check_patterns(where, "include", include), tree.check_patterns(where, "exclude", exclude)
    found = {path: (math.prod(leaf.shape[:-1]), leaf.shape[-1]) for path, leaf in tree.leaves_with_paths(base)
             if tree.matches(path, include) and not tree.matches(path, exclude) and jnp.ndim(leaf) >= 2}
    checks.require(found, where, f"include={include} exclude={exclude} select no weight of rank >= 2")
    return found


@checks.declare(rank=checks.positive_int, alpha=checks.optional(checks.finite_number),
                frozen=checks.one_of("state", "closure"))
def wrap(model: Layer, params, state=None, *, rank: int = 8, alpha: float | None = None,
         include="w", exclude=(), frozen: str = "state") -> Layer:
    """``model`` with frozen ``params`` and trainable rank-``rank`` adapters on the weights whose
    paths match ``include`` and not ``exclude`` (:mod:`jnn.tree` patterns; default: every ``w``).

    Args:
      model, params: the base network and its trained params (never updated).
      state: the base's state (batch-norm statistics); ``None``: what ``model.init`` gives.
      rank: the adapters' rank; alpha: the update's scale is ``alpha / rank`` (default ``rank``: 1).
      frozen: ``"state"``: the layer's state is ``{"base": params, "model": state}``;
        ``"closure"``: the base is closed over and the state is the model's.

    Returns:
      A Layer: ``init`` draws ``a`` (normal, std ``1/sqrt(m)``) with ``b = 0``; ``apply`` runs
      ``model`` on the merged weights (:func:`merge`).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> model = jnn.serial(jnn.dense(8), jnn.tanh(), jnn.dense(1))
      >>> base, _ = model.init(jax.random.key(0), x)
      >>> adapted = jnn.lora.wrap(model, base, rank=1, include="dense_1/w")
      >>> result = jnn.train.fit(adapted, jnn.losses.binary_cross_entropy_with_logits, optax.adam(0.1),
      ...                        (x, y), key=jax.random.key(1), epochs=3, verbose=0)
      >>> jax.tree_util.tree_map(jnp.shape, result.train_state.params)            # all that trained
      {'dense_1': {'w': {'a': (8, 1), 'b': (1, 1)}}}
    """
    targets, scale = _targets("jnn.lora.wrap", params, include, exclude), (rank if alpha is None else alpha) / rank
    in_state = frozen == "state"

    def init(key, example):
        keys = dict(zip(targets, jax.random.split(key, len(targets))))
        adapters = io.unflatten({f"{path}/{ab}": value for path, (m, n) in targets.items() for ab, value in (
            ("a", jax.random.normal(keys[path], (m, rank)) / math.sqrt(m)), ("b", jnp.zeros((rank, n))))})
        model_state = model.init(key, example)[1] if state is None else state
        return adapters, {"base": params, "model": model_state} if in_state else model_state

    def merged(adapters, base=params):
        ab = dict(tree.leaves_with_paths(adapters))
        one = lambda p, w: w if p not in targets else w + (scale * ab[p + "/a"] @ ab[p + "/b"]).reshape(
            w.shape).astype(w.dtype)
        return jax.tree_util.tree_map_with_path(lambda p, w: one(tree.path_str(p), w), base)

    def apply(adapters, state, x, **keywords):
        if not in_state:
            return model.apply(merged(adapters), state, x, **keywords)
        y, new = model.apply(merged(adapters, state["base"]), state["model"], x, **keywords)
        return y, {"base": state["base"], "model": new}

    return Layer(init, apply, "lora", keywords=model.keywords, methods={"merge": merged},
                 config={"model": model.label, "rank": rank, "alpha": alpha, "include": include, "exclude": exclude,
                         "frozen": frozen})


def merge(adapted: Layer, adapters):
    """The base model's params with the adapters added in (inference runs at the base's cost; with
    ``frozen="state"`` the model's own state is ``state["model"]``).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.dense(2)
      >>> base, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> adapted = jnn.lora.wrap(model, base, rank=1)
      >>> adapters = {"w": {"a": jnp.ones((3, 1)), "b": jnp.ones((1, 2))}}
      >>> (jnn.lora.merge(adapted, adapters)["w"] - base["w"]).tolist()
      [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    checks.require(isinstance(adapted, Layer) and adapted.kind == "lora", "jnn.lora.merge",
                   f"needs a layer made by jnn.lora.wrap, got {getattr(adapted, 'kind', type(adapted).__name__)!r}")
    return adapted.methods["merge"](adapters)
