"""Test configuration: real data from ../shared/data.

Strict dtype promotion (as in equinox's test suite) is applied to the layer tests in
test_registry.py, so silent dtype mixing in a layer fails there; it is not global
because optax itself relies on standard promotion.
"""
import gc
import os
import pathlib

_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("JNN_DATA_DIR", str(_SHARED))

# Most tests compile a program and run it a few times on small inputs, so XLA's optimization
# passes cost more than they save: at backend optimization level 0 the suite takes about half
# the time (benchmarks/RESULTS.md, "Test suite time"). The programs compute the same functions; the
# tests compare values with tolerances. Subprocesses (multi-device and multi-process tests,
# experiment scripts) inherit the setting. JAX_DISABLE_MOST_OPTIMIZATIONS=0 tests the optimized
# programs instead.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# For the same reason, XLA CPU's older loop emitters instead of its newer MLIR fusion emitters,
# which compile about twice as slowly (check_layer on three registry cases: 44 -> 24 s). Set
# XLA_FLAGS=--xla_cpu_use_fusion_emitters=true to test with them; subprocesses inherit XLA_FLAGS.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

# Tracing and compiling allocate millions of short-lived Python objects, and a worker holds
# gigabytes of compiled programs and jaxprs, so Python's default collection thresholds (700, 10,
# 10) ran ~8,000 collections per worker over the suite, 12 s of each worker's time; at (20000,
# 20, 100), ~150 collections, 2.5 s (the suite 348 -> 336 s, same peak memory).
gc.set_threshold(20000, 20, 100)

import jax  # noqa: E402  (after the environment is set, for a jax imported here first)

jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1")

# Scripts run as subprocesses by the tests (or by hand), not test modules: keep --doctest-modules
# from importing them.
collect_ignore = ["parallel_devices.py", "parallel_processes.py", "mutation.py", "option_coverage.py"]
