"""A griffe extension that turns jnn's reST-flavoured docstrings into what mkdocstrings renders
(used by mkdocs.yml; kept outside ``docs/`` so it is not published):

- Sphinx roles (``:func:`x```, ``:class:`~jnn.a.B```, ``:mod:``, ``:meth:``, ``:attr:``,
  ``:data:``, ...) become code spans linked to the object's API entry (an optional autorefs
  reference: a name that is not rendered anywhere stays a plain code span);
- ``Example:`` and ``Example (what it shows):`` become griffe's ``Examples:`` section, the title
  as its first line;
- a reST literal block (a line ending ``::`` and an indented block) becomes a fenced code block.
"""
from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|mod|meth|attr|data|obj|exc|const|ref):`([!~]?)([^`<]+?)\s*(?:<([^`>]+)>)?`")
_TITLE = re.compile(r"^([ \t]*)Examples?(?:[ \t]*\((.*)\))?:[ \t]*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """The index after the block of lines from ``start`` indented deeper than ``indent``."""
    end = start
    for i in range(start, len(lines)):
        if lines[i].strip():
            if _indent(lines[i]) <= indent:
                break
            end = i + 1
    return end


def literal_blocks(text: str) -> str:
    """``intro::`` + blank line + indented block -> ``intro:`` + a ```python fenced block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        nxt = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
        if not line.rstrip().endswith("::") or line.lstrip().startswith((">>>", "...")) or nxt is None \
                or _indent(lines[nxt]) <= _indent(line):
            out.append(line)
            i += 1
            continue
        intro = line.rstrip()[:-2].rstrip()
        end = _block_end(lines, nxt, _indent(line))
        header = _TITLE.match(intro + ":")              # "Example (...)::": the fence is its body
        pad = " " * (_indent(lines[nxt]) if header else _indent(line))
        body = [pad + l[_indent(lines[nxt]):] if l.strip() else "" for l in lines[nxt:end]]
        out += ([intro + ":", ""] if intro.strip() else []) + [pad + "```python", *body, pad + "```"]
        i = end
    return "\n".join(out)


def example_titles(text: str) -> str:
    """``Example (title):`` -> ``Examples:`` with ``Title:`` as the section's first line."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        match = _TITLE.match(line)
        nxt = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
        if not match or nxt is None or _indent(lines[nxt]) <= len(match.group(1)):
            continue
        title = match.group(2)
        lines[i] = match.group(1) + "Examples:"
        if title:
            lines[i] += "\n" + " " * _indent(lines[nxt]) + title[0].upper() + title[1:] + ":"
    return "\n".join(lines)


class JnnDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is complete (roles need the
    whole package to resolve names)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        objects = list(_walk(pkg))
        names: dict[str, set[str]] = {}
        for obj in (o for o in objects if not o.is_module):
            names.setdefault(obj.name, set()).add(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                text = example_titles(literal_blocks(obj.docstring.value))
                obj.docstring.value = _ROLE.sub(lambda m: _link(m, obj, loader, names), text)


def _walk(obj):
    yield obj
    for member in list(obj.members.values()):
        if not member.is_alias:
            yield from _walk(member)


def _link(match: re.Match, obj, loader, names: dict[str, set[str]]) -> str:
    _, mark, title, target = match.groups()
    target = (target or title).strip()
    shown = title.rsplit(".", 1)[-1] if mark == "~" else title
    path = None if mark == "!" else _resolve(target.lstrip("~."), obj, loader, names)
    code = f"<code>{shown}</code>"
    return f'<autoref identifier="{path}" optional>{code}</autoref>' if path else code


def _resolve(name: str, obj, loader, names: dict[str, set[str]]) -> str | None:
    """The canonical path of ``name`` seen from ``obj``: a full path, a name in scope (``X`` or
    ``X.attr``), or else a name defined exactly once in the package."""
    head, _, rest = name.partition(".")
    paths = [name]
    try:
        paths.append(obj.resolve(head) + ("." + rest if rest else ""))
    except (griffe.NameResolutionError, AttributeError):
        pass
    defined = names.get(name.rsplit(".", 1)[-1], set())
    paths += sorted(defined) if len(defined) == 1 else []
    for path in paths:
        try:
            found = loader.modules_collection[path]
            return found.final_target.path if found.is_alias else found.path
        except Exception:                      # not loaded, not found, an alias to outside
            continue
    return None
