"""The built site: `mkdocs build --strict` passes, and the API pages show docstrings rendered
(Sphinx roles as linked code, `Example (title):` sections as code, no reST `::`), built once."""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs_ext"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs and mkdocstrings are not installed (the docs extra)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_mkdocs_build_strict(site):
    assert (site / "tutorials" / "01-perceptron" / "index.html").exists()
    api = (site / "api" / "train" / "index.html").read_text()
    assert "make_train_step" in api and "Example" in api
    assert not list(site.rglob("*.py")), "a Python file is published into the site"


def test_api_pages_have_no_literal_roles_blockquotes_or_rest_markup(site):
    bad = {}
    for page in sorted((site / "api").glob("*/index.html")):
        html = page.read_text()
        found = re.findall(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc):", html)
        found += re.findall(r"<blockquote>", html)          # '>>>' read as Markdown quotes
        found += re.findall(r"::</p>", html)                 # a reST literal-block marker
        if found:
            bad[page.parent.name] = sorted(set(found))
    assert not bad, f"API pages with docstring markup left unrendered: {bad}"


def test_roles_link_to_the_api_entry(site):
    core = (site / "api" / "core" / "index.html").read_text()
    assert re.search(r'<a class="autorefs autorefs-internal"[^>]*href="#jnn\.core\.Layer"><code>Layer</code></a>', core)
    train = (site / "api" / "train" / "index.html").read_text()
    assert re.search(r'href="#jnn\.train\.loop\.fit"><code>jnn\.train\.fit</code></a>', train)


@pytest.mark.parametrize("ident", ["jnn.layers.basic.dense", "jnn.combinators.fan_out", "jnn.layers.conv.conv",
                                   "jnn.layers.conv.conv_transpose"])
def test_titled_examples_render_as_code(site, ident):
    page = "core" if ident.startswith(("jnn.combinators", "jnn.inspection")) else "layers"
    html = (site / "api" / page / "index.html").read_text()
    entry = html[html.index(f'id="{ident}"'):]
    entry = entry[:entry.find('class="doc doc-heading"', entry.index("</h"))]
    section = entry[entry.index('doc-section-title">Examples:'):]
    assert re.search(r"<p>[^<]*(<code>[^<]*</code>[^<]*)*:</p>\s*<div class=\"highlight\"><pre>", section), section[:600]
    assert "&gt;&gt;&gt;" in section


def test_docstring_rewrites():
    from griffe_docstrings import example_titles, literal_blocks
    text = "Intro.\n\nExample (a title)::\n\n    code(1)\n      more\nAfter."
    assert example_titles(literal_blocks(text)) == (
        "Intro.\n\nExamples:\n    A title:\n\n    ```python\n    code(1)\n      more\n    ```\nAfter.")
    assert literal_blocks("A block::\n\n    x = 1\n") == "A block:\n\n```python\nx = 1\n```\n"
    assert example_titles("Example:\n  >>> 1\n  1") == "Examples:\n  >>> 1\n  1"
    assert example_titles("Example: not a section") == "Example: not a section"


def test_changelog_notebooks_and_chapter_links(site):
    """docs_ext/site_hooks.py: the changelog page, a notebook per chapter, the chapter's footer."""
    import json
    from docs_blocks import python_blocks
    assert "Batch 1" in (site / "changelog" / "index.html").read_text()
    for page in sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]-*.md")):
        nb = json.loads((site / "tutorials" / f"{page.stem}.ipynb").read_text())
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        assert code == [block.rstrip("\n") for _, block in python_blocks(page)], page.name
    html = (site / "tutorials" / "02-mlp-xor" / "index.html").read_text()
    assert 'href="../02-mlp-xor.ipynb"' in html
    assert 'href="https://github.com/jnn-dev/jnn/blob/main/experiments/xor.py"' in html


def test_every_public_name_has_an_api_entry(site):
    """Each name in a public ``__all__`` is in the API reference: rendered with an anchor (the
    site's inventory, ``objects.inv``, holds its qualified name) or, for constants, aliases and
    re-exported JAX functions, named in code on an API page (its module docstring's list)."""
    import types

    from mkdocstrings import Inventory
    from test_docs import public_objects

    with open(site / "objects.inv", "rb") as f:
        rendered = set(Inventory.parse_sphinx(f))
    code = " ".join(re.findall(r"<code>(.*?)</code>", " ".join(
        page.read_text() for page in (site / "api").glob("*/index.html")), re.S))
    missing = []
    for qualified, module, name, value in public_objects():
        where = getattr(value, "__module__", None) if isinstance(value, (type, types.FunctionType)) else None
        if not {qualified, f"{where}.{name}"} & rendered and not re.search(rf"\b{re.escape(name)}\b", code):
            missing.append(qualified)
    assert not missing, f"public names without an API entry: {missing}"
