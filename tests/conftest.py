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


def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` (see pyproject.toml), tests are spread over the workers one by
    one, so no single long file holds up the run; a file's tests that share a module-scoped
    fixture (a trained model, a subprocess run) stay on one worker so it is built once."""
    import pytest

    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d[-1].scope == "module" for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
