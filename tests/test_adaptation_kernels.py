"""service.adaptation_kernels against the numpy they replace: quantisation bit for bit, the
word order of a ring buffer against a stable argsort, the grouped softmax against
``np.unique`` + ``np.bincount``, int8 dot products against float64."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import adaptation_kernels as kernels
from service.adaptation import ContinuousCache, quantize

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(
    rows=st.integers(1, 4),
    d=st.integers(1, 40),
    exponent=st.floats(-40, 3),
    seed=st.integers(0, 99),
)
@SETTINGS
def test_put_int8_matches_quantize(rows: int, d: int, exponent: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    hiddens = (rng.standard_normal((rows, d)) * 10.0**exponent).astype(np.float32)
    hiddens[0, : d // 2] = np.round(hiddens[0, : d // 2] * 4) / 4  # halves: ties to even
    if seed % 5 == 0:
        hiddens[-1] = 0.0  # a zero row gets scale 1
    steps = np.zeros((rows + 2, d), dtype=np.int8)
    scale = np.zeros(rows + 2, dtype=np.float32)
    slots = rng.permutation(rows + 2)[:rows].astype(np.int64)
    kernels.put_int8(steps, scale, slots, hiddens)
    expected_steps, expected_scale = quantize(hiddens)
    np.testing.assert_array_equal(steps[slots], expected_steps)
    np.testing.assert_array_equal(scale[slots], expected_scale)


@given(
    capacity=st.integers(1, 30),
    writes=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 6)), max_size=60),
)
@SETTINGS
def test_put_words_keeps_slots_in_word_order(capacity: int, writes: list[tuple[int, int]]) -> None:
    words = np.zeros(capacity, dtype=np.int32)
    order = np.zeros(capacity, dtype=np.int64)
    count = 0
    for slot, word in writes:
        slot = min(slot, count, capacity - 1)  # live slots are [0, count): append or overwrite
        count = kernels.put_words(
            words, order, count, np.array([slot], dtype=np.int64), np.array([word], dtype=np.int64)
        )
        assert words[slot] == word
        np.testing.assert_array_equal(order[:count], np.argsort(words[:count], kind="stable"))


@given(count=st.integers(1, 50), theta=st.floats(0.0, 3.0), seed=st.integers(0, 99))
@SETTINGS
def test_grouped_softmax_matches_unique_and_bincount(count: int, theta: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 8, count).astype(np.int32)
    dots = rng.standard_normal(count) * 30.0
    order = np.argsort(words, kind="stable")
    ids, probs = np.empty(count, np.int64), np.empty(count, np.float64)
    distinct = kernels.grouped_softmax(dots, theta, words, order, count, ids, probs)
    unique, inverse = np.unique(words, return_inverse=True)
    weights = np.exp(theta * dots - (theta * dots).max())
    np.testing.assert_array_equal(ids[:distinct], unique)
    np.testing.assert_allclose(probs[:distinct], np.bincount(inverse, weights) / weights.sum())


def test_int8_dots_match_float64() -> None:
    rng = np.random.default_rng(0)
    steps = rng.integers(-127, 128, (20, 256)).astype(np.int8)
    scale = rng.uniform(0.001, 0.1, 20).astype(np.float32)
    h = rng.standard_normal(256).astype(np.float32)
    out = np.full(20, np.nan)
    kernels.int8_dots(steps, scale, h, 15, out)
    expected = (steps.astype(np.float64) * scale[:, None].astype(np.float64)) @ h.astype(np.float64)
    np.testing.assert_allclose(out[:15], expected[:15], rtol=1e-5)
    assert np.isnan(out[15:]).all()  # only the first `count` rows


@given(
    size=st.integers(1, 40),
    adds=st.lists(st.integers(0, 50), min_size=1, max_size=12),
    dtype=st.sampled_from(["int8", "float16", "float32"]),
    seed=st.integers(0, 99),
)
@SETTINGS
def test_cache_distribution_after_mixed_adds(
    size: int, adds: list[int], dtype: str, seed: int
) -> None:
    """Keystroke-sized adds take the incremental word order, long reads re-sort: either way the
    distribution is the formula over the pairs the cache holds."""
    rng = np.random.default_rng(seed)
    cache = ContinuousCache(size, 6, theta=0.7, dtype=dtype)
    for added in adds:
        cache.add(rng.standard_normal((added, 6)).astype(np.float32), rng.integers(0, 9, added))
        h = rng.standard_normal(6).astype(np.float32)
        dist = cache.distribution(h)
        hiddens, next_ids = cache.pairs()
        if next_ids.size == 0:
            assert dist.ids.size == 0
            continue
        logits = 0.7 * (hiddens.astype(np.float64) @ h.astype(np.float64))
        weights = np.exp(logits - logits.max())
        unique, inverse = np.unique(next_ids, return_inverse=True)
        np.testing.assert_array_equal(dist.ids, unique)
        np.testing.assert_allclose(
            dist.probs, np.bincount(inverse, weights) / weights.sum(), rtol=1e-5
        )
