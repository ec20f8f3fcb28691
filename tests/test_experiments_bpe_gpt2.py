"""experiments/bpe_gpt2.py (a tokenizers BPE and a jnn GPT-2 saved as a Hugging Face checkpoint):
the ids decode back to the text, and transformers reads the same ids and logits from the files."""
import importlib
import math
import sys

import numpy as np
import pytest

from experiments_path import load

SMALL = dict(text_limit=60_000, vocab_size=300, seq_len=32, layers=1, features=32, epochs=2, batch_size=16,
             sample_tokens=10)


def test_without_tokenizers_it_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)        # import tokenizers fails
    monkeypatch.delitem(sys.modules, "bpe_gpt2", raising=False)
    with pytest.raises(SystemExit, match=r'pip install "jnn\[tokenizers\]"'):
        importlib.import_module("bpe_gpt2")


def test_ids_round_trip_and_transformers_reads_the_checkpoint(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    bpe = load("bpe_gpt2")
    run = bpe.main(bpe.Config(**SMALL, out=str(tmp_path)))
    directory, val_text = run["directory"], run["val_text"]
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 300
    unseen = "Señor — “¿qué?”\n\n\tzebra 42 日本"                      # bytes the training text never had
    for text in (val_text, unseen):
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text and max(ids) < 300
    assert 1.2 < run["chars_per_token"] < 3                          # merges shorten the text; measured 1.41
    assert run["val_loss"] < math.log(300) - 1.0                     # learned: measured 3.53 (uniform: 5.70 nats)
    assert run["sample"].startswith("ROMEO:\n") and len(run["sample"]) > len("ROMEO:\n")

    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_hub import TOL, hf_logits
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    ids = tokenizer.encode(val_text[:300]).ids
    assert fast(val_text[:300])["input_ids"] == ids and fast.decode(ids) == val_text[:300]
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    x = np.array([ids[:64]])
    assert hf.config.vocab_size == 300
    np.testing.assert_allclose(run["model"].apply(run["params"], {}, x)[0], hf_logits(hf, x), **TOL)
