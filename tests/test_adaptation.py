"""service.adaptation: the cache against the paper's formula, the mixture against brute force.

The mixture's top-k is checked on random full distributions (hypothesis draws the vocabulary
size, tree probabilities with frequent ties, the cache's contents, filters, ``k`` and how long
a list the tree hands over), and end to end on a real :class:`service.decode.DecodeTree` with a
prefix filter, the way a predictor composes it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adaptation import (
    CacheConfig,
    ContinuousCache,
    mixture_log_probs,
    quantize,
    session_lam,
    state_bytes,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-9


def direct_cache_probs(
    hiddens: npt.NDArray[np.float64], next_ids: npt.NDArray[np.int64], h: npt.NDArray[np.float64],
    theta: float, num_words: int,
) -> npt.NDArray[np.float64]:  # fmt: skip
    """p_cache(w | h) for every word, straight from the paper's formula (float64)."""
    weights = np.exp(theta * (hiddens @ h))
    out = np.zeros(num_words)
    for weight, word in zip(weights, next_ids, strict=True):
        out[word] += weight
    return out / weights.sum()


def filled(
    size: int, pairs: int, d: int, rng: np.random.Generator, theta: float = 0.5
) -> tuple[ContinuousCache, npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    cache = ContinuousCache(size, d, theta=theta, dtype="float32")
    hiddens = rng.standard_normal((pairs, d)).astype(np.float32)
    ids = rng.integers(0, 12, pairs)
    cache.add(hiddens, ids)
    return cache, hiddens, ids


# -- the cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [0.0, 0.3, 2.0])
def test_distribution_matches_the_formula(theta: float) -> None:
    rng = np.random.default_rng(0)
    cache, hiddens, ids = filled(64, 40, 8, rng, theta=theta)
    h = rng.standard_normal(8).astype(np.float32)
    dist = cache.distribution(h)
    expected = direct_cache_probs(hiddens.astype(np.float64), ids, h.astype(np.float64), theta, 12)
    np.testing.assert_array_equal(dist.ids, np.flatnonzero(expected))
    np.testing.assert_allclose(dist.probs, expected[dist.ids], rtol=1e-5)
    assert dist.probs.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(dist.probs_of(np.arange(12)), expected, rtol=1e-5, atol=1e-15)


def test_distribution_is_stable_for_large_scores() -> None:
    cache = ContinuousCache(4, 2, theta=1.0)
    cache.add(np.array([[1000.0, 0.0], [999.0, 0.0], [0.0, 1.0]], np.float32), [3, 5, 3])
    dist = cache.distribution(np.array([1.0, 0.0], np.float32))
    assert np.isfinite(dist.probs).all()
    np.testing.assert_allclose(dist.probs, [1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))])


def test_empty_cache_gives_an_empty_distribution() -> None:
    cache = ContinuousCache(8, 3, theta=0.5)
    dist = cache.distribution(np.ones(3, np.float32))
    assert dist.ids.shape == dist.probs.shape == (0,)
    assert len(cache) == 0
    assert session_lam(cache, 0.3) == 0.0
    np.testing.assert_array_equal(dist.probs_of([0, 1]), [0.0, 0.0])
    off = ContinuousCache(0, 3, theta=0.5)
    off.add(np.ones((2, 3)), [1, 2])
    assert len(off) == 0
    assert off.nbytes == 0


@given(
    size=st.integers(1, 20),
    chunks=st.lists(st.integers(0, 30), max_size=8),
    dtype=st.sampled_from(["int8", "float16", "float32"]),
)
@SETTINGS
def test_ring_buffer_keeps_the_last_size_pairs(size: int, chunks: list[int], dtype: str) -> None:
    d = 3
    cache = ContinuousCache(size, d, theta=0.5, dtype=dtype)
    rng = np.random.default_rng(size)
    total = sum(chunks)
    hiddens = rng.standard_normal((total, d)).astype(np.float16).astype(np.float32)
    if dtype == "int8":  # what int8 storage gives back: each row's steps times its scale
        steps, scale = quantize(hiddens)
        hiddens = steps.astype(np.float32) * scale[:, None]
    ids = np.arange(total, dtype=np.int64)
    start = 0
    for count in chunks:
        cache.add(hiddens[start : start + count], ids[start : start + count])
        start += count
        kept_h, kept_ids = cache.pairs()
        keep = slice(max(0, start - size), start)
        np.testing.assert_array_equal(kept_ids, ids[keep])
        np.testing.assert_allclose(kept_h, hiddens[keep], rtol=1e-6)
        assert len(cache) == min(size, start)
        assert cache.nbytes <= size * state_bytes(d, dtype)
    if total >= size:
        assert cache.nbytes == size * state_bytes(d, dtype)
        assert cache.nbytes == CacheConfig(size, 0.5, 0.1, dtype).bytes_per_session(d)
    cache.clear()
    assert len(cache) == 0
    assert cache.distribution(np.zeros(d)).ids.size == 0


def test_memory_formula_for_the_default_bundle() -> None:
    assert state_bytes(256, "float16") == 516
    assert state_bytes(256, "float32") == 1028
    cache = ContinuousCache(500, 256, theta=0.5)
    cache.add(np.zeros((10, 256)), np.zeros(10, np.int64))
    assert cache.nbytes == 16 * 516  # grows by doubling, from 16 slots
    cache.add(np.zeros((600, 256)), np.zeros(600, np.int64))
    assert cache.nbytes == 500 * 516 <= 256 * 1024


def test_float16_storage_is_close_to_float32() -> None:
    rng = np.random.default_rng(1)
    d, n = 64, 300
    hiddens = np.tanh(rng.standard_normal((n, d))).astype(np.float32)  # LSTM-like outputs
    ids = rng.integers(0, 50, n)
    half = ContinuousCache(n, d, theta=0.5, dtype="float16")
    full = ContinuousCache(n, d, theta=0.5, dtype="float32")
    half.add(hiddens, ids)
    full.add(hiddens, ids)
    assert half.nbytes < 0.55 * full.nbytes
    for h in np.tanh(rng.standard_normal((5, d))).astype(np.float32):
        a, b = half.distribution(h), full.distribution(h)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.probs, b.probs, rtol=0.02)


def test_int8_storage_is_close_to_float32() -> None:
    rng = np.random.default_rng(2)
    d, n = 64, 300
    hiddens = np.tanh(rng.standard_normal((n, d))).astype(np.float32)
    hiddens[7] = 0.0  # a zero vector has no scale to take: it must stay zero, not NaN
    ids = rng.integers(0, 50, n)
    small = ContinuousCache(n, d, theta=0.5, dtype="int8")
    full = ContinuousCache(n, d, theta=0.5, dtype="float32")
    small.add(hiddens, ids)
    full.add(hiddens, ids)
    assert small.nbytes == n * (d + 4 + 4) == n * state_bytes(d, "int8")
    stored, _ = small.pairs()
    np.testing.assert_allclose(stored, hiddens, atol=np.abs(hiddens).max() / 127 / 2 + 1e-7)
    assert not np.isnan(stored).any()
    for h in np.tanh(rng.standard_normal((5, d))).astype(np.float32):
        a, b = small.distribution(h), full.distribution(h)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.probs, b.probs, rtol=0.05)


def test_bad_inputs_are_rejected() -> None:
    cache = ContinuousCache(4, 3, theta=0.5)
    with pytest.raises(ValueError, match="hiddens"):
        cache.add(np.zeros((2, 4)), [1, 2])
    with pytest.raises(ValueError, match="hiddens"):
        cache.add(np.zeros((2, 3)), [1])
    with pytest.raises(ValueError, match="non-negative"):
        cache.add(np.zeros((1, 3)), [-1])
    with pytest.raises(ValueError, match="hidden must have shape"):
        cache.distribution(np.zeros(4))
    with pytest.raises(ValueError, match="dtype"):
        ContinuousCache(4, 3, theta=0.5, dtype="bfloat16")


# -- the config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": -1}, "size"),
        ({"size": 2.5}, "size"),
        ({"theta": -0.1}, "theta"),
        ({"theta": math.inf}, "theta"),
        ({"lam": -0.01}, "lam"),
        ({"lam": 1.0}, "lam"),
        ({"lam": math.nan}, "lam"),
        ({"dtype": "bfloat16"}, "dtype"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"size": 100, "theta": 0.5, "lam": 0.2, "dtype": "float16"}
    with pytest.raises(ValueError, match=message):
        CacheConfig(**(fields | changes))  # type: ignore[arg-type]


def test_config_defaults_and_off() -> None:
    config = CacheConfig()
    assert config.enabled
    assert config.bytes_per_session(256) <= 256 * 1024
    assert not CacheConfig(size=0).enabled
    assert not CacheConfig(lam=0.0).enabled
    cache = ContinuousCache.from_config(CacheConfig(size=7, theta=0.9, dtype="float32"), 5)
    assert (cache.size, cache.theta, cache.dtype, cache.hidden_size) == (7, 0.9, np.float32, 5)


# -- mixing (the exact top-k under the mixture is service.policy's: tests/test_policy.py) -----


@given(
    num_words=st.integers(2, 50),
    lam=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
@SETTINGS
def test_mixture_probabilities_sum_to_one(num_words: int, lam: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal(num_words)
    tree_lp = logits - np.logaddexp.reduce(logits)
    cache = ContinuousCache(int(rng.integers(0, 30)), 4, theta=float(rng.uniform(0, 3)))
    pairs = int(rng.integers(0, 40))
    cache.add(rng.standard_normal((pairs, 4)), rng.integers(0, num_words, pairs))
    dist = cache.distribution(rng.standard_normal(4))
    mixed = mixture_log_probs(tree_lp, dist.probs_of(np.arange(num_words)), session_lam(cache, lam))
    assert np.exp(mixed).sum() == pytest.approx(1.0, abs=1e-12)


@given(
    num_words=st.integers(1, 60),
    lam=st.sampled_from([0.0, 1e-9, 0.275, 0.9]),
    seed=st.integers(0, 2**32 - 1),
)
@SETTINGS
def test_mix_equals_the_numpy_formula(num_words: int, lam: float, seed: int) -> None:
    # CacheDistribution.mix is the compiled lookup-and-mix the policy uses on every keystroke.
    rng = np.random.default_rng(seed)
    cache = ContinuousCache(int(rng.integers(1, 30)), 4, theta=float(rng.uniform(0, 3)))
    pairs = int(rng.integers(1, 40))
    cache.add(rng.standard_normal((pairs, 4)), rng.integers(0, num_words, pairs))
    dist = cache.distribution(rng.standard_normal(4))
    ids = rng.integers(0, num_words + 5, int(rng.integers(0, 12)))  # some never cached
    tree_lp = -rng.exponential(5.0, ids.size)
    expected = mixture_log_probs(tree_lp, dist.probs_of(ids), lam)
    np.testing.assert_allclose(dist.mix(ids, tree_lp, lam), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lam"):
        dist.mix(ids, tree_lp, 1.0)
