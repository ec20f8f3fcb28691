"""Weight initializers, by value or by name: ``jnn.dense(128, w_init="he_normal")``. From
``jax.nn.initializers`` as they are: ``glorot_uniform``, ``glorot_normal``, ``he_uniform``,
``he_normal``, ``lecun_uniform``, ``lecun_normal``, ``constant``; ``xavier_uniform`` and
``xavier_normal`` are the Glorot ones, ``kaiming_uniform`` and ``kaiming_normal`` the He ones."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "glorot_uniform", "glorot_normal", "xavier_uniform", "xavier_normal",
    "he_uniform", "he_normal", "kaiming_uniform", "kaiming_normal",
    "lecun_uniform", "lecun_normal", "zeros", "ones", "constant", "normal", "uniform", "get",
]

Initializer = Callable[..., jax.Array]
_inits = jax.nn.initializers

glorot_uniform, glorot_normal, constant = _inits.glorot_uniform, _inits.glorot_normal, _inits.constant
he_uniform, he_normal = _inits.he_uniform, _inits.he_normal
lecun_uniform, lecun_normal = _inits.lecun_uniform, _inits.lecun_normal
xavier_uniform, xavier_normal = glorot_uniform, glorot_normal
kaiming_uniform, kaiming_normal = he_uniform, he_normal


def zeros() -> Initializer:
    """All zeros.

    Example:
      >>> import jax, jnn
      >>> jnn.initializers.zeros()(jax.random.key(0), (2,)).tolist()
      [0.0, 0.0]
    """
    return _inits.zeros


def ones() -> Initializer:
    """All ones.

    Example:
      >>> import jax, jnn
      >>> jnn.initializers.ones()(jax.random.key(0), (2,)).tolist()
      [1.0, 1.0]
    """
    return _inits.ones


def normal(stddev: float = 1e-2) -> Initializer:
    """Normal with mean 0 and standard deviation ``stddev``.

    Example:
      >>> import jax, jnn
      >>> round(float(jnn.initializers.normal(0.5)(jax.random.key(0), (10_000,)).std()), 1)
      0.5
    """
    return _inits.normal(stddev)


def uniform(scale: float = 1e-2) -> Initializer:
    """Uniform on ``[0, scale)``.

    Example:
      >>> import jax, jnn
      >>> w = jnn.initializers.uniform(2.0)(jax.random.key(0), (1000,))
      >>> bool(w.min() >= 0.0), bool(w.max() < 2.0)
      (True, True)
    """
    return _inits.uniform(scale)


_BY_NAME = {name: globals()[name] for name in __all__ if name not in ("constant", "get")}


def get(spec: str | Initializer, *, where: str = "initializer") -> Initializer:
    """An initializer from a name (``"he_normal"``) or an initializer (returned as is).

    Example:
      >>> import jax, jnn
      >>> jnn.initializers.get("he_normal")(jax.random.key(0), (3, 4)).shape
      (3, 4)
    """
    if isinstance(spec, str):
        if spec not in _BY_NAME:
            raise ValueError(f"{where}: unknown initializer {spec!r}; expected one of {sorted(_BY_NAME)}")
        return _BY_NAME[spec]()
    if callable(spec):
        if spec in _BY_NAME.values():
            raise TypeError(f"{where}: got the factory {spec.__name__}; call it: {spec.__name__}()")
        return spec
    raise TypeError(f"{where}: expected an initializer or its name, got {type(spec).__name__}")


def param_dtype(dtype) -> jnp.dtype:
    """The dtype params take for an input of ``dtype``: float64 for float64 inputs, else float32."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)
