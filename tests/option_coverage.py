"""Lists options of public functions that no test passes by name (not collected by pytest).

For every public callable reachable from ``jnn.__all__`` (and the public submodules' ``__all__``),
each parameter with a default value is an option (callables
re-exported from jax or optax are theirs to test); it counts as exercised when some file under
tests/ or a doctest in jnn/ contains ``name=`` (for a NamedTuple, which jnn returns as a result,
also when a test reads ``.name``). What is printed is where to add a test that would
fail if the option were ignored.

    python tests/option_coverage.py            # the list, then a summary line
"""
from __future__ import annotations

import inspect
import pathlib
import re
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jnn  # noqa: E402


def public_callables():
    seen, todo = set(), [jnn]
    while todo:
        module = todo.pop()
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                if value.__name__.startswith("jnn"):
                    todo.append(value)
            elif callable(value) and getattr(value, "__module__", "").startswith("jnn"):
                yield f"{module.__name__}.{name}", value


def options(fn) -> list[str]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in ("name", "verbose", "progress")]


def main() -> int:
    corpus = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    corpus += "\n".join(line for p in (ROOT / "jnn").rglob("*.py") for line in p.read_text().splitlines()
                        if line.lstrip().startswith((">>>", "...")))
    missing, total = [], 0
    for qualified, fn in sorted(public_callables(), key=lambda t: t[0]):
        for option in options(fn):
            total += 1
            read = hasattr(fn, "_fields") and re.search(rf"\.{re.escape(option)}\b", corpus)   # a result's field
            if not read and not re.search(rf"\b{re.escape(option)}\s*=", corpus):
                missing.append(f"{qualified}({option}=)")
    print("\n".join(missing))
    print(f"{total - len(missing)} of {total} options are passed by name somewhere in the tests "
          f"or doctests; {len(missing)} are not.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
