"""Hugging Face ``transformers`` checkpoints of GPT-2 and Llama-style decoders, in and out of
:func:`jnn.decoder_lm` (docs: guides/huggingface.md)."""
from __future__ import annotations

import functools
import json
import os
import pathlib

import jax
import numpy as np

from jnn import io
from jnn.layers.attention import sliding_window_mask
from jnn.nets.decoder_lm import decoder_lm

__all__ = ["from_hf", "to_hf", "save_hf", "lm_options"]

_GPT2_BLOCK = [("norm_0/scale", "ln_1.weight"), ("norm_0/offset", "ln_1.bias"),
               ("attention/query/w attention/key/w attention/value/w", "attn.c_attn.weight"),
               ("attention/query/b attention/key/b attention/value/b", "attn.c_attn.bias"),
               ("attention/out/w", "attn.c_proj.weight"), ("attention/out/b", "attn.c_proj.bias"),
               ("norm_1/scale", "ln_2.weight"), ("norm_1/offset", "ln_2.bias"),
               ("mlp/dense_0/w", "mlp.c_fc.weight"), ("mlp/dense_0/b", "mlp.c_fc.bias"),
               ("mlp/dense_1/w", "mlp.c_proj.weight"), ("mlp/dense_1/b", "mlp.c_proj.bias")]
_LLAMA_BLOCK = [("norm_0/scale", "input_layernorm.weight"), ("norm_1/scale", "post_attention_layernorm.weight"),
                *((f"attention/{p}/w", f"self_attn.{p[0]}_proj.weight") for p in ("query", "key", "value", "out")),
                ("mlp/gate/w", "mlp.gate_proj.weight"), ("mlp/dense_0/w", "mlp.up_proj.weight"),
                ("mlp/dense_1/w", "mlp.down_proj.weight")]
# What each family needs of decoder_lm's options (to_hf's check).
_FAMILIES = {"gpt2": dict(positional=("learned",), norm=("layer",), mlp=("gelu", "gelu_tanh"), use_bias=(True,),
                          tied=(True,), embedding_scale=(1.0,), num_kv_heads=(None,), attention_bias=(None,)),
             "llama": dict(positional=("rope",), norm=("rms",), mlp=("swiglu",), use_bias=(False,),
                           embedding_scale=(1.0,), attention_bias=(None,))}
_BUFFERS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")   # in some checkpoints; not weights


def _config_dict(config) -> dict:
    if isinstance(config, (str, os.PathLike)):
        return json.loads(pathlib.Path(config).read_text())
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def _unsupported(kind: str, config: dict, **needed) -> None:
    bad = [f"{k}={config[k]!r}" for k, want in needed.items() if config.get(k) not in (None, want)]
    if bad:
        raise ValueError(f"jnn.hub: a {kind} config with {', '.join(bad)} has no jnn.decoder_lm equivalent")


def lm_options(config) -> dict:
    """:func:`jnn.decoder_lm`'s arguments for a ``transformers`` config (a dict, a ``config.json``
    path or a ``PretrainedConfig``): GPT-2 (learned positions, layer norms, (tanh-)GELU, biases, tied
    head) or Llama/Mistral (RMS norms, SwiGLU, RoPE with ``"linear"``/``"llama3"`` scaling, grouped
    KV heads, no biases, a sliding window as ``attention_bias``); other settings raise.

    Example:
      >>> opts = lm_options({"model_type": "gpt2", "vocab_size": 50, "n_positions": 32, "n_embd": 16,
      ...                    "n_layer": 2, "n_head": 2})
      >>> opts["mlp"], opts["mlp_dim"], opts["embedding_scale"]
      ('gelu_tanh', 64, 1.0)
    """
    c = _config_dict(config)
    kind, common = c.get("model_type"), dict(vocab_size=c.get("vocab_size"), embedding_scale=1.0)
    if kind == "gpt2":
        act = c.get("activation_function", "gelu_new")
        _unsupported(kind, c, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                     scale_attn_weights=True, add_cross_attention=False, tie_word_embeddings=True,
                     activation_function=act if act in ("gelu", "gelu_new", "gelu_pytorch_tanh") else None)
        return dict(common, num_layers=c["n_layer"], num_heads=c["n_head"], features=c["n_embd"],
                    mlp_dim=c.get("n_inner") or 4 * c["n_embd"], max_len=c["n_positions"], tied=True,
                    positional="learned", norm="layer", norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
                    mlp="gelu" if act == "gelu" else "gelu_tanh", use_bias=True)
    if kind not in ("llama", "mistral"):
        raise ValueError(f"jnn.hub: model_type {kind!r} is not supported ('gpt2', 'llama', 'mistral')")
    _unsupported(kind, c, hidden_act="silu", attention_bias=False, mlp_bias=False,
                 head_dim=c["hidden_size"] // c["num_attention_heads"])
    window = c.get("sliding_window") if c.get("use_sliding_window", True) else None
    rope = c.get("rope_parameters") or {**(c.get("rope_scaling") or {}), "rope_theta": c.get("rope_theta", 1e4)}
    return dict(common, num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                features=c["hidden_size"], mlp_dim=c["intermediate_size"], max_len=c["max_position_embeddings"],
                tied=bool(c.get("tie_word_embeddings", False)), num_kv_heads=c.get("num_key_value_heads"),
                positional="rope", norm="rms", norm_epsilon=c.get("rms_norm_eps", 1e-6), mlp="swiglu",
                use_bias=False, rope_base=rope.get("rope_theta", 1e4),
                attention_bias=functools.partial(sliding_window_mask, window=window) if window else None,
                rope_scaling={k: v for k, v in rope.items() if k != "rope_theta"} or None)


def _layout(o) -> list[tuple[list[str], str, bool]]:
    """``(jnn paths, HF name, transposed)`` per HF tensor of a decoder_lm with options ``o``; several
    jnn paths split the HF tensor's last axis (GPT-2's fused ``c_attn``)."""
    gpt2 = o["positional"] == "learned"
    top = ([("embedding/embedding", "wte.weight"), ("position/embedding", "wpe.weight"),
            ("final_norm/scale", "ln_f.weight"), ("final_norm/offset", "ln_f.bias")] if gpt2 else
           [("embedding/embedding", "embed_tokens.weight"), ("final_norm/scale", "norm.weight")])
    for i in range(o["num_layers"]):
        top += [(" ".join(f"block_{i}/{q}" for q in paths.split()), f"{'h' if gpt2 else 'layers'}.{i}.{name}")
                for paths, name in (_GPT2_BLOCK if gpt2 else _LLAMA_BLOCK)]
    prefix = "transformer." if gpt2 else "model."
    head = [] if o["tied"] else [(["head/w"], "lm_head.weight", True)]
    return [(p.split(), prefix + name, not gpt2 and name.endswith("_proj.weight")) for p, name in top] + head


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value)


def _scanned(flat: dict, n: int, stack: bool) -> dict:
    """``block_i/...`` entries stacked into ``blocks/...`` (``stack``), or the reverse."""
    if stack:
        rest = [p[len("block_0/"):] for p in flat if p.startswith("block_0/")]
        blocks = {f"blocks/{r}": np.stack([flat.pop(f"block_{i}/{r}") for i in range(n)]) for r in rest}
        return {**flat, **blocks}
    out = {}
    for p, a in flat.items():
        out.update({f"block_{i}/{p[len('blocks/'):]}": a[i] for i in range(n)} if p.startswith("blocks/") else {p: a})
    return out


def from_hf(source, config=None, *, dtype=np.float32, **options):
    """``(model, params)``: a :func:`jnn.decoder_lm` and its params from a ``transformers`` GPT-2 or
    Llama-style checkpoint.

    Args:
      source: a ``state_dict`` (``model.state_dict()``: torch tensors or arrays), a ``.safetensors``
        file or a directory of them (``save_pretrained``'s, shards included).
      config: the ``transformers`` config (dict, ``config.json`` path or config object); default
        the ``config.json`` beside ``source``.
      dtype: the params' dtype.
      **options: more :func:`jnn.decoder_lm` arguments (``dropout_rate``, ``scan_layers``, ``remat``...).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.decoder_lm(10, 1, 2, 4, 16, 8, mlp="gelu_tanh", embedding_scale=1.0)   # GPT-2's layout
      >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
      >>> state_dict, config = jnn.hub.to_hf(lm, params)   # "transformer.h.0.attn.c_attn.weight", ...
      >>> lm, loaded = jnn.hub.from_hf(state_dict, config)
      >>> bool((loaded["block_0"]["attention"]["key"]["w"] == params["block_0"]["attention"]["key"]["w"]).all())
      True
    """
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"jnn.hub.from_hf: no .safetensors file in {path}")
        source = {k: v for file in files for k, v in io.load_params(file).items()}
        config = (path if path.is_dir() else path.parent) / "config.json" if config is None else config
    if config is None:
        raise ValueError("jnn.hub.from_hf: pass config= (the model's config.json, its dict or config object)")
    model = decoder_lm(**{**lm_options(config), **options})
    o, prefix = model.config, "transformer." if model.config["positional"] == "learned" else "model."
    if not any(k.startswith(prefix) for k in source):   # saved from the bare GPT2Model / LlamaModel
        source = {k if k.startswith("lm_head.") else prefix + k: v for k, v in source.items()}
    layout = _layout(o)
    missing = [name for _, name, _ in layout if name not in source]
    used = {name for _, name, _ in layout} | ({"lm_head.weight"} if o["tied"] else set())
    unused = [k for k in source if k not in used and not k.endswith(_BUFFERS)]
    if missing or unused:
        raise ValueError(f"jnn.hub.from_hf: the checkpoint does not match the config's layout: missing "
                         f"{missing or 'nothing'}; unexpected {unused or 'nothing'}")
    flat = {}
    for paths, name, transposed in layout:
        value = _numpy(source[name])
        flat.update(zip(paths, np.split(value.T if transposed else value, len(paths), axis=-1)))
    like = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1), np.int32))[0]
    like = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, dtype), like)
    return model, io.unflatten(_scanned(flat, o["num_layers"], o["scan_layers"]), like=like,
                               where="jnn.hub.from_hf")


def _hf_config(o, dtype) -> dict:
    family = "gpt2" if o["positional"] == "learned" else "llama"
    o = {**o, "num_kv_heads": None if o["num_kv_heads"] in (None, o["num_heads"]) else o["num_kv_heads"]}
    bad = [f"{k}={o[k]!r} (needs {' or '.join(map(repr, ok))})" for k, ok in _FAMILIES[family].items()
           if o[k] not in ok]
    if bad:
        raise ValueError(f"jnn.hub.to_hf: this decoder_lm has no transformers layout: as {family}, "
                         f"{'; '.join(bad)}")
    if family == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=o["vocab_size"],
                    n_positions=o["max_len"], n_embd=o["features"], n_layer=o["num_layers"], n_head=o["num_heads"],
                    n_inner=o["mlp_dim"], activation_function="gelu" if o["mlp"] == "gelu" else "gelu_new",
                    layer_norm_epsilon=o["norm_epsilon"], tie_word_embeddings=True, dtype=dtype)
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=o["vocab_size"],
                hidden_size=o["features"], intermediate_size=o["mlp_dim"], num_hidden_layers=o["num_layers"],
                num_attention_heads=o["num_heads"], num_key_value_heads=o["num_kv_heads"] or o["num_heads"],
                max_position_embeddings=o["max_len"], rms_norm_eps=o["norm_epsilon"], rope_theta=o["rope_base"],
                rope_scaling=o["rope_scaling"], tie_word_embeddings=o["tied"], hidden_act="silu",
                attention_bias=False, mlp_bias=False, dtype=dtype)


def to_hf(model, params) -> tuple[dict, dict]:
    """``(state_dict, config)``: the params of a GPT-2- or Llama-style :func:`jnn.decoder_lm` (as
    :func:`from_hf` builds) in ``transformers``' layout (NumPy arrays) and its ``config.json`` dict.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.decoder_lm(10, 1, 2, 4, 16, 8, positional="rope", norm="rms", mlp="swiglu", use_bias=False,
      ...                     embedding_scale=1.0, tied=False)
      >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
      >>> state_dict, config = jnn.hub.to_hf(lm, params)
      >>> config["model_type"], state_dict["model.layers.0.mlp.up_proj.weight"].shape
      ('llama', (16, 4))
    """
    o, flat = model.config, io.flatten(params)
    config = _hf_config(o, str(next(iter(flat.values())).dtype))
    flat = _scanned(flat, o["num_layers"], False)
    state = {}
    for paths, name, transposed in _layout(o):
        value = np.concatenate([flat[p] for p in paths], axis=-1)
        state[name] = np.ascontiguousarray(value.T if transposed else value)
    if o["tied"]:
        state["lm_head.weight"] = state[_layout(o)[0][1]].copy()
    return state, config


def save_hf(directory, model, params, *, overwrite: bool = False) -> None:
    """Writes :func:`to_hf`'s ``config.json`` and ``model.safetensors`` into ``directory``, for
    ``transformers.AutoModelForCausalLM.from_pretrained(directory)``.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp, jnn
      >>> lm = jnn.decoder_lm(10, 1, 2, 4, 16, 8, mlp="gelu_tanh", embedding_scale=1.0)
      >>> directory = tempfile.mkdtemp()
      >>> jnn.hub.save_hf(directory, lm, lm.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))[0])
      >>> jnn.hub.from_hf(directory)[0].config["mlp"]
      'gelu_tanh'
    """
    state, config = to_hf(model, params)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    io.atomic_write(directory / "config.json", json.dumps(config, indent=2).encode(), overwrite=overwrite,
                    where="jnn.hub.save_hf")
    io.save_params(directory / "model.safetensors", state, overwrite=overwrite, metadata={"format": "pt"})
