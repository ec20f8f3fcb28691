"""jnn.train.permutation: a sort-free random permutation (epoch shuffles)."""
import jax
import numpy as np
import pytest

from jnn.train.permutation import permutation


@pytest.mark.parametrize("n", [1, 2, 3, 10, 257, 1797])
def test_it_is_a_permutation_and_vmapped_equals_alone(n):
    keys = jax.random.split(jax.random.key(n), 8)
    batched = np.asarray(jax.jit(jax.vmap(lambda k: permutation(k, n)))(keys))
    for key, row in zip(keys, batched):
        np.testing.assert_array_equal(np.sort(row), np.arange(n))
        np.testing.assert_array_equal(row, np.asarray(permutation(key, n)))
    if n > 3:
        assert len({tuple(r) for r in batched}) == 8  # keys give different permutations


def test_positions_are_uniform_and_neighbours_independent():
    """Over 20,000 keys each element lands in each of 10 positions with frequency 0.1 (binomial
    z-scores within 4.5; 4 mixing rounds instead of 6 give 5.2), and i+1 follows i 10% of the time."""
    draws = np.asarray(jax.jit(jax.vmap(lambda k: permutation(k, 10)))(jax.random.split(jax.random.key(1), 20000)))
    freq = np.stack([np.bincount(draws[:, j], minlength=10) for j in range(10)]) / len(draws)
    z = np.abs(freq - 0.1) / np.sqrt(0.1 * 0.9 / len(draws))
    assert z.max() < 4.5
    assert np.mean(draws[:, 1:] == draws[:, :-1] + 1) == pytest.approx(0.1, abs=0.005)
    assert len({tuple(r) for r in draws}) > 19800  # of 10! = 3.6M; a perfect shuffle gives ~19945


def test_bad_n_is_refused():
    with pytest.raises(ValueError, match=r"permutation: n must be an integer in \[1, 2\*\*31\), got 0"):
        permutation(jax.random.key(0), 0)
