"""docs_ext/site_hooks.py: each tutorial's notebook holds the page's code blocks as its code cells,
in order, and each chapter's footer links the notebook, its experiments and the extras it needs
(the built site is checked in tests/test_docs_html.py)."""
import json
import pathlib
import sys

import pytest

from docs_blocks import python_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs_ext"))
import site_hooks  # noqa: E402

CHAPTERS = sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]-*.md"))


@pytest.mark.parametrize("page", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook_code_cells_are_the_page_blocks(page):
    nb = json.loads(json.dumps(site_hooks.notebook(page.read_text())))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code == [block.rstrip("\n") for _, block in python_blocks(page)]
    assert nb["nbformat"] == 4 and all(c["metadata"] == {} for c in nb["cells"])
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "```python" not in text and text.splitlines()[0] == page.read_text().splitlines()[0]


def test_notebook_keeps_the_text_between_blocks():
    page = "# T\n\nIntro.\n\n```python\nx = 1\nprint(x)\n```\n\n```text\n1\n```\n\nEnd.\n"
    nb = site_hooks.notebook(page)
    assert [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]] == [
        ("markdown", "# T\n\nIntro."), ("code", "x = 1\nprint(x)"), ("markdown", "```text\n1\n```\n\nEnd.")]


def test_chapter_footer_links_notebook_experiments_and_extras():
    cnn = site_hooks.footer((ROOT / "docs/tutorials/07-cnn.md").read_text(), "07-cnn.ipynb", "https://x/y")
    assert "(07-cnn.ipynb)" in cnn and "https://x/y/blob/main/experiments/mnist_cnn.py" in cnn
    assert "matplotlib" in cnn and "scikit-learn" not in cnn and "RESULTS.md#experiments" in cnn
    projects = site_hooks.footer((ROOT / "docs/tutorials/10-projects.md").read_text(), "10.ipynb", "https://x/y")
    assert "scikit-learn (`pip install 'jnn[digits]'`)" in projects and "matplotlib (" in projects  # its tuner figure
    assert site_hooks.footer("# no code", "a.ipynb", "u").count("**") == 2      # the notebook line only
