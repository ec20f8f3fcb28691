"""MkDocs hooks (mkdocs.yml ``hooks:``): the changelog page from CHANGELOG.md, and for each tutorial
chapter a notebook (its code cells are the page's ```python blocks, in order) and a footer linking
the notebook, the chapter's experiments/ scripts, their results and the extras the page needs."""
import json
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTER = re.compile(r"^tutorials/\d\d-[\w-]+\.md$")
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```\n?", re.MULTILINE | re.DOTALL)   # indented: in a solution box
EXTRAS = {"matplotlib": (r"import matplotlib", "plots"), "scikit-learn": (r"load_digits|sklearn", "digits")}


def notebook(markdown: str) -> dict:
    """An nbformat 4 notebook of ``markdown``: each ```python block a code cell, the text between
    blocks markdown cells."""
    cells, last = [], 0
    def add(kind, text):
        if text.strip():
            cell = {"cell_type": kind, "metadata": {}, "source": text.strip("\n").splitlines(keepends=True)}
            cells.append({**cell, "execution_count": None, "outputs": []} if kind == "code" else cell)
    for match in BLOCK.finditer(markdown):
        add("markdown", markdown[last:match.start()])
        add("code", textwrap.dedent(match.group(2)))
        last = match.end()
    add("markdown", markdown[last:])
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return {"cells": cells, "metadata": {"kernelspec": kernel, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def footer(markdown: str, notebook_name: str, repo_url: str) -> str:
    """The chapter's closing links: its notebook, its experiments/ scripts and what it needs."""
    blob = f"{repo_url.rstrip('/')}/blob/main"
    needs = [f"{name} (`pip install 'jnn[{extra}]'`)" for name, (pattern, extra) in EXTRAS.items()
             if re.search(pattern, markdown)]
    lines = [f"**Run this chapter**: [download it as a notebook]({notebook_name}), whose cells are this "
             "page's code blocks in order" + (f"; it needs {' and '.join(needs)}." if needs else ".")]
    scripts = sorted(set(re.findall(r"experiments/(\w+)\.py", markdown)))
    if scripts:
        links = ", ".join(f"[`experiments/{s}.py`]({blob}/experiments/{s}.py)" for s in scripts)
        lines.append(f"**The full experiments**: {links} (`--help` lists their options); measured results in "
                     f"[benchmarks/RESULTS.md]({blob}/benchmarks/RESULTS.md#experiments).")
    return "\n\n---\n\n" + "\n\n".join(lines) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text()))
    for page in [f for f in files if CHAPTER.match(f.src_uri)]:
        content = json.dumps(notebook(pathlib.Path(page.abs_src_path).read_text()), indent=1)
        files.append(File.generated(config, page.src_uri[:-3] + ".ipynb", content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    if not CHAPTER.match(page.file.src_uri):
        return markdown
    return markdown + footer(markdown, pathlib.PurePosixPath(page.file.src_uri).stem + ".ipynb", config["repo_url"])
