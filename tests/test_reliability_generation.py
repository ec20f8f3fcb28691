"""Reliability, category 7: generation with tiny temperatures and bad prompts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.generate import generate, generate_uncached, sample_logits
from jnn.nets import decoder_lm

LM = decoder_lm(vocab_size=12, num_layers=1, num_heads=2, features=8, mlp_dim=16, max_len=16)
PARAMS, _ = LM.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_tiny_positive_temperature_is_greedy_not_token_zero():
    logits = jnp.array([[0.0, 5.0, 1.0], [3.0, -1.0, 7.5]])
    for t in (1e-45, 1e-30, 1e-9):
        np.testing.assert_array_equal(sample_logits(jax.random.key(1), logits, temperature=t), [1, 2])
    prompt = jnp.array([[1, 2, 3]])
    tiny = generate(LM, PARAMS, prompt, 4, key=jax.random.key(2), temperature=1e-45)
    greedy = generate(LM, PARAMS, prompt, 4, key=jax.random.key(3), temperature=0.0)
    np.testing.assert_array_equal(tiny, greedy)
    # greedy against an independent argmax over the reference model's logits
    logits = LM.apply(PARAMS, {}, prompt)[0]
    assert int(greedy[0, 3]) == int(np.argmax(np.asarray(logits[0, -1])))


@pytest.mark.parametrize("bad, shown", [(12, 12), (-1, -1)])
def test_prompt_ids_outside_the_vocabulary_fail_eagerly(bad, shown):
    prompt = jnp.array([[1, bad, 3]])
    for fn, where in ((generate, "generate"), (generate_uncached, "generate_uncached")):
        with pytest.raises(ValueError, match=rf"{where}: prompt token ids must lie in \[0, 12\), got {shown}"):
            fn(LM, PARAMS, prompt, 2, key=jax.random.key(0))
