"""Test configuration: real data from ../shared/data.

Strict dtype promotion (as in equinox's test suite) is applied to the layer tests in
test_registry.py, so silent dtype mixing in a layer fails there; it is not global
because optax itself relies on standard promotion.
"""
import atexit
import gc
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

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

# Many tests compile the same programs (the same small model fitted, the same layer checked) from
# new function objects, which JAX's in-memory caches, keyed on the function, compile again. A
# compilation cache on disk, keyed on the program's HLO, the compile options (the optimization
# level among them) and XLA_FLAGS, compiles each once per run: one directory for this run, made
# here and removed at exit, which the two workers and the subprocesses share through the
# environment (the suite 391 -> 355 s). Set JAX_COMPILATION_CACHE_DIR to use a cache of your own.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jnn-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after the environment is set, for a jax imported here first)

jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# Scripts run as subprocesses by the tests (or by hand), not test modules: keep --doctest-modules
# from importing them.
collect_ignore = ["parallel_devices.py", "parallel_processes.py", "mutation.py", "option_coverage.py"]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """An xdist worker ends here without the interpreter's teardown. It has sent its results and
    its "workerfinished" to the controller (in pytest_sessionfinish); what remains is joining the
    threads left behind and JAX's exit handler freeing thousands of compiled programs one by one,
    ~10 s of both workers' time at the end of the suite, on the wall clock. The controller and
    ``-n 0`` runs end normally."""
    if hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
