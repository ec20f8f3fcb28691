"""jnn.hub against transformers itself: GPT-2 and Llama models at random init (no network)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = dict(rtol=1e-5, atol=1e-5)
SMALL = dict(vocab_size=61, bos_token_id=None, eos_token_id=None, pad_token_id=None)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=4, **SMALL),
    "gpt2_exact_gelu": lambda: transformers.GPT2Config(n_positions=24, n_embd=12, n_layer=1, n_head=3, n_inner=20,
                                                       activation_function="gelu", layer_norm_epsilon=1e-4, **SMALL),
    "llama_gqa": lambda: transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=32, rope_theta=500.0, **SMALL),
    "llama_tied_llama3_rope": lambda: transformers.LlamaConfig(
        hidden_size=16, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8}, **SMALL),
    "mistral_sliding_window": lambda: transformers.MistralConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32, sliding_window=3, **SMALL),
    "llama_linear_rope": lambda: transformers.LlamaConfig(
        hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=32, rope_scaling={"rope_type": "linear", "factor": 4.0}, **SMALL),
}


def hf_model(name, seed=0):
    """A transformers causal LM at random init, every weight (norms and biases too) perturbed."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.array(tokens), dtype=torch.long)).logits.numpy()


def tokens(batch=2, length=9, vocab=61, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, length)), jnp.int32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_and_greedy_generation_match_transformers(name):
    model = hf_model(name)
    lm, params = jnn.hub.from_hf(model.state_dict(), model.config)
    x = tokens()
    np.testing.assert_allclose(lm.apply(params, {}, x)[0], hf_logits(model, x), **TOL)
    cached = jnn.generate.generate(lm, params, x[:, :4], 12, key=jax.random.key(0), temperature=0.0)
    with torch.no_grad():
        expected = model.generate(torch.as_tensor(np.array(x[:, :4]), dtype=torch.long), max_new_tokens=12,
                                  min_new_tokens=12, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(cached), expected.numpy())   # the prompt, then 12 new tokens


def test_cached_decode_steps_match_transformers_logits():
    model = hf_model("llama_gqa", seed=3)
    lm, params = jnn.hub.from_hf(model.state_dict(), model.config)
    x = tokens(length=7, seed=5)
    cache = lm.methods["init_cache"](2)
    steps = []
    for t in range(7):
        logits, cache = lm.methods["decode_step"](params, cache, x[:, t], t)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, 1), hf_logits(model, x), **TOL)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "llama_tied_llama3_rope"])
def test_export_round_trip_loads_in_transformers(name, tmp_path):
    model = hf_model(name, seed=7)
    lm, params = jnn.hub.from_hf(model.state_dict(), model.config)
    params = jax.tree.map(lambda a: a + 0.01 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), params)  # "fine-tuned"
    x = tokens(seed=2)
    ours = lm.apply(params, {}, x)[0]
    state_dict, config = jnn.hub.to_hf(lm, params)
    assert jnn.hub.from_hf(state_dict, config)[0].config == lm.config   # the written config reads back
    fresh = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config)).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    np.testing.assert_allclose(hf_logits(fresh, x), ours, **TOL)
    jnn.hub.save_hf(tmp_path, lm, params)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(hf_logits(loaded, x), ours, **TOL)


def test_safetensors_directory_and_scanned_layers(tmp_path):
    model = hf_model("gpt2", seed=4)
    model.save_pretrained(tmp_path)
    lm, params = jnn.hub.from_hf(tmp_path)
    scanned, stacked = jnn.hub.from_hf(tmp_path / "model.safetensors", tmp_path / "config.json", scan_layers=True)
    x = tokens(seed=6)
    np.testing.assert_allclose(lm.apply(params, {}, x)[0], hf_logits(model, x), **TOL)
    np.testing.assert_allclose(scanned.apply(stacked, {}, x)[0], lm.apply(params, {}, x)[0], **TOL)
    back, _ = jnn.hub.to_hf(scanned, stacked)
    for k, v in model.state_dict().items():
        if k in back:
            np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_bare_model_state_dict_and_bfloat16():
    model = hf_model("llama_gqa", seed=8)
    bare = {k.removeprefix("model."): v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    _, params = jnn.hub.from_hf(bare, model.config.to_dict(), dtype=jnp.bfloat16)
    w = params["block_1"]["attention"]["key"]["w"]
    assert w.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(w, np.float32), bare["layers.1.self_attn.k_proj.weight"].float().numpy().T)


@pytest.mark.parametrize("context", [8, 100])   # 100: a frequency other than 1 in llama3's smooth band
def test_rope_scaling_frequencies_match_transformers(context):
    config = CONFIGS["llama_tied_llama3_rope"]()
    config.rope_scaling = {**config.rope_scaling, "original_max_position_embeddings": context}
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    positions = torch.arange(20)[None]
    x = torch.ones(1, 20, 8)
    cos, sin = rotary(x, positions)
    q = np.random.default_rng(0).normal(size=(1, 20, 1, 8)).astype(np.float32)
    rotate_half = np.concatenate([-q[..., 4:], q[..., :4]], -1)
    expected = q * cos.numpy()[:, :, None] + rotate_half * sin.numpy()[:, :, None]
    got = jnn.layers.positional.apply_rope(jnp.asarray(q), jnp.arange(20), scaling=jnn.hub.lm_options(config)[
        "rope_scaling"])
    np.testing.assert_allclose(got, expected, **TOL)


def test_unsupported_configs_and_mismatched_checkpoints_are_named():
    with pytest.raises(ValueError, match="llama config with attention_bias=True"):
        jnn.hub.lm_options(transformers.LlamaConfig(attention_bias=True))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        jnn.hub.lm_options({"model_type": "bert"})
    with pytest.raises(ValueError, match="rope_scaling must be None or a dict"):
        jnn.hub.from_hf({}, transformers.LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    model = hf_model("gpt2")
    state = dict(model.state_dict())
    state.pop("transformer.h.1.mlp.c_fc.bias")
    state["transformer.h.1.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'\]; unexpected "
                                         r"\['transformer.h.1.extra'\]"):
        jnn.hub.from_hf(state, model.config)
    with pytest.raises(ValueError, match="from_hf: pass config="):
        jnn.hub.from_hf(state)
    lm = jnn.decoder_lm(11, 1, 2, 8, 16, 8)
    params, _ = lm.init(jax.random.key(0), tokens(1, 3, 11))
    with pytest.raises(ValueError, match=r"as gpt2, embedding_scale=None \(needs 1.0\)"):
        jnn.hub.to_hf(lm, params)

