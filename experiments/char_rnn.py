"""A character-level LSTM language model on Tiny Shakespeare, and text sampled from it.

    python experiments/char_rnn.py                        # default: val < 1.8 nats/char in <= 6 min
    python experiments/char_rnn.py --layers 2 --hidden 512 --epochs 30   # bigger: slower, lower loss
    python experiments/char_rnn.py --prompt "ROMEO:" --temperature 0.6 --sample-length 600

Data: ``$JNN_DATA_DIR/tinyshakespeare/input.txt``; the first 90% of the characters train, the
last 10% validate; the vocabulary (``jnn.data.CharVocab``) is built from the whole text.

Network: ``embedding(V, E) -> recurrent(lstm_cell(H)) x layers -> dense(V)`` over ``[B, T]``
windows: every position predicts the next character. Training draws ``batch_size`` fresh windows
at random starts for every step (``jnn.data.random_windows``) inside a jitted ``lax.scan`` of
``steps_per_epoch`` steps, so Python runs once per "epoch"; Adam with warm-up + cosine decay
and gradient clipping by global norm. Validation loss is the mean cross-entropy, in nats per
character, over every position of the non-overlapping length-``seq_len`` windows that cover the
validation text (each window starts from a zero carry), measured after every epoch.

Default config, measured on the shared 2-core CPU (heavily loaded: ~0.5 s a step): 600 steps
of 64 windows x 64 characters, validation 1.704 nats/char (2.46 bits/char) in 320 s, inside the
stated 6-minute budget; the sample has speaker names in capitals with colons and verse lines.

Data, training loop, validation and saving are shared with ``char_transformer.py`` in
``char_lm.py``. Sampling is one jitted function: a ``lax.scan`` feeds the prompt through the cells step by step,
then a second ``lax.scan`` draws ``sample_length`` characters from ``softmax(logits / temperature)``
and feeds each back in, carrying the LSTM states.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

import jnn
from char_lm import LMConfig, run, split_text  # noqa: F401  (split_text: used by the tests)
from char_lm import optimizer as _optimizer
from common import parse_config


@dataclasses.dataclass
class Config(LMConfig):
    """Character-level LSTM language model on Tiny Shakespeare."""
    hidden: int = 256
    layers: int = 1
    embed: int = 64


class CharLSTM(NamedTuple):
    """The network and the pieces the sampler steps through one character at a time."""
    net: jnn.Layer            # [B, T] ids -> [B, T, V] logits
    embed: jnn.Layer
    cells: tuple              # one lstm_cell per recurrent layer, params under "lstm_{i}"
    head: jnn.Layer


def model(vocab_size: int, config: Config) -> CharLSTM:
    embed = jnn.embedding(vocab_size, config.embed, name="embed")
    cells = tuple(jnn.lstm_cell(config.hidden) for _ in range(config.layers))
    rnns = [jnn.recurrent(cell, name=f"lstm_{i}") for i, cell in enumerate(cells)]
    head = jnn.dense(vocab_size, name="head")
    return CharLSTM(jnn.serial(embed, *rnns, head), embed, cells, head)


def optimizer(config: Config):
    return _optimizer(config, "char_rnn")


def make_sampler(lm: CharLSTM, sample_length: int):
    """A jitted ``(params, prompt_ids [P], key, temperature) -> ids [sample_length]``.

    One ``lax.scan`` feeds the prompt through the cells, a second draws each new character from
    ``softmax(logits / temperature)`` (the arg-max when ``temperature == 0``) and feeds it back;
    the carries are the LSTMs' ``(c, h)``. ``temperature`` is traced: changing it does not
    recompile.
    """
    def advance(params, carries, token):
        x = lm.embed.apply(params["embed"], {}, token[None])[0]                      # [1, E]
        new = []
        for i, (cell, carry) in enumerate(zip(lm.cells, carries)):
            carry, x = cell.step(params[f"lstm_{i}"], carry, x)
            new.append(carry)
        return lm.head.apply(params["head"], {}, x)[0][0], tuple(new)                # [V]

    @jax.jit
    def sample(params, prompt_ids, key, temperature):
        carries = tuple(cell.initial_carry((1,)) for cell in lm.cells)
        logits = jnp.zeros(params["head"]["b"].shape, jnp.float32)
        (logits, carries), _ = jax.lax.scan(
            lambda state, token: (advance(params, state[1], token), None), (logits, carries), prompt_ids)

        def draw(state, k):
            logits, carries = state
            sampled = jax.random.categorical(k, logits / jnp.maximum(temperature, 1e-6))
            token = jnp.where(temperature > 0, sampled, jnp.argmax(logits)).astype(jnp.int32)
            return advance(params, carries, token), token

        return jax.lax.scan(draw, (logits, carries), jax.random.split(key, sample_length))[1]

    return sample


def main(config: Config) -> dict:
    def build(vocab_size):
        lm = model(vocab_size, config)
        return lm.net, make_sampler(lm, config.sample_length)

    return run("char_rnn", config, build)


if __name__ == "__main__":
    main(parse_config(Config))
