"""Params from and to Flax Linen variables (``Dense_0/kernel`` is ``dense_0/w``) and PyTorch state_dicts."""
from __future__ import annotations

import re

import numpy as np

from jnn import _checks as checks
from jnn import io as _io

__all__ = ["from_flax", "to_flax", "from_torch", "torch_linear", "torch_conv", "torch_lstm", "torch_recurrent",
           "torch_batch_norm"]

_FLAX_MODULES = {"Dense": "dense", "Conv": "conv", "BatchNorm": "batch_norm", "LayerNorm": "layer_norm",
                 "GroupNorm": "group_norm", "RMSNorm": "rms_norm", "Embed": "embedding",
                 "ConvTranspose": "conv_transpose"}
_JNN_MODULES = {v: k for k, v in _FLAX_MODULES.items()}
_NORMS = ("batch_norm", "layer_norm", "group_norm", "rms_norm")


def _rename(flat: dict, modules: dict, leaf_names) -> dict:
    """``flat`` with module names ``Kind_i`` renamed by ``modules`` and leaves by ``leaf_names(kind, leaf)``."""
    module = lambda name: re.sub(r"^(.+)_(\d+)$", lambda m: f"{modules.get(m[1], m[1])}_{m[2]}", name)
    out = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        kind = re.sub(r"_\d+$", "", parents[-1] if parents else "")  # the source framework's name
        out["/".join([*map(module, parents), leaf_names(kind, leaf)])] = value
    return out


def from_flax(variables, *, like=None):
    """``(params, state)`` from Flax Linen ``variables`` (or their ``"params"`` collection alone), checked
    against and shaped like ``like`` (jnn ``(params, state)``) if given.

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
    params, state = (_rename(_io.flatten(variables.get(c, {})), _FLAX_MODULES, to_jnn) for c in ("params", "batch_stats"))
    if like is None:
        return _io.unflatten(params), _io.unflatten(state)
    both = _io.unflatten({**{f"params/{k}": v for k, v in params.items()},
                          **{f"state/{k}": v for k, v in state.items()}},
                         like={"params": like[0], "state": like[1]}, where="jnn.convert.from_flax")
    return both["params"], both["state"]


def to_flax(params, state=None) -> dict:
    """Flax Linen ``variables`` from jnn ``params`` (and ``state``): the inverse of :func:`from_flax`.

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
    """jnn dense params from an ``nn.Linear``'s ``weight [out, in]`` and ``bias [out]``; with
    ``flattened_chw=(C, H, W)`` (it reads a flattened NCHW map) rows are reordered to ``(H, W, C)``.

    Example:
      >>> import numpy as np, jnn
      >>> jnn.convert.torch_linear(np.zeros((5, 12)), np.zeros(5), flattened_chw=(3, 2, 2))["w"].shape
      (12, 5)
    """
    w = _np(weight).T
    if flattened_chw is not None:
        c, h, wd = flattened_chw
        checks.require(c * h * wd == w.shape[0], "torch_linear", f"flattened_chw {flattened_chw} has {c * h * wd} "
                       f"features, the weight has {w.shape[0]} inputs")
        w = w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(c * h * wd, -1)
    return {"w": w, **({"b": _np(bias)} if bias is not None else {})}


def torch_conv(weight, bias=None) -> dict:
    """jnn conv params from an ``nn.Conv1d/2d/3d``'s ``weight [out, in, *kernel]`` and ``bias``.

    Example:
      >>> import numpy as np, jnn
      >>> jnn.convert.torch_conv(np.zeros((8, 3, 5, 5)), np.zeros(8))["w"].shape
      (5, 5, 3, 8)
    """
    return {"w": np.moveaxis(_np(weight), (0, 1), (-1, -2)), **({"b": _np(bias)} if bias is not None else {})}


def torch_lstm(state_dict, prefix: str = "", layer: int = 0, *, reverse: bool = False) -> dict:
    """jnn ``recurrent(lstm_cell(H))`` params from layer ``layer`` of an ``nn.LSTM`` ``state_dict``.

    Example:
      >>> import numpy as np, jnn
      >>> p = jnn.convert.torch_lstm({"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((8, 2))})
      >>> p["input"]["w"].shape, p["hidden"]["w"].shape
      ((3, 8), (2, 8))
    """
    return torch_recurrent(state_dict, prefix, layer, reverse=reverse, gates=4)


def torch_recurrent(state_dict, prefix: str = "", layer: int = 0, *, reverse: bool = False,
                    gates: int | None = None) -> dict:
    """jnn ``recurrent(cell)`` params from one layer (and direction) of an ``nn.LSTM``/``GRU``/``RNN``
    ``state_dict`` (kind from the shapes); biases sum into ``input.b``, but a GRU's ``b_hn`` is ``hidden.b``.

    Example:
      >>> import numpy as np, jnn
      >>> sd = {"weight_ih_l0": np.zeros((6, 3)), "weight_hh_l0": np.zeros((6, 2)),   # a GRU, hidden size 2
      ...       "bias_ih_l0": np.ones(6), "bias_hh_l0": np.ones(6)}
      >>> p = jnn.convert.torch_recurrent(sd)
      >>> p["input"]["b"].tolist(), p["hidden"]["b"].tolist()
      ([2.0, 2.0, 2.0, 2.0, 1.0, 1.0], [1.0, 1.0])
    """
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    get = lambda name: state_dict.get(f"{prefix}{name}{suffix}")
    checks.require(get("weight_ih") is not None and get("weight_hh") is not None, "torch_recurrent",
                   f"no {prefix}weight_ih{suffix}/weight_hh{suffix} in the state_dict", KeyError)
    w_ih, w_hh = _np(get("weight_ih")), _np(get("weight_hh"))
    hidden, found = w_hh.shape[1], w_ih.shape[0] // w_hh.shape[1]
    kinds = {4: "an LSTM", 3: "a GRU", 1: "an RNN"}
    checks.require(gates in (None, found), "torch_recurrent", f"{prefix}weight_ih{suffix} has {found} blocks of the "
                   f"hidden size {hidden}, expected {gates} ({kinds.get(gates)})")
    zeros = np.zeros(found * hidden, w_ih.dtype)
    b_ih, b_hh = (zeros if get(n) is None else _np(get(n)) for n in ("bias_ih", "bias_hh"))
    hidden_params = {"w": w_hh.T}
    if found == 3:   # GRU: b_hn stays inside r * (h @ W_hn + b_hn)
        b_hh, hidden_params["b"] = np.concatenate([b_hh[:2 * hidden], zeros[:hidden]]), b_hh[2 * hidden:]
    return {"input": {"w": w_ih.T, "b": b_ih + b_hh}, "hidden": hidden_params}


def torch_batch_norm(state_dict, prefix: str = "") -> tuple[dict, dict]:
    """``(params, state)`` of a jnn ``batch_norm`` from an ``nn.BatchNorm*`` ``state_dict`` (use torch's ``eps``).

    Example:
      >>> import numpy as np, jnn
      >>> sd = {"bn.weight": np.ones(3), "bn.bias": np.zeros(3), "bn.running_mean": np.full(3, 0.5),
      ...       "bn.running_var": np.full(3, 2.0), "bn.num_batches_tracked": np.array(7)}
      >>> params, state = jnn.convert.torch_batch_norm(sd, "bn.")
      >>> sorted(params), state["var"].tolist()
      (['offset', 'scale'], [2.0, 2.0, 2.0])
    """
    checks.require(f"{prefix}running_mean" in state_dict, "torch_batch_norm", f"no {prefix}running_mean in the "
                   f"state_dict (track_running_stats=False keeps no statistics to convert)", KeyError)
    params = {name: _np(state_dict[f"{prefix}{key}"]) for key, name in (("weight", "scale"), ("bias", "offset"))
              if f"{prefix}{key}" in state_dict}
    return params, {"mean": _np(state_dict[f"{prefix}running_mean"]), "var": _np(state_dict[f"{prefix}running_var"])}


# from_torch: the module kinds it converts, each with its options and its torch classes.
_TORCH_KINDS = {
    "linear": (("flattened_chw",), ("Linear", "LazyLinear")),
    "conv": ((), ("Conv1d", "Conv2d", "Conv3d", "LazyConv1d", "LazyConv2d", "LazyConv3d")),
    "lstm": (("layer", "reverse"), ("LSTM",)),
    "gru": (("layer", "reverse"), ("GRU",)),
    "rnn": (("layer", "reverse"), ("RNN",)),
    "embedding": ((), ("Embedding",)),
    "norm": ((), ("LayerNorm", "GroupNorm", "RMSNorm")),
}
_TORCH_CLASSES = {cls: kind for kind, (_, classes) in _TORCH_KINDS.items() for cls in classes}
_TORCH_REFUSED = {   # recognized from their keys, refused with what to do instead
    "running_mean": "a batch norm, whose running statistics are state, not params: convert it with "
                    "jnn.convert.torch_batch_norm(state_dict, {prefix!r}) -> (params, state)",
    "in_proj_weight": "an nn.MultiheadAttention, which from_torch does not convert (its fused q/k/v projection "
                      "has no jnn counterpart to map onto)",
    "weight_hr_l0": "an LSTM with proj_size > 0, which jnn's lstm_cell does not have",
}
_WHAT = {"linear": "an nn.Linear", "conv": "a convolution", "lstm": "an nn.LSTM", "gru": "an nn.GRU",
         "rnn": "an nn.RNN", "embedding": "an nn.Embedding", "norm": "a layer/group/RMS norm"}


def _torch_kind(where: str, state_dict, prefix: str, spec: dict, modules: dict | None, target) -> str:
    """The kind of the torch module at ``prefix``: from its class if known, else from its keys."""
    name = prefix[:-1]
    own = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
    checks.require(own, where, f"no torch module {name!r} in the state_dict; its keys: {sorted(state_dict)[:20]}",
                   KeyError)
    given = spec.pop("type", None)
    checks.require(given in (None, *_TORCH_KINDS), where, f"{name!r}: type must be one of {sorted(_TORCH_KINDS)}, "
                   f"got {given!r}")
    for key, what in _TORCH_REFUSED.items():
        checks.require(key not in own, where, f"{name!r} is {what.format(prefix=prefix)}")
    if modules is not None and name in modules:
        cls = type(modules[name]).__name__
        checks.require(cls in _TORCH_CLASSES, where, f"{name!r} is an nn.{cls}, which from_torch does not convert "
                       f"(it converts {', '.join(sorted(_TORCH_CLASSES))})")
        found = _TORCH_CLASSES[cls]
    else:
        found = _kind_from_keys(where, state_dict, prefix, own, given, target)
    checks.require(given in (None, found), where, f"{name!r} is {_WHAT[found]}, not type={given!r}")
    return found


def _kind_from_keys(where, state_dict, prefix, own, given, target) -> str:
    name = prefix[:-1]
    if "weight_ih_l0" in own:
        gates = _np(state_dict[f"{prefix}weight_ih_l0"]).shape[0] // _np(state_dict[f"{prefix}weight_hh_l0"]).shape[1]
        checks.require(gates in (4, 3, 1), where, f"{name!r} is a recurrent module with {gates} gate blocks, not "
                       f"an LSTM (4), GRU (3) or RNN (1)")
        return {4: "lstm", 3: "gru", 1: "rnn"}[gates]
    if "weight" not in own:
        nested = sorted(k for k in own if "." in k)
        raise ValueError(f"{where}: {name!r} has no weight of its own" + (
            f"; it holds modules ({', '.join(prefix + k for k in nested[:4])} ...): map each of them"
            if nested else f" (keys: {sorted(own)}), so it is not a module type from_torch converts"))
    shape = _np(state_dict[f"{prefix}weight"]).shape
    bias = _np(state_dict[f"{prefix}bias"]).shape if "bias" in own else None
    if bias is not None and bias == shape:   # an elementwise affine: a norm's (over len(shape) axes)
        return "norm"
    if len(shape) >= 3:
        return "conv"
    if len(shape) == 2 and bias is not None:
        return "linear"
    ndim = len(shape)
    if given is None:   # the jnn layer's param names, when like= gives them
        given = next((kind for key, kind in (("w", "linear"), ("embedding", "embedding"), ("scale", "norm"))
                      if key in target), None)
    if given is not None:
        checks.require({"linear": 2, "embedding": 2, "norm": 1}.get(given) == ndim, where, f"{name!r} has a {ndim}-D "
                       f"weight, which is not {_WHAT[given]}'s")
        return given
    options, types = (("'linear' or 'embedding'", "an nn.Linear(bias=False) or an nn.Embedding") if ndim == 2
                      else ("'norm'", "a norm without bias, or a PReLU"))
    raise ValueError(f"{where}: {name!r} has a {ndim}-D weight and no bias, which fits more than one module type "
                     f"({types}); say which: {{'module': {name!r}, 'type': {options}}}, pass like=, or pass the "
                     f"torch module itself instead of its state_dict")


def _torch_layer(where: str, jnn_path: str, state_dict, prefix: str, kind: str, spec: dict) -> dict:
    """The jnn params of one mapped torch module of kind ``kind``, its options ``spec`` checked."""
    name = prefix[:-1]
    allowed = _TORCH_KINDS[kind][0]
    for option in spec:
        if option not in allowed:
            known = sorted({o for options, _ in _TORCH_KINDS.values() for o in options} | {"module", "type"})
            why = (f"which takes no option {option!r}" + (f" (its options: {', '.join(allowed)})" if allowed else "")
                   if option in known else f"and {option!r} is not an option (the options: {', '.join(known)})")
            raise ValueError(f"{where}: {jnn_path!r} maps {name!r}, {_WHAT[kind]}, {why}")
    weight, bias = state_dict.get(f"{prefix}weight"), state_dict.get(f"{prefix}bias")
    if kind == "linear":
        return torch_linear(weight, bias, **spec)
    if kind == "conv":
        return torch_conv(weight, bias)
    if kind == "embedding":
        return {"embedding": _np(weight)}
    if kind == "norm":
        checks.require(weight is not None, where, f"{name!r} has no scale or offset (elementwise_affine=False): "
                       f"leave it out of the mapping, and give the jnn norm use_scale=False, use_offset=False")
        scale = _np(weight)
        checks.require(scale.ndim == 1, where, f"{name!r} normalizes over {scale.ndim} axes (weight shape "
                       f"{scale.shape}); jnn's norms take the last axis only")
        return {"scale": scale, **({"offset": _np(bias)} if bias is not None else {})}
    return _recurrent_layer(where, jnn_path, state_dict, prefix, kind, spec)


def _recurrent_layer(where, jnn_path, state_dict, prefix, kind, spec) -> dict:
    name = prefix[:-1]
    layers = sorted(int(k[len(prefix) + len("weight_ih_l"):]) for k in state_dict
                    if re.fullmatch(re.escape(prefix) + r"weight_ih_l\d+", k))
    both = f"{prefix}weight_ih_l0_reverse" in state_dict
    checks.require("layer" in spec or len(layers) < 2, where, f"{name!r} is {_WHAT[kind]} of {len(layers)} layers; "
                   f"say which one {jnn_path!r} takes: {{'module': {name!r}, 'layer': 0}} (0 to {len(layers) - 1})")
    checks.require("reverse" in spec or not both, where, f"{name!r} is a bidirectional {_WHAT[kind][3:]}; say which "
                   f"direction {jnn_path!r} takes: {{'module': {name!r}, 'reverse': False}} (forward) or True "
                   f"(backward)")
    layer, reverse = spec.get("layer", 0), spec.get("reverse", False)
    checks.require(checks.is_integer(layer) and layer in layers, where, f"{jnn_path!r}: layer must be one of "
                   f"{name!r}'s layers {layers}, got {layer!r}")
    if not isinstance(reverse, (bool, np.bool_)) or (reverse and not both):
        raise ValueError(f"{where}: {jnn_path!r}: reverse must be True or False" + (
            "" if isinstance(reverse, (bool, np.bool_)) else f", got {reverse!r}") +
            ("" if both or not reverse else f"; {name!r} is not bidirectional, so it has no reverse direction"))
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    return torch_recurrent(state_dict, prefix, int(layer), reverse=bool(reverse), gates=gates)


@checks.declare_as("jnn.convert.from_torch", mapping=checks.kind(lambda m: isinstance(m, dict),
                                                                 "a dict {jnn_layer_path: torch module name}"))
def from_torch(state_dict, mapping: dict, *, like=None) -> dict:
    """jnn params (shaped like ``like`` if given) from a PyTorch module or ``state_dict`` and ``mapping``
    ``{jnn_layer_path: "fc" or {"module": "fc", option: value}}``; options: ``flattened_chw``, ``layer``,
    ``reverse``, ``type`` (``"linear"``, ``"conv"``, ``"lstm"``, ``"gru"``, ``"rnn"``, ``"embedding"``,
    ``"norm"``; default: read from the classes or keys). Batch norms: :func:`torch_batch_norm`.

    Example:
      >>> import numpy as np, jnn
      >>> state_dict = {"fc.weight": np.zeros((2, 3)), "fc.bias": np.zeros(2)}   # e.g. nn.Linear(3, 2)
      >>> params = jnn.convert.from_torch(state_dict, {"dense_0": "fc"})
      >>> params["dense_0"]["w"].shape, params["dense_0"]["b"].shape
      ((3, 2), (2,))
    """
    where = "jnn.convert.from_torch"
    modules = None
    if hasattr(state_dict, "named_modules") and hasattr(state_dict, "state_dict"):
        modules, state_dict = dict(state_dict.named_modules()), state_dict.state_dict()
    targets = _io.flatten(like) if like is not None else {}
    flat = {}
    for jnn_path, spec in mapping.items():
        spec = {"module": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else spec
        checks.require(isinstance(spec, dict) and isinstance(spec.get("module"), str), where, f"{jnn_path!r} must map "
                       f"to a torch module name or a dict {{'module': name, ...}}, got {spec!r}", TypeError)
        prefix = spec.pop("module") + "."
        target = {p[len(jnn_path) + 1:]: v for p, v in targets.items() if p.startswith(jnn_path + "/")}
        kind = _torch_kind(where, state_dict, prefix, spec, modules, target)
        layer = _torch_layer(where, jnn_path, state_dict, prefix, kind, spec)
        flat.update({f"{jnn_path}/{k}": v for k, v in _io.flatten(layer).items()})
    return _io.unflatten(flat, like=like, where=where)
