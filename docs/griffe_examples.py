"""A griffe extension for the API reference: jnn docstrings title their doctests ``Example:``
(optionally ``Example (what it shows):``); griffe's Google parser only knows ``Examples:``.
This rewrites those titles so the doctests render as code, not as Markdown text."""
from __future__ import annotations

import re

import griffe

_TITLE = re.compile(r"^(\s*)Examples?(?:\s*\((.*)\))?:\s*$", re.MULTILINE)


def _rewrite(match: re.Match) -> str:
    indent, what = match.group(1), match.group(2)
    return f"{indent}Examples:\n{indent}    {what[0].upper() + what[1:]}:" if what else f"{indent}Examples:"


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _TITLE.sub(_rewrite, obj.docstring.value)
