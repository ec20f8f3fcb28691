"""Runs the Python code blocks of a Markdown page in order, in one namespace, the way a reader
would paste them, and checks that each prints what the page shows (used by tests/test_docs.py).

- A block preceded by ``<!-- requires: module -->`` runs only where that module can be imported
  (an optional framework, e.g. torch); :func:`run_page` returns the blocks it skipped.
- A ```text block right after a Python block is that block's printed output. The text must match
  exactly except for decimal numbers, which may differ by a relative 5% or by one unit of their
  last printed digit (training runs differ slightly between machines and XLA versions); integers
  (counts, shapes) must be equal. A ``<!-- tolerance: 0.3 -->`` line right before the ```text
  block sets a relative tolerance for every number of that block, integers included (for figures
  the compiler reports, such as FLOPs and temporary bytes); ``<!-- tolerance: any -->`` only
  requires that the block prints (for sampled text).
- Blocks may be indented (inside an admonition such as ``??? note "Solution"``): a fence indented
  by n spaces is read with n spaces removed from each line, and so is its ```text block.
- With ``update``, each such ```text block is rewritten with what its block printed, and each
  figure the page shows (``![...](path)``) that the blocks wrote into the working directory under
  its file name is copied to ``path``.

    JNN_UPDATE_DOCS=1 python -m pytest -n 0 tests/test_docs.py -k 07-cnn   # update a page (as tested)
    python tests/docs_blocks.py [--update] PAGE...                         # run pages by hand
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import pathlib
import re
import shutil
import sys

_BLOCK = re.compile(r"(?:^ *<!-- requires: ([\w.]+) -->\n)?^( *)```python\n(.*?)^\2```", re.MULTILINE | re.DOTALL)
_OUTPUT = re.compile(r"(?:[ \t]*\n)+(?: *<!-- tolerance: ([\w.]+) -->\n)? *```text\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.(?:png|svg|jpg))\)")


def python_blocks(page: pathlib.Path) -> list[tuple[str | None, str]]:
    """The ```python fenced blocks of ``page``, in order, each with the module it requires."""
    return [(required or None, _dedent(code, indent)) for required, indent, code in _BLOCK.findall(page.read_text())]


def _dedent(text: str, indent: str) -> str:
    return "".join(line[len(indent):] if line.startswith(indent) else line.lstrip(" ")
                   for line in text.splitlines(keepends=True))


def same_output(printed: str, shown: str, tolerance: str | None = None) -> bool:
    """Whether ``printed`` matches ``shown``: the same text, and numbers within a relative
    ``tolerance`` (given: every number; default: decimals within 0.05 or one unit of their last
    digit, integers equal); ``"any"``: anything non-empty."""
    if tolerance == "any":
        return bool(printed.strip())
    rtol = float(tolerance or 0.05)
    if _NUMBER.split(printed) != _NUMBER.split(shown):
        return False
    for got, want in zip(_NUMBER.findall(printed), _NUMBER.findall(shown)):
        mantissa, _, exponent = want.lower().partition("e")
        if "." not in mantissa and not exponent and tolerance is None:   # counts, shapes: exact
            if got != want:
                return False
            continue
        unit = 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))
        a, b = float(got.replace(",", "")), float(want.replace(",", ""))
        if not math.isclose(a, b, rel_tol=rtol, abs_tol=unit * 1.001):
            return False
    return True


def run_page(page: pathlib.Path, *, update: bool = False) -> list[str]:
    """Executes the Python blocks of ``page`` in order in one fresh namespace, in the current
    directory; returns the modules whose blocks were skipped because they are not installed.
    Raises ``AssertionError`` naming every block whose output differs from the page's (after
    running them all); with ``update``, rewrites those outputs and copies the figures instead."""
    text = page.read_text()
    namespace = {"__name__": "__main__"}
    skipped, pieces, last, drifted = [], [], 0, []
    for i, match in enumerate(_BLOCK.finditer(text)):
        required, indent, code = match.group(1), match.group(2), _dedent(match.group(3), match.group(2))
        if required and importlib.util.find_spec(required) is None:
            skipped.append(required)
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{page}[block {i + 1}]", "exec"), namespace)
        output = _OUTPUT.match(text, match.end())
        if output is None:
            sys.stdout.write(printed.getvalue())
            continue
        lines = "\n".join(line.rstrip() for line in printed.getvalue().rstrip("\n").split("\n")) + "\n"
        if update:
            pieces += [text[last:output.start(2)], "".join(indent + line if line.strip() else line
                                                            for line in lines.splitlines(keepends=True))]
            last = output.end(2)
        elif not same_output(lines, _dedent(output.group(2), indent), output.group(1)):
            drifted.append(f"block {i + 1} printed:\n{lines}the page shows:\n{output.group(2)}")
    if update:
        page.write_text("".join(pieces) + text[last:])
        for figure in _FIGURE.findall(text):
            if pathlib.Path(pathlib.Path(figure).name).exists():
                shutil.copyfile(pathlib.Path(figure).name, page.parent / figure)
    if not skipped:     # each figure the page shows is drawn by its own blocks, here and now
        drifted += [f"the figure {f} was not written by the page's blocks" for f in _FIGURE.findall(text)
                    if not pathlib.Path(pathlib.Path(f).name).exists()]
    assert not drifted, f"{page}: output differs from the page (JNN_UPDATE_DOCS=1 rewrites it):\n" + "\n".join(drifted)
    return skipped


if __name__ == "__main__":
    args = sys.argv[1:]
    update = "--update" in args
    for arg in (a for a in args if a != "--update"):
        print(f"== {arg}")
        print("skipped (not installed):", run_page(pathlib.Path(arg).resolve(), update=update) or "none")
