"""Timing helpers for the benchmarks: interleaved repetitions, medians after warm-up."""
from __future__ import annotations

import platform
import statistics
import time

import jax

__all__ = ["time_interleaved", "machine", "block"]


def block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def time_interleaved(fns: dict, *, repeats: int = 15, warmup: int = 2, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each zero-argument function, calls interleaved so that
    machine noise hits every contender alike. Each function must block on its result.
    ``clock=time.process_time`` counts this process's CPU time instead (steadier on a loaded
    machine when every contender runs on one thread)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def machine() -> str:
    import jaxlib
    import optax
    device = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {jax.device_count()} x {device.device_kind} "
            f"({device.platform}), python {platform.python_version()}, jax {jax.__version__}, "
            f"jaxlib {jaxlib.__version__}, optax {optax.__version__}")
