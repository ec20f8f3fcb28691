"""Weight-only int8: each selected weight ``w [..., n]`` becomes ``{"int8": q, "scale": s [n]}``
with ``q = round(w / s)`` in ``[-127, 127]`` and ``s = max|w[..., j]| / 127`` per output channel
(symmetric), so ``|q * s - w| <= s / 2``. :func:`wrap` runs a model on such params (dequantized
inside the compiled program); ``jnn.export.export_model`` of the wrapped model stores int8 weights.

Example:
  >>> import jax, jax.numpy as jnp, jnn
  >>> model = jnn.serial(jnn.dense(16), jnn.relu(), jnn.dense(2))
  >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 8)))
  >>> qparams = jnn.quantize.quantize(params)
  >>> qparams["dense_0"]["w"]["int8"].dtype, jnn.quantize.nbytes(params), jnn.quantize.nbytes(qparams)
  (dtype('int8'), 712, 304)
  >>> y, _ = jnn.quantize.wrap(model).apply(qparams, state, jnp.ones((1, 8)))
  >>> bool(jnp.allclose(y, model.apply(params, state, jnp.ones((1, 8)))[0], atol=0.05))
  True
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn import tree
from jnn.core import Layer

__all__ = ["quantize", "dequantize", "wrap", "nbytes"]


def _is_quantized(node) -> bool:
    return isinstance(node, dict) and set(node) == {"int8", "scale"}


def quantize(params, include="w", exclude=()):
    """``params`` with each weight of rank >= 2 whose path matches ``include`` and not ``exclude``
    (:mod:`jnn.tree` patterns) replaced by ``{"int8": int8 array, "scale": float [n]}``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> q = jnn.quantize.quantize({"w": jnp.array([[1.0, -0.5], [-2.0, 0.25]])})
      >>> q["w"]["int8"].tolist(), q["w"]["scale"].tolist()
      ([[64, -127], [-127, 64]], [0.015748031437397003, 0.003937007859349251])
    """
    where = "jnn.quantize.quantize"
    include, exclude = tree.check_patterns(where, "include", include), tree.check_patterns(where, "exclude", exclude)

    def one(path, w):
        path = tree.path_str(path)
        if jnp.ndim(w) < 2 or not tree.matches(path, include) or tree.matches(path, exclude):
            return w
        checks.require(jnp.issubdtype(w.dtype, jnp.floating), where, f"{path} is {w.dtype}, not a float weight")
        scale = jnp.max(jnp.abs(w).reshape(-1, w.shape[-1]), axis=0) / 127
        safe = jnp.where(scale > 0, scale, 1)
        return {"int8": jnp.clip(jnp.round(w / safe), -127, 127).astype(jnp.int8), "scale": scale.astype(w.dtype)}

    return jax.tree_util.tree_map_with_path(one, params)


def dequantize(qparams):
    """The float params back: ``int8 * scale`` for every quantized weight.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.quantize.dequantize({"w": {"int8": jnp.array([[2, -127]], jnp.int8), "scale": jnp.array([0.5, 0.01])}})["w"].tolist()
      [[1.0, -1.2699999809265137]]
    """
    return jax.tree_util.tree_map(lambda n: n["int8"].astype(n["scale"].dtype) * n["scale"] if _is_quantized(n) else n,
                                  qparams, is_leaf=_is_quantized)


def wrap(model: Layer) -> Layer:
    """``model`` taking quantized params (:func:`quantize`); ``init`` gives the quantized init.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> qmodel = jnn.quantize.wrap(jnn.conv(4, (3, 3)))
      >>> qparams, state = qmodel.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))
      >>> qparams["w"]["int8"].shape, qparams["w"]["scale"].shape
      ((3, 3, 2, 4), (4,))
    """
    checks.jnn_layer("jnn.quantize.wrap", "model", model)

    def init(key, example):
        params, state = model.init(key, example)
        return quantize(params), state

    def apply(qparams, state, x, **keywords):
        return model.apply(dequantize(qparams), state, x, **keywords)

    return Layer(init, apply, "int8", keywords=model.keywords, config={"model": model.label})


def nbytes(tree) -> int:
    """Total bytes of a tree's arrays.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.quantize.nbytes({"w": jnp.zeros((4, 4), jnp.int8), "s": jnp.zeros(4)})
      32
    """
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(tree))
