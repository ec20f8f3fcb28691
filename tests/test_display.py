"""jnn.display: HTML with the right counts, shapes and summaries; text within 100 columns; deep
models elided; repr(layer) is the text tree."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


def _cnn():
    model = jnn.serial(jnn.conv(8, (3, 3)), jnn.relu(), jnn.flatten(), jnn.named("head", jnn.dense(10)))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    return model, params


def test_html_has_counts_shapes_and_summaries():
    model, params = _cnn()
    page = jnn.display.html(model, params)
    conv, head = 3 * 3 * 3 * 8 + 8, 6 * 6 * 8 * 10 + 10
    assert f"{conv + head:,} params" in page and f"{conv:,} params" in page and f"{head:,} params" in page
    for shape in ("float32[3, 3, 3, 8]", "float32[8]", "float32[288, 10]", "float32[10]"):
        assert shape in page
    w = np.asarray(params["head"]["w"], np.float64)
    row = page[page.index("float32[288, 10]"):].split("</tr>")[0]
    for name, value in (("mean", w.mean()), ("std", w.std()), ("min", w.min()), ("max", w.max())):
        assert f"{name}={value:.4g}" in row
    assert "head</b>: dense(features=10" in page and page.count("<details") == 5   # serial, 4 children
    assert model._repr_html_() == jnn.display.html(model) and "params" not in model._repr_html_()


def test_html_escapes_and_param_trees():
    page = jnn.display.html({"<x>": {"w": jnp.ones((2, 3), jnp.bfloat16)}})
    assert "&lt;x&gt;" in page and "<x>" not in page and "bfloat16[2, 3]" in page and "6 params" in page
    view = jnn.display.show(jnn.dense(2), {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)})
    assert "8 params" in view._repr_html_() and "8 params" in repr(view)


def test_treescope_path():
    pytest.importorskip("treescope")
    page = jnn.display.html({"w": jnp.ones((2, 3))}, treescope=True)
    assert isinstance(page, str) and "treescope" in page.lower()


def test_text_fits_the_terminal_and_nests():
    lm = jnn.decoder_lm(50, 2, 2, 16, 32, 64, name="gpt")
    params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    for obj, p in ((lm, None), (lm, params), (params, None)):
        out = jnn.display.text(obj, p, max_lines=None)
        assert max(map(len, out.splitlines())) <= 100, out
    out = jnn.display.text(lm, params, max_lines=None)
    assert out.splitlines()[0].startswith("decoder_lm(vocab_size=50,") and "as 'gpt'" in out
    assert "      query: 272 params" in out and "        w: float32[16, 16]" in out
    header = next(line for line in out.splitlines() if "as 'gpt'" in line)     # the config may wrap
    assert header.endswith(f"{sum(a.size for a in jax.tree_util.tree_leaves(params)):,} params")
    assert max(map(len, jnn.display.text(lm, width=60).splitlines())) <= 60


def test_deep_models_elided():
    deep = jnn.serial(*[jnn.serial(jnn.dense(2), jnn.relu()) for _ in range(40)])
    lines = repr(deep).splitlines()
    assert len(lines) <= 40 and re.search(r"\.\.\. \d+ more lines \.\.\.", repr(deep))
    full = jnn.display.text(deep, max_lines=None)
    assert len(full.splitlines()) == 1 + 40 * 3
    nested = jnn.serial(jnn.dense(2))
    for _ in range(12):
        nested = jnn.serial(nested)
    out = jnn.display.text(nested, max_depth=4)
    assert len(out.splitlines()) == 6 and out.endswith("... 9 rows deeper than 4 levels ...")


def test_repr_is_the_text_tree():
    model, _ = _cnn()
    assert repr(model) == jnn.display.text(model)
    assert repr(jnn.dense(3)) == "dense(features=3, use_bias=True, w_init='lecun_normal', b_init='zeros')"
    assert repr(model).splitlines()[5] == "  head: dense(features=10, use_bias=True, w_init='lecun_normal', b_init='zeros') as 'head'"
