"""The documentation: every public name documented with an example, every public module in the
API reference, every Python block in docs/ runs and prints what its page shows (the built site is
tested in tests/test_docs_html.py)."""
import inspect
import os
import pathlib
import re
import types

import jax
import pytest

import jnn
from docs_blocks import python_blocks, run_page, same_output

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p))


def public_modules() -> dict[str, types.ModuleType]:
    """jnn and every module reachable through the ``__all__`` lists of public modules."""
    found, todo = {}, [jnn]
    while todo:
        module = todo.pop()
        if module.__name__ in found:
            continue
        found[module.__name__] = module
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if isinstance(value, types.ModuleType) and value.__name__.startswith("jnn"):
                todo.append(value)
    return found


def public_objects():
    for module_name, module in sorted(public_modules().items()):
        assert hasattr(module, "__all__"), f"{module_name} has no __all__"
        for name in module.__all__:
            value = getattr(module, name)
            if not isinstance(value, types.ModuleType):
                yield f"{module_name}.{name}", module, name, value


def test_every_public_name_has_a_docstring_and_an_example():
    missing_doc, missing_example = [], []
    for qualified, module, name, value in public_objects():
        if callable(value):
            doc = inspect.getdoc(value) or ""
            if not doc.strip():
                missing_doc.append(qualified)
            elif ">>>" not in doc:
                missing_example.append(qualified)
        elif not re.search(rf"\b{re.escape(name)}\b", module.__doc__ or ""):
            missing_doc.append(f"{qualified} (a constant: describe it in the module docstring)")
    assert not missing_doc, f"public names without a docstring: {missing_doc}"
    assert not missing_example, f"public names whose docstring has no '>>>' example: {missing_example}"


def test_every_public_module_is_in_the_api_reference():
    referenced = set()
    for page in (DOCS / "api").glob("*.md"):
        referenced |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE))
    missing = []
    for name, module in public_modules().items():
        if name == "jnn":
            continue
        # A package is covered by a page for it or for the modules that define its names.
        defining = {getattr(v, "__module__", name) for k, v in vars(module).items()
                    if k in getattr(module, "__all__", ()) and not isinstance(v, types.ModuleType)}
        if name not in referenced and not defining <= referenced:
            missing.append(f"{name} (defined in {sorted(defining - referenced)})")
    assert not missing, f"public modules missing from docs/api/*.md: {missing}"


def test_the_docs_have_code_blocks():
    assert len(PAGES) >= 14, [p.name for p in PAGES]
    assert sum(len(python_blocks(p)) for p in PAGES) >= 40


# Pages whose time goes to training rather than to compiling: they run with XLA's optimizations,
# as a reader's copy would, instead of the suite's optimization level 0 (tests/conftest.py). Measured
# with `pytest tests/test_docs.py --durations=0` both ways (2 workers): 09 27.0 -> 13.9 s, 08
# 17.4 -> 11.1 s, 07 14.0 -> 8.2 s; every other page is faster at level 0 (05 6.2 against 9.3 s).
# The optimization level is not part of the keys of JAX's in-memory caches (it is of the on-disk
# cache's, tests/conftest.py), so those are cleared after such a page: an eager op compiled
# optimized here must not be reused by a later test in this worker that compares bits with a
# level-0 program (that failed CI once: benchmarks/RESULTS.md, "Test suite time").
OPTIMIZED = {"tutorials/07-cnn.md", "tutorials/08-recurrent.md", "tutorials/09-attention.md"}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs_in_order(page, tmp_path, monkeypatch):
    """Each page's blocks run and print what the page shows; JNN_UPDATE_DOCS=1 rewrites the
    page's outputs and figures instead (tests/docs_blocks.py)."""
    monkeypatch.chdir(tmp_path)                     # files a page writes land in tmp_path
    level_0 = jax.config.read("jax_disable_most_optimizations")
    optimized = level_0 and str(page.relative_to(DOCS)) in OPTIMIZED
    jax.config.update("jax_disable_most_optimizations", level_0 and not optimized)
    try:
        skipped = run_page(page, update=os.environ.get("JNN_UPDATE_DOCS") == "1")
    finally:
        jax.config.update("jax_disable_most_optimizations", level_0)
        if optimized:
            jax.clear_caches()
    if skipped:
        pytest.skip(f"ran the page except the blocks needing {sorted(set(skipped))} (not installed)")


def test_a_page_whose_output_drifts_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(f'loss {0.25 * 2:.3f}, {2 + 2} steps')\n```\n\n```text\nloss 0.520, 4 steps\n```\n")
    run_page(page)                                  # 0.500 is within 5% of 0.520
    for shown in ("loss 0.600, 4 steps", "loss 0.520, 5 steps", "loss: 0.520, 4 steps", ""):
        page.write_text(page.read_text().split("```text")[0] + f"```text\n{shown}\n```\n")
        with pytest.raises(AssertionError, match="output differs"):
            run_page(page)
    run_page(page, update=True)
    assert page.read_text().endswith("```text\nloss 0.500, 4 steps\n```\n")
    assert same_output("sampled text", "other text", "any") and not same_output("", "text", "any")


def test_indented_blocks_in_admonitions_run_and_update(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text('??? note "Solution"\n\n    ```python\n    for i in range(2):\n        print(i * 1.5)\n    ```\n\n'
                    '    ```text\n    0.0\n    9.0\n    ```\n')
    assert python_blocks(page) == [(None, "for i in range(2):\n    print(i * 1.5)\n")]
    with pytest.raises(AssertionError, match="output differs"):
        run_page(page)
    run_page(page, update=True)
    assert page.read_text().endswith("    ```text\n    0.0\n    1.5\n    ```\n")
    run_page(page)
