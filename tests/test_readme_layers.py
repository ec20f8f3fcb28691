"""The README's "Writing your own layer" code runs, and its layers compute what they say."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section_namespace() -> dict:
    text = README.read_text()
    section = text.split("## Writing your own layer", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 4, f"expected 4 code blocks in the README section, found {len(blocks)}"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # the last block runs check_layer too
    return namespace


def test_readme_layers_run_and_match_numpy():
    ns = _section_namespace()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)

    layer = ns["scale_shift"]()
    params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    params = {"scale": jnp.array([1.0, 2.0, 3.0]), "shift": jnp.array([0.5, 0.0, -1.0])}
    np.testing.assert_allclose(layer.apply(params, state, x)[0], np.asarray(x) * [1, 2, 3] + [0.5, 0, -1], rtol=1e-6)

    gated = ns["gated"](4)
    params, state = gated.init(jax.random.key(1), x)
    v, g = params["value"], params["gate"]
    expected = (x @ v["w"] + v["b"]) / (1 + np.exp(-(x @ g["w"] + g["b"])))
    np.testing.assert_allclose(gated.apply(params, state, x)[0], expected, rtol=1e-5, atol=1e-6)
    assert gated["gate"].kind == "dense"

    running = ns["running_mean"](momentum=0.5)
    params, state = running.init(jax.random.key(0), x)
    y, state = running.apply(params, state, x, train=True)
    mean = 0.5 * np.asarray(x).mean(0)
    np.testing.assert_allclose(state["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(y, np.asarray(x) - mean, rtol=1e-5, atol=1e-6)
    y_eval, same = running.apply(params, state, x)  # evaluation leaves the state alone
    np.testing.assert_allclose(same["mean"], mean, rtol=1e-6)

    # the usage block: captured gate output equals the gate applied to scale_shift's output
    model, params, inner = ns["model"], ns["params"], ns["inner"]
    h = ns["x"] * params["scale_shift_0"]["scale"] + params["scale_shift_0"]["shift"]
    gate = params["gated_0"]["gate"]
    np.testing.assert_allclose(inner["gated_0/gate"], h @ gate["w"] + gate["b"], rtol=1e-5, atol=1e-6)
    assert list(model.children) == ["scale_shift_0", "gated_0", "running_mean_0", "dense_0"]
