"""Runs the Python code blocks of a Markdown page in order, in one namespace, the way a reader
would paste them (used by tests/test_docs.py; also runnable: ``python tests/docs_blocks.py PAGE``).

A block preceded by ``<!-- requires: module -->`` runs only where that module can be imported
(an optional framework, e.g. torch); :func:`run_page` returns the blocks it skipped."""
from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

_BLOCK = re.compile(r"(?:<!-- requires: ([\w.]+) -->\n)?^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: pathlib.Path) -> list[tuple[str | None, str]]:
    """The ```python fenced blocks of ``page``, in order, each with the module it requires."""
    return [(required or None, code) for required, code in _BLOCK.findall(page.read_text())]


def run_page(page: pathlib.Path) -> list[str]:
    """Executes the Python blocks of ``page`` in order in one fresh namespace; returns the
    modules whose blocks were skipped because they are not installed."""
    namespace = {"__name__": "__main__"}
    skipped = []
    for i, (required, code) in enumerate(python_blocks(page)):
        if required and importlib.util.find_spec(required) is None:
            skipped.append(required)
            continue
        exec(compile(code, f"{page}[block {i + 1}]", "exec"), namespace)
    return skipped


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"== {arg}")
        print("skipped (not installed):", run_page(pathlib.Path(arg)) or "none")
