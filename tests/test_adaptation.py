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
    CacheDistribution,
    ContinuousCache,
    mixture_log_probs,
    mixture_top_k,
    quantize,
    session_lam,
    state_bytes,
)
from service.decode import DecodeTree, brute_force_log_probs, top_k, word_log_probs
from service.tree import Tree

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


# -- the mixture against brute force -----------------------------------------------------------


def tree_list(
    tree_lp: npt.NDArray[np.float64], qualifying: npt.NDArray[np.bool_], n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], float]:
    """What decode.top_k hands over: the top-n qualifying words and the bound on the rest."""
    words = np.flatnonzero(qualifying)
    order = words[np.argsort(-tree_lp[words], kind="stable")]
    listed = order[:n]
    if listed.size == words.size:
        bound = -math.inf
    else:  # an empty list bounds nothing below log 1
        bound = float(tree_lp[listed[-1]]) if listed.size else 0.0
    return listed, tree_lp[listed], bound


def check_against_brute_force(
    ids: npt.NDArray[np.int64],
    logprobs: npt.NDArray[np.float64],
    mixed: npt.NDArray[np.float64],
    qualifying: npt.NDArray[np.bool_],
    k: int,
    tol: float = TOL,
) -> None:
    """``ids`` is a valid exact top-k of ``mixed`` over the qualifying words (ties allowed)."""
    eligible = np.flatnonzero(qualifying)
    assert ids.size == min(k, eligible.size)
    assert len(set(ids.tolist())) == ids.size
    assert qualifying[ids].all()
    np.testing.assert_allclose(logprobs, mixed[ids], atol=tol, rtol=0)
    assert (np.diff(logprobs) <= tol).all()
    rest = np.setdiff1d(eligible, ids)
    if ids.size and rest.size:
        assert logprobs[-1] >= mixed[rest].max() - tol


@st.composite
def mixtures(draw: st.DrawFn) -> dict[str, object]:
    num_words = draw(st.integers(2, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.integers(1, 6))  # few distinct logits: ties are common
    logits = rng.integers(0, levels, num_words) * draw(st.sampled_from([0.5, 1.0, 3.0]))
    tree_lp = logits - np.logaddexp.reduce(logits)
    cached = rng.choice(num_words, draw(st.integers(0, num_words)), replace=False)
    raw = rng.integers(1, 4, cached.size).astype(np.float64)  # ties in the cache too
    cache_p = np.zeros(num_words)
    cache_p[cached] = raw / raw.sum() if raw.size else raw
    qualifying = rng.random(num_words) < draw(st.sampled_from([1.0, 0.7, 0.3]))
    return {
        "tree_lp": tree_lp,
        "cache_p": cache_p,
        "qualifying": qualifying,
        "lam": draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9])),
        "k": draw(st.integers(0, 12)),
        "extra": draw(st.integers(-12, 6)),
        "floor": draw(st.sampled_from([-math.inf, -math.inf, math.log(0.02), math.log(0.2)])),
    }


@given(case=mixtures())
@SETTINGS
def test_mixture_top_k_equals_brute_force(case: dict[str, npt.NDArray[np.float64]]) -> None:
    tree_lp, cache_p, lam, k = case["tree_lp"], case["cache_p"], float(case["lam"]), int(case["k"])
    qualifying, floor = case["qualifying"], float(case["floor"])
    cached = np.flatnonzero((cache_p > 0) & qualifying)  # the caller passes qualifying ones only
    n = max(0, k + cached.size + int(case["extra"]))  # extra < 0: maybe too short a list
    listed, listed_lp, bound = tree_list(tree_lp, qualifying, n)
    result = mixture_top_k(
        listed, listed_lp, bound, cached, cache_p[cached], tree_lp[cached], lam, k,
        min_logprob=floor,
    )  # fmt: skip
    mixed = mixture_log_probs(tree_lp, cache_p, lam)
    if n >= k + cached.size:
        assert result.exact
    if result.exact:
        check_against_brute_force(
            result.ids, result.logprobs, mixed, qualifying & (mixed >= floor), k
        )
    else:  # what it returns is still correct mixture probabilities of qualifying words
        assert qualifying[result.ids].all()
        np.testing.assert_allclose(result.logprobs, mixed[result.ids], atol=TOL, rtol=0)


def test_a_cached_word_outside_the_trees_top_k_wins() -> None:
    tree_lp = np.log([0.5, 0.3, 0.15, 0.04, 0.01])
    cache_p = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # only the least likely word is cached
    listed, listed_lp, bound = tree_list(tree_lp, np.ones(5, bool), 3)
    result = mixture_top_k(listed, listed_lp, bound, [4], [1.0], tree_lp[[4]], 0.5, 2)
    assert result.exact
    np.testing.assert_array_equal(result.ids, [4, 0])  # 0.5 * 0.01 + 0.5 > 0.5 * 0.5
    np.testing.assert_allclose(np.exp(result.logprobs), [0.5 * 0.01 + 0.5, 0.5 * 0.5])
    mixed = mixture_log_probs(tree_lp, cache_p, 0.5)
    check_against_brute_force(result.ids, result.logprobs, mixed, np.ones(5, bool), 2)


def test_too_short_a_list_is_reported() -> None:
    tree_lp = np.log([0.4, 0.3, 0.2, 0.1])
    # Words 0 and 1 are cached with tiny p_cache; the list stops at word 1, so word 2 (unlisted)
    # might beat them and the result cannot be proven.
    result = mixture_top_k([0, 1], tree_lp[:2], tree_lp[1], [0, 1], [0.0, 0.0], tree_lp[:2], 0.5, 2)
    assert result.exact  # both listed words keep 0.5 * P >= the bound 0.5 * 0.3: proven
    result = mixture_top_k([0, 1], tree_lp[:2], tree_lp[1], [0, 1], [0.0, 0.0], tree_lp[:2], 0.5, 3)
    assert not result.exact
    with pytest.raises(ValueError, match="lam"):
        mixture_top_k([0], [0.0], -math.inf, [], [], [], 1.0, 1)
    with pytest.raises(ValueError, match="k must"):
        mixture_top_k([0], [0.0], -math.inf, [], [], [], 0.5, -1)
    with pytest.raises(ValueError, match="lengths"):
        mixture_top_k([0, 1], [0.0], -math.inf, [], [], [], 0.5, 1)


# -- end to end on a real tree -----------------------------------------------------------------


def random_tree(num_leaves: int, rng: np.random.Generator) -> Tree:
    """Merge 2-3 random nodes under a new parent until one is left (ids grow upwards)."""
    pool, child_ptr, children = list(range(num_leaves)), [0], []
    while len(pool) > 1:
        count = min(len(pool), int(rng.integers(2, 4)))
        picked = sorted(rng.choice(len(pool), count, replace=False).tolist(), reverse=True)
        children += [pool.pop(i) for i in picked]
        child_ptr.append(len(children))
        pool.append(num_leaves + len(child_ptr) - 2)
    return Tree(num_leaves, child_ptr, children)


@pytest.fixture(scope="module")
def decode_tree() -> DecodeTree:
    rng = np.random.default_rng(7)
    num_words, d = 60, 6
    tree = random_tree(num_words, rng)
    weight = rng.standard_normal((num_words - 1, d)).astype(np.float32)
    bias = rng.standard_normal(num_words - 1).astype(np.float32)
    vocab = [f"{'abc'[i % 3]}{i}" for i in range(num_words)]
    return DecodeTree(tree, weight, bias, vocab)


@pytest.mark.parametrize("prefix", [None, "a", "b1"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_mixture_over_a_real_tree(decode_tree: DecodeTree, prefix: str | None, dtype: str) -> None:
    rng = np.random.default_rng(3)
    d, lam, k = decode_tree.hidden_size, 0.3, 5
    cache = ContinuousCache(25, d, theta=0.8, dtype=dtype)
    cache.add(rng.standard_normal((40, d)), rng.integers(0, decode_tree.num_words, 40))
    vocab = decode_tree.vocab or []
    qualifying = np.array([prefix is None or w.startswith(prefix) for w in vocab])
    banned = decode_tree.ban_mask([1, 4])
    qualifying &= ~banned
    for h in rng.standard_normal((6, d)).astype(np.float32):
        dist: CacheDistribution = cache.distribution(h)
        keep = qualifying[dist.ids]
        cached, cached_p = dist.ids[keep], dist.probs[keep]
        n = k + cached.size
        found = top_k(decode_tree, h, n, prefix=prefix, banned=banned)
        bound = found.logprobs[-1] if found.ids.size == n else -math.inf
        result = mixture_top_k(
            found.ids, found.logprobs, bound, cached, cached_p,
            word_log_probs(decode_tree, h, cached), session_lam(cache, lam), k,
        )  # fmt: skip
        assert result.exact
        all_lp = brute_force_log_probs(decode_tree, h)
        mixed = mixture_log_probs(all_lp, dist.probs_of(np.arange(decode_tree.num_words)), lam)
        check_against_brute_force(result.ids, result.logprobs, mixed, qualifying, k, tol=1e-6)
        # Scoring every word: the mixture is a distribution.
        assert np.exp(mixed).sum() == pytest.approx(1.0, abs=1e-9)


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
