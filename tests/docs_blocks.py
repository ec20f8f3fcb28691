"""Runs the Python code blocks of a Markdown page in order, in one namespace, the way a reader
would paste them (used by tests/test_docs.py).

A block preceded by ``<!-- requires: module -->`` runs only where that module can be imported
(an optional framework, e.g. torch); :func:`run_page` returns the blocks it skipped.

    python tests/docs_blocks.py PAGE...            # run the pages
    python tests/docs_blocks.py --update PAGE...   # run them and rewrite each ```text block that
                                                   # follows a Python block with what it printed
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import pathlib
import re
import sys

_BLOCK = re.compile(r"(?:<!-- requires: ([\w.]+) -->\n)?^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_OUTPUT = re.compile(r"[ \t]*\n+```text\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: pathlib.Path) -> list[tuple[str | None, str]]:
    """The ```python fenced blocks of ``page``, in order, each with the module it requires."""
    return [(required or None, code) for required, code in _BLOCK.findall(page.read_text())]


def run_page(page: pathlib.Path, *, update: bool = False) -> list[str]:
    """Executes the Python blocks of ``page`` in order in one fresh namespace; returns the
    modules whose blocks were skipped because they are not installed. With ``update``, each
    ```text block right after a Python block is replaced by what that block printed."""
    text = page.read_text()
    namespace = {"__name__": "__main__"}
    skipped, pieces, last = [], [], 0
    for i, match in enumerate(_BLOCK.finditer(text)):
        required, code = match.group(1), match.group(2)
        if required and importlib.util.find_spec(required) is None:
            skipped.append(required)
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed) if update else contextlib.nullcontext():
            exec(compile(code, f"{page}[block {i + 1}]", "exec"), namespace)
        output = _OUTPUT.match(text, match.end())
        if update and output:
            lines = "\n".join(line.rstrip() for line in printed.getvalue().rstrip("\n").split("\n"))
            pieces += [text[last:output.start(1)], lines + "\n"]
            last = output.end(1)
    if update:
        page.write_text("".join(pieces) + text[last:])
    return skipped


if __name__ == "__main__":
    args = sys.argv[1:]
    update = "--update" in args
    for arg in (a for a in args if a != "--update"):
        print(f"== {arg}")
        print("skipped (not installed):", run_page(pathlib.Path(arg), update=update) or "none")
