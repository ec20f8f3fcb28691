"""Params from and to other frameworks: Flax Linen variables and PyTorch ``state_dict``s.

**Flax Linen.** A jnn tree and a Linen ``variables`` dict have the same shape once names are
mapped: modules ``Dense_0``/``Conv_1``/``BatchNorm_0``/``LayerNorm_0``/``Embed_0`` are jnn's
``dense_0``/``conv_1``/``batch_norm_0``/``layer_norm_0``/``embedding_0`` (both count per layer
type in call order); leaves ``kernel``/``bias`` are ``w``/``b``, except in norms, where Linen's
``bias`` is jnn's ``offset``; Linen's ``batch_stats`` (``mean``, ``var``) are jnn's ``state``.
Array layouts are already the same: dense ``[in, out]``, conv ``[*kernel, in, out]``, NHWC.
Other module names (your own submodules) are kept as they are.

**PyTorch.** :func:`from_torch` maps named torch modules onto jnn layers:

============  ==========================  =================================================
torch         jnn                         layout change
============  ==========================  =================================================
nn.Linear     dense ``w [in, out]``, b    ``weight.T``; after a flatten of NCHW maps, rows
                                          are permuted from (C, H, W) to jnn's (H, W, C)
nn.Conv2d     conv ``w [kh, kw, in, out]``  ``weight.permute(2, 3, 1, 0)``
nn.LSTM       recurrent(lstm_cell)        ``weight_ih.T``, ``weight_hh.T``; gate blocks are
              ``input.w/b``, ``hidden.w``   (i, f, g, o) in both; ``b = bias_ih + bias_hh``
============  ==========================  =================================================

Example:
  >>> import jax, jax.numpy as jnp, jnn
  >>> flax_vars = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
  >>> params, state = jnn.convert.from_flax(flax_vars)
  >>> jax.tree.map(jnp.shape, params)
  {'dense_0': {'b': (2,), 'w': (3, 2)}}
  >>> to_flax(params, state)["params"]["Dense_0"]["kernel"].shape
  (3, 2)
"""
from __future__ import annotations

import re

import numpy as np

from jnn import io as _io

__all__ = ["from_flax", "to_flax", "from_torch", "torch_linear", "torch_conv", "torch_lstm"]

_FLAX_MODULES = {"Dense": "dense", "Conv": "conv", "BatchNorm": "batch_norm", "LayerNorm": "layer_norm",
                 "GroupNorm": "group_norm", "RMSNorm": "rms_norm", "Embed": "embedding",
                 "ConvTranspose": "conv_transpose"}
_JNN_MODULES = {v: k for k, v in _FLAX_MODULES.items()}
_NORMS = ("batch_norm", "layer_norm", "group_norm", "rms_norm")


def _module(name: str, table: dict) -> str:
    match = re.fullmatch(r"(.+)_(\d+)", name)
    if match and match.group(1) in table:
        return f"{table[match.group(1)]}_{match.group(2)}"
    return name


def _rename(flat: dict, modules: dict, leaf_names) -> dict:
    out = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        kind = re.sub(r"_\d+$", "", parents[-1] if parents else "")  # the source framework's name
        out["/".join([*(_module(p, modules) for p in parents), leaf_names(kind, leaf)])] = value
    return out


def from_flax(variables, *, like=None):
    """``(params, state)`` for jnn from Flax Linen ``variables`` (``{"params": ..., "batch_stats": ...}``).

    Args:
      variables: what ``flax_module.init`` returns (or its ``"params"`` collection alone).
      like: optional jnn ``(params, state)`` template; when given, the converted trees are
        checked against it (missing, unexpected, mis-shaped paths listed) and take its structure.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> variables = {"params": {"BatchNorm_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
      ...              "batch_stats": {"BatchNorm_0": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}}
      >>> params, state = jnn.convert.from_flax(variables)
      >>> sorted(params["batch_norm_0"]), sorted(state["batch_norm_0"])
      (['offset', 'scale'], ['mean', 'var'])
    """
    variables = dict(variables)
    if "params" not in variables:
        variables = {"params": variables}
    to_jnn = lambda kind, leaf: {"kernel": "w", "bias": "offset" if _FLAX_MODULES.get(kind) in _NORMS
                                 else "b"}.get(leaf, leaf)
    params = _rename(_io.flatten(variables["params"]), _FLAX_MODULES, to_jnn)
    state = _rename(_io.flatten(variables.get("batch_stats", {})), _FLAX_MODULES, to_jnn)
    if like is not None:
        both = _io.unflatten({**{f"params/{k}": v for k, v in params.items()},
                              **{f"state/{k}": v for k, v in state.items()}},
                             like={"params": like[0], "state": like[1]}, where="jnn.convert.from_flax")
        return both["params"], both["state"]
    return _io.unflatten(params), _io.unflatten(state)


def to_flax(params, state=None) -> dict:
    """Flax Linen ``variables`` from jnn ``params`` (and ``state``: batch-norm statistics
    become ``batch_stats``): the inverse of :func:`from_flax`.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> params = {"dense_0": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}}
      >>> jnn.convert.to_flax(params)["params"]["Dense_0"]["kernel"].shape
      (3, 2)
    """
    def to_linen(kind, leaf):
        return {"w": "kernel", "b": "bias", "offset": "bias"}.get(leaf, leaf) if kind in _JNN_MODULES else leaf

    variables = {"params": _io.unflatten(_rename(_io.flatten(params), _JNN_MODULES, to_linen))}
    stats = _io.flatten(state or {})
    if stats:
        variables["batch_stats"] = _io.unflatten(_rename(stats, _JNN_MODULES, to_linen))
    return variables


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def torch_linear(weight, bias=None, *, flattened_chw: tuple[int, int, int] | None = None) -> dict:
    """jnn dense params from an ``nn.Linear``'s ``weight [out, in]`` and ``bias [out]``.

    Args:
      flattened_chw: when the Linear reads a flattened ``[C, H, W]`` feature map (torch's
        NCHW ``flatten``), its ``(C, H, W)``: the input rows are reordered to jnn's NHWC
        flatten order ``(H, W, C)``.

    Example:
      >>> import numpy as np, jnn
      >>> p = jnn.convert.torch_linear(np.zeros((2, 3)), np.zeros(2))   # torch tensors work the same
      >>> p["w"].shape, p["b"].shape
      ((3, 2), (2,))
      >>> jnn.convert.torch_linear(np.zeros((5, 12)), flattened_chw=(3, 2, 2))["w"].shape
      (12, 5)
    """
    w = _np(weight).T
    if flattened_chw is not None:
        c, h, wd = flattened_chw
        if c * h * wd != w.shape[0]:
            raise ValueError(f"torch_linear: flattened_chw {flattened_chw} has {c * h * wd} features, the "
                             f"weight has {w.shape[0]} inputs")
        w = w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(c * h * wd, -1)
    return {"w": w, **({"b": _np(bias)} if bias is not None else {})}


def torch_conv(weight, bias=None) -> dict:
    """jnn conv params from an ``nn.Conv1d/2d/3d``'s ``weight [out, in, *kernel]`` and ``bias``.

    Example:
      >>> import numpy as np, jnn
      >>> p = jnn.convert.torch_conv(np.zeros((8, 3, 5, 5)), np.zeros(8))   # [out, in, kh, kw]
      >>> p["w"].shape, p["b"].shape
      ((5, 5, 3, 8), (8,))
    """
    w = _np(weight)
    return {"w": np.moveaxis(w, (0, 1), (-1, -2)), **({"b": _np(bias)} if bias is not None else {})}


def torch_lstm(state_dict, prefix: str = "", layer: int = 0) -> dict:
    """jnn ``recurrent(lstm_cell(H))`` params from layer ``layer`` of an ``nn.LSTM``'s
    ``state_dict`` (keys ``{prefix}weight_ih_l{layer}`` ...). Both use gate order (i, f, g, o);
    torch's two biases sum into jnn's one.

    Example:
      >>> import numpy as np, jnn
      >>> sd = {"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((8, 2)),   # hidden size 2
      ...       "bias_ih_l0": np.ones(8), "bias_hh_l0": np.ones(8)}
      >>> p = jnn.convert.torch_lstm(sd)
      >>> p["input"]["w"].shape, p["hidden"]["w"].shape, p["input"]["b"][:2].tolist()
      ((3, 8), (2, 8), [2.0, 2.0])
    """
    get = lambda name: state_dict.get(f"{prefix}{name}_l{layer}")
    w_ih, w_hh = get("weight_ih"), get("weight_hh")
    if w_ih is None or w_hh is None:
        raise KeyError(f"torch_lstm: no {prefix}weight_ih_l{layer}/weight_hh_l{layer} in the state_dict")
    b_ih, b_hh = get("bias_ih"), get("bias_hh")
    hidden = _np(w_hh).shape[1]
    b = sum(_np(b) for b in (b_ih, b_hh) if b is not None) if (b_ih is not None or b_hh is not None) \
        else np.zeros(4 * hidden, _np(w_ih).dtype)
    return {"input": {"w": _np(w_ih).T, "b": b}, "hidden": {"w": _np(w_hh).T}}


def from_torch(state_dict, mapping: dict, *, like=None) -> dict:
    """jnn params from a PyTorch ``state_dict`` and ``{jnn_layer_path: torch_module}``.

    Args:
      state_dict: ``torch_module.state_dict()``.
      mapping: for each jnn layer (e.g. ``"conv_0"``, ``"block_1/dense_0"``), the torch module
        prefix (``"features.0"``) or a dict ``{"module": "fc", "flattened_chw": (C, H, W)}``
        for a Linear after an NCHW flatten. The module's type is read from its keys: an
        ``nn.LSTM`` (``weight_ih_l0``), a 2-D ``weight`` (``nn.Linear``) or a 3-5-D one (conv).
      like: optional jnn params template to check against (paths, shapes) and take structure from.

    Raises:
      KeyError: a mapped torch module is not in the state_dict.

    Example:
      >>> import numpy as np, jnn
      >>> state_dict = {"fc.weight": np.zeros((2, 3)), "fc.bias": np.zeros(2)}   # e.g. nn.Linear(3, 2)
      >>> params = jnn.convert.from_torch(state_dict, {"dense_0": "fc"})
      >>> params["dense_0"]["w"].shape, params["dense_0"]["b"].shape
      ((3, 2), (2,))
    """
    flat = {}
    for jnn_path, spec in mapping.items():
        spec = {"module": spec} if isinstance(spec, str) else dict(spec)
        prefix = spec.pop("module") + "."
        if f"{prefix}weight_ih_l0" in state_dict:
            layer = torch_lstm(state_dict, prefix)
        elif f"{prefix}weight" in state_dict:
            weight, bias = state_dict[f"{prefix}weight"], state_dict.get(f"{prefix}bias")
            layer = torch_linear(weight, bias, **spec) if weight.ndim == 2 else torch_conv(weight, bias)
        else:
            raise KeyError(f"jnn.convert.from_torch: no torch module {prefix[:-1]!r} in the state_dict; "
                           f"its keys: {sorted(state_dict)[:20]}")
        flat.update({f"{jnn_path}/{k}": v for k, v in _io.flatten(layer).items()})
    if like is not None:
        return _io.unflatten(flat, like=like, where="jnn.convert.from_torch")
    return _io.unflatten(flat)
