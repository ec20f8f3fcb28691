"""The layer registry: every layer jnn ships, with an input to try it on.

Each module in ``tests/cases/`` defines ``CASES``, a list of :class:`Case`; ``test_registry.py``
runs the public conformance kit, :func:`jnn.testing.check_layer`, over all of them (as haiku's
descriptors do), so users' layers get exactly the checks the built-in ones pass.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jnn


@dataclasses.dataclass(frozen=True)
class Case:
    """A layer to test.

    Attributes:
      name: test id.
      make: builds the layer.
      shape: batched input shape.
      dtype: input dtype (integer inputs get values in ``[0, int_high)``).
      int_high: exclusive upper bound of integer inputs.
      train: apply with ``train=True`` (with a fixed key, so it is deterministic).
      stochastic: draws random numbers in training: another key must give another output.
      batch_independent: an example's output does not depend on the rest of the batch,
        so ``vmap`` over examples equals the batched call.
      grad_modes: modes for ``check_grads`` (``("fwd", "rev")``; drop ``fwd`` where a
        primitive has no JVP).
      input_grads: check gradients with respect to the input too (not for integer inputs).
      grad_order: highest derivative order checked against finite differences. Composites of
        blocks that have their own case (transformer blocks, stacks, whole nets) check order 1:
        their second derivatives follow by the chain rule from the blocks' checked ones, and
        each costs tens of seconds to compile.
      atol: tolerance for the float32 comparisons (jit vs eager, vmap vs batch).
      make_input: optional custom input generator ``(rng: np.random.Generator, dtype) -> array``.
      reference: the layer's output written independently in NumPy float64,
        ``(params, state, x) -> y`` over NumPy arrays (``train`` as above); test_registry.py
        compares the float64 layer with it at every parameter drawn at random.
    """

    name: str
    make: Callable[[], jnn.Layer]
    shape: tuple[int, ...]
    dtype: type = np.float32
    int_high: int = 10
    train: bool = False
    stochastic: bool = False
    batch_independent: bool = True
    grad_modes: tuple[str, ...] = ("fwd", "rev")
    input_grads: bool = True
    grad_order: int = 2
    atol: float = 1e-5
    make_input: Callable | None = None
    reference: Callable | None = None

    def input(self, seed: int = 0, dtype=None):
        rng = np.random.default_rng(seed)
        dtype = dtype or self.dtype
        if self.make_input is not None:
            return jnp.asarray(self.make_input(rng, dtype))
        if np.issubdtype(dtype, np.integer):
            return jnp.asarray(rng.integers(0, self.int_high, self.shape).astype(dtype))
        # Values away from 0 keep finite differences off the kinks of relu/step.
        x = rng.normal(size=self.shape)
        x = np.where(np.abs(x) < 0.05, x + np.sign(x + 1e-12) * 0.1, x)
        return jnp.asarray(x.astype(dtype))


def all_cases() -> list[Case]:
    cases = []
    for path in sorted((pathlib.Path(__file__).parent / "cases").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"jnn_cases_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cases.extend(getattr(module, "CASES", []))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), f"duplicate case names in tests/cases: {names}"
    return cases


CASES = all_cases()
KEY = jax.random.key(0)
APPLY_KEY = jax.random.key(1)
