"""Makes ``experiments/`` importable from the tests (the scripts import their ``common`` module)."""
import importlib
import pathlib
import sys

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))


def load(name: str):
    return importlib.import_module(name)
