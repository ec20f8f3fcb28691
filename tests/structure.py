"""Structure figures of the jnn package, read from its source (nothing is imported):

- check share: "check lines" over code lines, per module and per area (a top-level file, or a
  subpackage such as ``layers``). Check lines are ``raise`` statements, ``if`` blocks whose body
  only raises (with their condition lines), and calls standing as statements to the
  ``checks.*``/``_checks.*``/``check_*``/``_check*`` helpers; code lines are the non-blank,
  non-comment lines of function bodies outside docstrings (as in /work/shared/tools/structure.py);
- cross-module private names: ``from jnn.x import _name`` and ``x._name`` where ``x`` is
  another jnn module (a private *module* such as ``jnn._checks`` may be imported);
- import cycles among jnn modules (every import, even inside a function; the package ``jnn``
  itself, which imports everything, is left out), as strongly connected components;
- functions longer than :data:`MAX_FUNCTION_LINES`, ``fit``'s parameter count, the modules
  without ``__all__``, and the total number of lines.

Run it from anywhere: ``python tests/structure.py [ROOT] [--all-modules]``; tests/test_structure.py asserts
the figures. :func:`analyse` returns them as a :class:`Report`.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import pathlib
import sys

__all__ = ["Report", "analyse", "check_lines", "code_lines", "format_report", "main",
           "MAX_FUNCTION_LINES", "FOCUS_AREAS"]

MAX_FUNCTION_LINES = 120
#: The areas whose check share issue 38 bounds (each <= 10%).
FOCUS_AREAS = ("layers", "nets", "train", "core.py")
_CHECK_PREFIXES = ("checks.", "_checks.", "check_", "_check")


@dataclasses.dataclass
class Report:
    """The figures of one checkout; ``checks`` maps a module or area to ``(check, code)`` lines."""
    total_lines: int = 0
    module_checks: dict = dataclasses.field(default_factory=dict)
    area_checks: dict = dataclasses.field(default_factory=dict)
    private_imports: list = dataclasses.field(default_factory=list)
    private_attributes: list = dataclasses.field(default_factory=list)
    cycles: list = dataclasses.field(default_factory=list)
    functions: list = dataclasses.field(default_factory=list)   # (lines, "path:line name"), longest first
    fit_parameters: int | None = None
    without_all: list = dataclasses.field(default_factory=list)

    def share(self, area: str) -> float:
        """The check share of an area or module, in percent."""
        checks, code = self.area_checks.get(area) or self.module_checks[area]
        return 100.0 * checks / code if code else 0.0

    @property
    def long_functions(self) -> list:
        return [f for f in self.functions if f[0] > MAX_FUNCTION_LINES]


def code_lines(src_lines: list[str], node: ast.AST) -> set[int]:
    """The non-blank, non-comment line numbers of ``node``, docstrings excluded."""
    doc = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                doc.update(range(first.lineno, first.end_lineno + 1))
    return {i for i in range(node.lineno, node.end_lineno + 1)
            if i not in doc and src_lines[i - 1].strip() and not src_lines[i - 1].strip().startswith("#")}


def check_lines(tree: ast.AST) -> set[int]:
    """The line numbers of ``tree`` that only check (see the module docstring)."""
    lines = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Raise):
            lines.update(range(n.lineno, n.end_lineno + 1))
        elif isinstance(n, ast.If) and n.body and not n.orelse and all(isinstance(b, ast.Raise) for b in n.body):
            lines.update(range(n.lineno, n.end_lineno + 1))
        elif isinstance(n, ast.Expr) and isinstance(n.value, ast.Call):
            name = ast.unparse(n.value.func)
            if name.startswith(_CHECK_PREFIXES) or ".check_" in name:
                lines.update(range(n.lineno, n.end_lineno + 1))
    return lines


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree, module, is_package, modules, where):
    """(edges, private imports, {local name: jnn module}) of one module's imports."""
    edges, private, bound = set(), [], {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            target = _absolute(n, module, is_package)
            if not target.startswith("jnn"):
                continue
            for alias in n.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:                  # a module: private modules may be imported
                    edges.add(sub)
                    bound[alias.asname or alias.name] = sub
                    continue
                edges.add(target)
                if _private(alias.name) and target != module:
                    private.append(f"{where}:{n.lineno} from {target} import {alias.name}")
        elif isinstance(n, ast.Import):
            for alias in n.names:
                if alias.name.split(".")[0] == "jnn":
                    edges.add(alias.name)
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound["jnn"] = "jnn"
    return edges, private, bound


def _private_attributes(tree, module, bound, modules, where) -> list[str]:
    """``other_module._name`` uses (the chain ``jnn.core._x`` is resolved through ``bound``)."""

    def resolve(node):
        if isinstance(node, ast.Name):
            return bound.get(node.id)
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            if base and f"{base}.{node.attr}" in modules:
                return f"{base}.{node.attr}"
        return None

    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _private(n.attr):
            owner = resolve(n.value)
            if owner and owner != module and f"{owner}.{n.attr}" not in modules:
                found.append(f"{where}:{n.lineno} {ast.unparse(n)}")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a cycle
    through its first module where one is found by a depth-first walk."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(_cycle_in(graph, sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_in(graph, component):
    start, members = component[0], set(component)
    path, seen = [start], {start}

    def walk(v):
        for w in sorted(graph.get(v, ())):
            if w == start:
                return True
            if w in members and w not in seen:
                seen.add(w), path.append(w)
                if walk(w):
                    return True
                path.pop()
        return False

    walk(start)
    return path


def _parameters(fn: ast.FunctionDef) -> int:
    a = fn.args
    return len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def _has_all(tree: ast.Module) -> bool:
    for n in tree.body:
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


def analyse(root: str | pathlib.Path = ".") -> Report:
    """The figures of the jnn package under ``root`` (a checkout)."""
    root = pathlib.Path(root)
    files = sorted((root / "jnn").rglob("*.py"))
    modules = {_module_name(p, root) for p in files}
    report, graph = Report(), {}
    area_checks = collections.defaultdict(lambda: [0, 0])
    for path in files:
        src = path.read_text()
        src_lines = src.splitlines()
        tree = ast.parse(src)
        where, module = str(path.relative_to(root)), _module_name(path, root)
        inner = path.relative_to(root / "jnn").parts
        area = inner[0]   # a subpackage, or a top-level file
        report.total_lines += len(src_lines)
        code = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                code |= code_lines(src_lines, n)
                report.functions.append((n.end_lineno - n.lineno + 1, f"{where}:{n.lineno} {n.name}"))
                if n.name == "fit" and module.startswith("jnn.train") and n in tree.body:
                    report.fit_parameters = _parameters(n)
        checks = len(check_lines(tree) & code)
        report.module_checks[module] = (checks, len(code))
        area_checks[area][0] += checks
        area_checks[area][1] += len(code)
        edges, private, bound = _imports(tree, module, path.name == "__init__.py", modules, where)
        graph[module] = {e for e in edges if e in modules and e not in (module, "jnn")}
        report.private_imports += private
        report.private_attributes += _private_attributes(tree, module, bound, modules, where)
        if not _has_all(tree):
            report.without_all.append(module)
    report.area_checks = {a: tuple(v) for a, v in sorted(area_checks.items())}
    report.cycles = _cycles(graph)
    report.functions.sort(key=lambda f: -f[0])
    return report


def format_report(report: Report, *, all_modules: bool = False) -> str:
    """The report as text, as ``python tests/structure.py`` prints it (every module's check
    share with ``all_modules``, else the 10 highest)."""
    share = lambda c, n: f"{100 * c / n:5.1f}%  ({c}/{n})" if n else "    -"
    lines = [f"lines in jnn/: {report.total_lines}", "check share by area:"]
    lines += [f"  {a:22s} {share(*v)}" for a, v in report.area_checks.items()]
    focus = [report.area_checks.get(a, (0, 0)) for a in FOCUS_AREAS]
    every = list(report.area_checks.values())
    lines.append(f"check share {'+'.join(FOCUS_AREAS)}: {share(sum(f[0] for f in focus), sum(f[1] for f in focus))}"
                 f"   all of jnn: {share(sum(v[0] for v in every), sum(v[1] for v in every))}")
    if all_modules:
        lines.append("check share by module:")
        lines += [f"  {m:32s} {share(c, n)}" for m, (c, n) in sorted(report.module_checks.items())]
    else:
        lines.append("check share by module (the 10 highest with >= 20 code lines; --all-modules for all):")
        ranked = sorted(((c / n, m, c, n) for m, (c, n) in report.module_checks.items() if n >= 20), reverse=True)
        lines += [f"  {m:32s} {share(c, n)}" for _, m, c, n in ranked[:10]]
    for title, items in (("cross-module private imports", report.private_imports),
                         ("cross-module private attribute uses", report.private_attributes)):
        lines.append(f"{title}: {len(items)}")
        lines += [f"    {s}" for s in items]
    lines.append(f"import cycles (any import): {len(report.cycles)}")
    lines += ["    " + " -> ".join(c + c[:1]) for c in report.cycles]
    lines.append(f"functions over {MAX_FUNCTION_LINES} lines: {len(report.long_functions)}")
    lines += [f"    {n} {w}" for n, w in report.long_functions]
    lines.append("longest functions: " + "; ".join(f"{n} {w}" for n, w in report.functions[:6]))
    lines.append(f"fit parameters: {report.fit_parameters}")
    lines.append(f"modules without __all__: {len(report.without_all)}"
                 + (f" ({', '.join(report.without_all)})" if report.without_all else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python tests/structure.py [ROOT] [--all-modules]``: prints the figures of ROOT (default:
    this checkout)."""
    argv = sys.argv[1:] if argv is None else argv
    paths = [a for a in argv if a != "--all-modules"]
    root = pathlib.Path(paths[0]) if paths else pathlib.Path(__file__).resolve().parents[1]
    print(format_report(analyse(root), all_modules="--all-modules" in argv))


if __name__ == "__main__":
    main()
