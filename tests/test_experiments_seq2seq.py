"""experiments/seq2seq.py on a tiny config: the encoder-decoder learns to reverse short digit
strings (exact match on trained lengths far above chance), and the on-the-fly data is right."""
import jax
import jax.numpy as jnp
import numpy as np
from experiments_path import load

seq2seq = load("seq2seq")
TINY = dict(layers=1, heads=2, features=32, mlp_dim=64, train_max_len=4, holdout_len=3, eval_max_len=6,
            steps=300, batch_size=32, eval_examples=50, learning_rate=1e-2)


def test_batches_hold_reversed_digit_strings():
    source, lengths, decoder_in, answer, mask = seq2seq.make_batch(jax.random.key(0), 16, jnp.asarray([2, 5]), 6)
    for s, n, d, a, m in zip(*(np.asarray(v) for v in (source, lengths, decoder_in, answer, mask))):
        assert n in (2, 5) and (s[n:] == seq2seq.PAD).all() and (s[:n] >= seq2seq.DIGIT0).all()
        np.testing.assert_array_equal(a[:n], s[:n][::-1])
        assert a[n] == seq2seq.END and d[0] == seq2seq.START and (d[1:] == a[:-1]).all()
        assert m.sum() == n + 1


def test_seq2seq_tiny_config_learns_to_reverse():
    result = seq2seq.main(seq2seq.Config(**TINY))
    # chance of an exact 1..4-digit reversal is at most 10%; the loss starts near ln(13) = 2.6
    assert result["in_distribution"] > 0.8, result["per_length"]
    assert result["final_loss"] < 0.5 * result["history"][0]
