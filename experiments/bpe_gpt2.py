"""A GPT-2 on Tiny Shakespeare with a ``tokenizers`` BPE, as a Hugging Face checkpoint, offline.

A byte-level BPE (GPT-2's kind: any text decodes back exactly) is trained in memory on the
training text; a GPT-2-shaped :func:`jnn.decoder_lm` (``jnn.hub.lm_options`` of a GPT-2 config)
trains on its ids; ``jnn.hub.save_hf`` and ``tokenizer.save`` write ``config.json``,
``model.safetensors`` and ``tokenizer.json`` (``transformers`` loads them); ``jnn.hub.from_hf`` and
``Tokenizer.from_file`` read them back to continue a prompt.

    pip install "jnn[tokenizers]"
    python experiments/bpe_gpt2.py                 # 1-2 minutes on 2 CPU cores
    python experiments/bpe_gpt2.py --vocab-size 4096 --epochs 10 --layers 4 --features 256

For GPT-2's own ids, ``tiktoken.get_encoding("gpt2")`` (downloaded at first use) or the
checkpoint's ``tokenizer.json`` replace the trained BPE (guides/huggingface.md).
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from char_lm import split_text
from common import parse_config, run_dir

try:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError as error:
    raise SystemExit('experiments/bpe_gpt2.py needs the tokenizers package: pip install "jnn[tokenizers]"') from error


@dataclasses.dataclass
class Config:
    """GPT-2 on Tiny Shakespeare with a byte-level BPE trained by `tokenizers`, saved for transformers."""
    vocab_size: int = 1024           # BPE vocabulary (256 bytes + merges)
    seq_len: int = 128               # tokens per training window
    layers: int = 2
    features: int = 128              # 4 heads, MLP 4x
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    text_limit: int = 0              # use only the first N characters (0: all)
    prompt: str = "ROMEO:\n"
    sample_tokens: int = 60
    seed: int = 0
    out: str = "runs"                # the checkpoint goes to out/bpe_gpt2 ("": a temporary folder)


def train_bpe(text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer and decoder) trained on ``text``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tokenizer


def main(config: Config) -> dict:
    text = jnn.data.load_tiny_shakespeare()[: config.text_limit or None]
    train_text, val_text = split_text(text, 0.1, "bpe_gpt2")
    tokenizer = train_bpe(train_text, config.vocab_size)
    train_ids, val_ids = (np.array(tokenizer.encode(t).ids, np.int32) for t in (train_text, val_text))
    chars_per_token = len(val_text) / len(val_ids)
    print(f"BPE of {tokenizer.get_vocab_size()} tokens: {len(train_ids):,} training tokens, "
          f"{chars_per_token:.2f} characters per token")

    gpt2 = {"model_type": "gpt2", "vocab_size": tokenizer.get_vocab_size(), "n_positions": 2 * config.seq_len,
            "n_embd": config.features, "n_layer": config.layers, "n_head": 4}
    lm = jnn.decoder_lm(**jnn.hub.lm_options(gpt2))
    result = jnn.train.fit(lm, jnn.losses.softmax_cross_entropy, optax.adam(config.learning_rate),
                           jnn.data.lm_windows(train_ids, config.seq_len), batch_size=config.batch_size,
                           epochs=config.epochs, val_data=jnn.data.lm_windows(val_ids, config.seq_len), metrics={},
                           key=jax.random.key(config.seed), verbose=2)
    val_loss = float(result.history["val_loss"][-1])
    print(f"validation: {val_loss:.4f} nats/token, {val_loss / chars_per_token:.4f} nats/char")

    directory = run_dir(config.out, "bpe_gpt2") or pathlib.Path(tempfile.mkdtemp())
    jnn.hub.save_hf(directory, lm, result.train_state.params)
    tokenizer.save(str(directory / "tokenizer.json"))
    lm, params = jnn.hub.from_hf(directory)                       # what a reader of the checkpoint gets
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    prompt = jnp.array([tokenizer.encode(config.prompt).ids])
    out = jnn.generate.generate(lm, params, prompt, config.sample_tokens, key=jax.random.key(config.seed),
                                temperature=0.8)
    sample = tokenizer.decode(out[0].tolist())
    print(f"saved to {directory} (config.json, model.safetensors, tokenizer.json); a sample:\n{sample}")
    return {"directory": directory, "model": lm, "params": params, "val_loss": val_loss,
            "chars_per_token": chars_per_token, "sample": sample, "val_text": val_text}


if __name__ == "__main__":
    main(parse_config(Config))
