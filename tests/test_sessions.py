"""service.sessions: reuse only when the new tokens extend the cached ones; LRU cap; TTL."""

from __future__ import annotations

import numpy as np

from service.sessions import ContextCache, EncodedText, SessionCache


def _ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _encoded(*values: int) -> EncodedText:
    state = np.full((1, 1, 2), float(len(values)), dtype=np.float32)
    return EncodedText(tokens=_ids(*values), state=state, hidden=state[0, 0])


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_extension_resumes_from_the_cached_state() -> None:
    cache = SessionCache(4, ttl_s=10.0)
    cache.put("s", _encoded(0, 5, 7))
    resume = cache.resume("s", _ids(0, 5, 7, 9, 2))
    assert resume.known is not None
    np.testing.assert_array_equal(resume.known.tokens, _ids(0, 5, 7))
    np.testing.assert_array_equal(resume.todo, _ids(9, 2))
    assert (cache.hits, cache.misses) == (1, 0)


def test_same_tokens_need_no_encoding() -> None:
    cache = SessionCache(4, ttl_s=10.0)
    cache.put("s", _encoded(0, 5))
    resume = cache.resume("s", _ids(0, 5))
    assert resume.known is not None
    assert len(resume.todo) == 0


def test_changed_or_shorter_text_starts_over() -> None:
    cache = SessionCache(4, ttl_s=10.0)
    cache.put("s", _encoded(0, 5, 7))
    for tokens in (_ids(0, 6, 7, 8), _ids(0, 5), _ids(1, 5, 7)):
        resume = cache.resume("s", tokens)
        assert resume.known is None
        np.testing.assert_array_equal(resume.todo, tokens)
    assert (cache.hits, cache.misses) == (0, 3)


def test_no_session_id_never_touches_the_cache() -> None:
    cache = SessionCache(4, ttl_s=10.0)
    cache.put("s", _encoded(0))
    resume = cache.resume(None, _ids(0, 1))
    assert resume.known is None
    assert (cache.hits, cache.misses) == (0, 0)


def test_least_recently_used_entry_is_evicted_at_the_cap() -> None:
    cache = SessionCache(2, ttl_s=10.0)
    cache.put("a", _encoded(0))
    cache.put("b", _encoded(0))
    assert cache.resume("a", _ids(0, 1)).known is not None  # "a" is now the most recent
    cache.put("c", _encoded(0))
    assert len(cache) == 2
    assert cache.resume("b", _ids(0)).known is None
    assert cache.resume("a", _ids(0)).known is not None
    assert cache.resume("c", _ids(0)).known is not None


def test_entries_expire_after_the_ttl_since_last_use() -> None:
    clock = _Clock()
    cache = SessionCache(8, ttl_s=5.0, clock=clock)
    cache.put("a", _encoded(0))
    cache.put("b", _encoded(0))
    clock.now = 4.0
    assert cache.resume("a", _ids(0)).known is not None  # renews "a" until t = 9
    clock.now = 6.0
    assert cache.resume("b", _ids(0)).known is None
    assert cache.resume("a", _ids(0)).known is not None
    clock.now = 20.0
    cache.put("c", _encoded(0))  # a put also sweeps expired entries
    assert len(cache) == 1


def test_size_zero_disables_caching_and_forget_drops() -> None:
    off = SessionCache(0, ttl_s=5.0)
    off.put("a", _encoded(0))
    assert len(off) == 0
    cache = SessionCache(2, ttl_s=5.0)
    cache.put("a", _encoded(0))
    cache.forget("a")
    cache.forget("never-there")
    assert cache.resume("a", _ids(0)).known is None


def test_context_cache_resumes_from_the_longest_cached_prefix() -> None:
    cache = ContextCache(8)
    cache.put(_encoded(0, 5))
    cache.put(_encoded(0, 5, 7))
    same = cache.resume(_ids(0, 5, 7))
    assert same.known is not None
    assert len(same.todo) == 0
    longer = cache.resume(_ids(0, 5, 7, 9, 2))
    assert longer.known is not None
    np.testing.assert_array_equal(longer.known.tokens, _ids(0, 5, 7))
    np.testing.assert_array_equal(longer.todo, _ids(9, 2))
    assert (cache.hits, cache.misses) == (2, 0)


def test_context_cache_misses_beyond_its_lookback_or_after_an_edit() -> None:
    cache = ContextCache(8)
    cache.put(_encoded(0, 5))
    far = _ids(0, 5, *range(10, 10 + ContextCache.LOOKBACK + 1))
    for tokens in (far, _ids(0, 6, 7), _ids(0)):
        resume = cache.resume(tokens)
        assert resume.known is None
        np.testing.assert_array_equal(resume.todo, tokens)
    assert (cache.hits, cache.misses) == (0, 3)


def test_context_cache_evicts_the_least_recently_used_and_size_zero_is_off() -> None:
    cache = ContextCache(2)
    cache.put(_encoded(0, 1))
    cache.put(_encoded(0, 2))
    assert cache.resume(_ids(0, 1)).known is not None  # now the most recent
    cache.put(_encoded(0, 3))
    assert len(cache) == 2
    assert cache.resume(_ids(0, 2)).known is None
    assert cache.resume(_ids(0, 1)).known is not None
    off = ContextCache(0)
    off.put(_encoded(0, 1))
    assert len(off) == 0
    assert off.resume(_ids(0, 1)).known is None
