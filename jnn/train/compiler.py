"""XLA compiler options of jnn's jitted steps: on CPU, convolutions by XLA rather than YNNPACK."""
from __future__ import annotations

import ctypes
import functools

import jax
import numpy as np

__all__ = ["compiler_options"]

_CPU = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
"""XLA's default YNNPACK fusions on CPU (dots, reductions, convolutions) without convolutions."""


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """Compiler options for ``jax.jit(..., compiler_options=...)`` on ``backend`` (default: JAX's);
    ``{}`` off CPU or where this jaxlib does not know the option. On CPU with glibc, also (once, for the
    process) keeps freed memory and serves blocks up to 1 GiB from the heap, so that XLA's per-step
    buffers are reused, not mapped and page-faulted afresh every step.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> layer = jnn.conv(4, (3, 3))
      >>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
      >>> apply = jax.jit(layer.apply, compiler_options=jnn.train.compiler_options())
      >>> apply(params, state, jnp.ones((2, 8, 8, 3)))[0].shape, jnn.train.compiler_options("gpu")
      ((2, 8, 8, 4), {})
    """
    if (backend or jax.default_backend()) != "cpu" or not _cpu_accepts():
        return {}
    _reuse_host_memory()
    return dict(_CPU)


@functools.cache
def _reuse_host_memory() -> bool:
    try:   # mallopt(M_TRIM_THRESHOLD, 1 GiB), mallopt(M_MMAP_THRESHOLD, 1 GiB); 1 on success
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-1, 1 << 30) and libc.mallopt(-3, 1 << 30))
    except (OSError, AttributeError):   # not glibc
        return False


def jit_outermost(fn):
    """``jax.jit(fn, compiler_options=compiler_options())``; plain ``jax.jit(fn)`` under an outer trace."""
    fast, plain = jax.jit(fn, compiler_options=compiler_options()), jax.jit(fn)

    def call(*args):
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))
        return (plain if traced else fast)(*args)

    call._cache_size = fast._cache_size   # what a no-recompile check reads
    return call


@functools.cache
def _cpu_accepts() -> bool:
    """Whether this jaxlib compiles with :data:`_CPU` (an experimental XLA option, which may change)."""
    try:
        jax.jit(lambda v: v + 1, compiler_options=_CPU)(jax.device_put(np.float32(0), jax.devices("cpu")[0]))
    except Exception:   # noqa: BLE001 - an unknown option or value: XLA raises its own error types
        return False
    return True
