"""Test configuration: real data from ../shared/data.

Strict dtype promotion (as in equinox's test suite) is applied to the layer tests in
test_registry.py, so silent dtype mixing in a layer fails there; it is not global
because optax itself relies on standard promotion.
"""
import os
import pathlib

_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("JNN_DATA_DIR", str(_SHARED))

# Scripts run as subprocesses by the tests (or by hand), not test modules: keep --doctest-modules
# from importing them.
collect_ignore = ["parallel_devices.py", "parallel_processes.py", "mutation.py", "option_coverage.py"]
