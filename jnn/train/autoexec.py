"""The population epoch's execution (chunk size, shared order) chosen by timing :data:`ROUNDS` epochs
of each candidate in turn; the quickest is kept in :data:`CHOICES` for the same program and shapes."""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax

__all__ = ["Execution", "AutoEpoch", "candidates", "CHOICES", "ROUNDS"]

#: Timed epochs per candidate (rounds over all candidates, in turn).
ROUNDS = 2


class Execution(NamedTuple):
    """One way to run the population epoch."""

    chunk_size: int | None  # members vectorized together (None: all)
    shared_order: bool      # one batch order for all members


def candidates(n: int, chunk_size, shared_order) -> list[Execution]:
    """The executions to measure: ``chunk_size="auto"``: all members (and chunks of 8 and 1 for ``n > 8``);
    ``shared_order="auto"``: both orders.

    Example:
      >>> from jnn.train.autoexec import candidates
      >>> [tuple(e) for e in candidates(16, "auto", False)]
      [(None, False), (8, False), (1, False)]
    """
    chunks = ([None, 8, 1] if n > 8 else [None]) if chunk_size == "auto" else [chunk_size]
    orders = [False, True] if shared_order == "auto" else [shared_order]
    return [Execution(c, s) for s in orders for c in chunks]


CHOICES: dict = {}  # (program, argument signature, options) -> (Execution, compiled epoch, {Execution: quickest seconds})
_MEASURING: dict = {}  # the same keys -> ({Execution: [seconds]}, {Execution: compiled}) while measuring


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(a.shape), str(a.dtype)) for a in leaves)


class AutoEpoch:
    """``epoch(hparams, states, active, data, shared_order_fn) -> (states, logs, execution)`` over
    ``jitted_epoch(program, ...)``, measuring ``options`` (chunk sizes, orders) in turn."""

    def __init__(self, jitted_epoch: Callable, program, options: list[Execution]):
        self.jitted_epoch, self.program, self.options = jitted_epoch, program, list(options)

    def __call__(self, hparams, states, active, data, shared_order_fn: Callable[[], jax.Array]):
        def args_for(option):
            return hparams, states, active, data, shared_order_fn() if option.shared_order else None

        key = (self.program._replace(chunk_size=None), _signature((hparams, states, active, data)),
               tuple(self.options))
        if key in CHOICES:
            option, compiled, _ = CHOICES[key]
            return (*compiled(*args_for(option)), option)
        timings, executables = _MEASURING.setdefault(key, ({}, {}))  # a shorter run resumes here
        measured = sum(len(seconds) for seconds in timings.values())
        option = self.options[measured % len(self.options)]
        args = args_for(option)
        if option not in executables:
            program = self.program._replace(chunk_size=option.chunk_size)
            executables[option] = self.jitted_epoch.lower(program, *args).compile()
        start = time.perf_counter()
        new_states, logs = jax.block_until_ready(executables[option](*args))
        timings.setdefault(option, []).append(time.perf_counter() - start)
        if measured + 1 == ROUNDS * len(self.options):
            quickest = {o: min(seconds) for o, seconds in timings.items()}
            best = min(quickest, key=quickest.get)
            CHOICES[key] = (best, executables[best], quickest)
            del _MEASURING[key]
        return new_states, logs, option
