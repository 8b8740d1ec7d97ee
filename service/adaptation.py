"""Session adaptation: the continuous cache of Grave, Joulin and Usunier (ICLR 2017).

"Improving Neural Language Models with a Continuous Cache" keeps, for one text, the pairs
``(h_i, w_{i+1})`` of the hidden vector the model had at position ``i`` and the word that came
next, and turns them into a distribution over the words seen recently:

    p_cache(w | h) = sum_{i : w_{i+1} = w} exp(theta * h . h_i) / sum_i exp(theta * h . h_i)

which is mixed with the model's distribution by linear interpolation,

    P_mix(w | h) = (1 - lam) * P_tree(w | h) + lam * p_cache(w | h).

Nothing is trained: the model's own hidden vectors are the keys, ``theta`` (flatness) and
``lam`` (weight) are tuned on validation text (``benchmarks/cache_ppl.py``). With an empty cache
``p_cache`` is undefined and ``P_mix = P_tree``: pass ``lam = 0`` then (:func:`session_lam`).

Here: :class:`CacheConfig` (validated settings), :class:`ContinuousCache` (one session's ring
buffer of pairs and its distribution), :class:`SessionAdaptation` (a cache fed from a session's
texts) and :func:`mixture_log_probs`. The exact top-k under ``P_mix`` is ranked with the rest of
the keyboard policy (:meth:`service.policy.SuggestionPolicy.top_k`). All pure numpy; a cache is
used by one request at a time (a session's), so it is not locked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np
import numpy.typing as npt

from service import adaptation_kernels as kernels

IntArray = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
I8Array = npt.NDArray[np.int8]

DTYPES = ("int8", "float16", "float32")
"""Storage types of the cached hidden vectors (scores are computed in float32 either way).
``int8`` stores each vector rounded to 127 steps of its largest magnitude, with that scale as
a float32: a byte per dimension, and the fastest to score (numpy widens int8 in a tenth of the
time it takes for float16)."""

_ID_DTYPE = np.dtype(np.int32)  # next-word ids: 4 bytes each, vocabularies below 2**31 words
_SCALE_DTYPE = np.dtype(np.float32)
_NO_IDS: IntArray = np.zeros(0, dtype=np.int64)
_NO_PROBS: F64Array = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class CacheConfig:
    """The continuous cache's settings; ``size = 0`` (or ``lam = 0``) turns it off.

    The defaults are what ``benchmarks/cache_ppl.py`` recommends for the default bundle (d =
    256, clustered tree): 990 states in int8 take 261,360 bytes, within 256 KiB per session, and
    took WikiText-2 test perplexity from 140.3 to 95.4 (0.680x; theta and lam tuned on valid;
    int8 keys gave the same perplexity as float32 to 0.01). A bundle that records its own
    (``adaptation`` in its manifest, written by ``cache_ppl.py --record``) overrides them.
    """

    size: int = 990
    """States kept per session (the last ``size`` positions of its text)."""
    theta: float = 0.7
    """Flatness of the cache distribution: ``exp(theta * h . h_i)``; 0 counts words uniformly."""
    lam: float = 0.275
    """Weight of the cache in the mixture, ``0 <= lam < 1``."""
    dtype: str = "int8"
    """Storage of the hidden vectors: ``int8``, ``float16`` or ``float32`` (:data:`DTYPES`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"cache size must be an integer >= 0, got {self.size!r}")
        if not math.isfinite(self.theta) or self.theta < 0.0:
            raise ValueError(f"cache theta must be finite and >= 0, got {self.theta!r}")
        if not 0.0 <= self.lam < 1.0:
            raise ValueError(f"cache lam must satisfy 0 <= lam < 1, got {self.lam!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.lam > 0.0

    def bytes_per_session(self, hidden_size: int) -> int:
        """What a full cache holds: see :class:`ContinuousCache`."""
        return self.size * state_bytes(hidden_size, self.dtype)


def state_bytes(hidden_size: int, dtype: str = "float16") -> int:
    """Bytes one cached pair takes: the hidden vector (and its float32 scale, for int8) plus
    a 4-byte word id."""
    scale = _SCALE_DTYPE.itemsize if dtype == "int8" else 0
    return hidden_size * np.dtype(dtype).itemsize + scale + _ID_DTYPE.itemsize


def quantize(hiddens: F32Array) -> tuple[npt.NDArray[np.int8], F32Array]:
    """Rows as int8 steps of ``max |row| / 127`` and those scales (a zero row gets scale 1)."""
    peak = np.abs(hiddens).max(axis=1)
    scale = np.where(peak > 0.0, peak / 127.0, 1.0).astype(np.float32)
    steps = np.clip(np.rint(hiddens / scale[:, None]), -127, 127).astype(np.int8)
    return steps, scale


class CacheDistribution(NamedTuple):
    """``p_cache(w | h)`` over the distinct cached words: ``ids`` ascending, ``probs`` > 0."""

    ids: IntArray
    probs: F64Array

    def probs_of(self, ids: npt.ArrayLike) -> F64Array:
        """``p_cache`` of each of ``ids`` (0 for words not in the cache)."""
        words = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros(words.shape[0], dtype=np.float64)
        if self.ids.size == 0 or words.size == 0:
            return out
        at = np.minimum(np.searchsorted(self.ids, words), self.ids.size - 1)
        found = self.ids[at] == words
        out[found] = self.probs[at[found]]
        return out

    def mix(self, ids: IntArray, tree_logprobs: F64Array, lam: float) -> F64Array:
        """``log P_mix`` of ``ids`` (int64) from their tree log-probabilities (float64):
        ``mixture_log_probs(tree_logprobs, self.probs_of(ids), lam)``, in one compiled pass."""
        _check_lam(lam)
        if lam == 0.0:
            return np.array(tree_logprobs, dtype=np.float64)
        out = np.empty(ids.shape[0], dtype=np.float64)
        kernels.mixed_log_probs(ids, tree_logprobs, self.ids, self.probs, lam, out)
        return out


class ContinuousCache:
    """One session's last ``size`` pairs ``(h_i, w_{i+1})`` in a ring buffer, and ``p_cache``.

    Memory: a full cache holds ``size * state_bytes(d, dtype)`` bytes (:attr:`nbytes`): the
    vector (``d`` bytes in int8 plus a 4-byte scale, ``2 d`` in float16, ``4 d`` in float32)
    and a 4-byte word id; at d = 256 that is 264 bytes per state in int8 (256 KiB holds 992
    states) and 516 in float16 (508 states). The arrays grow by doubling up to
    ``size``, so a short session holds at most twice what it uses; a few hundred bytes of
    Python objects come on top.

    Feed it as the text is read: after the word ``w`` that followed hidden vector ``h`` (the
    encoder's output before ``w``), ``add(h[None], [w])``; then :meth:`distribution` at the
    next hidden vector is ``p_cache`` over the words that followed similar contexts.
    """

    def __init__(
        self, size: int, hidden_size: int, *, theta: float, dtype: str = "float16"
    ) -> None:
        if size < 0 or hidden_size < 1:
            raise ValueError(f"need size >= 0 and hidden_size >= 1, got {size}, {hidden_size}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.size = size
        self.hidden_size = hidden_size
        self.theta = float(theta)
        self.dtype = np.dtype(dtype)
        self._hidden: npt.NDArray[np.generic] = np.zeros((0, hidden_size), dtype=self.dtype)
        self._scale: F32Array = np.zeros(0, dtype=_SCALE_DTYPE)  # int8 only
        self._next: npt.NDArray[np.int32] = np.zeros(0, dtype=_ID_DTYPE)
        self._order: IntArray = np.zeros(0, dtype=np.int64)  # live slots by (word, slot)
        self._head = 0  # slot of the oldest pair; 0 until the buffer is full and wraps
        self._count = 0

    @classmethod
    def from_config(cls, config: CacheConfig, hidden_size: int) -> ContinuousCache:
        return cls(config.size, hidden_size, theta=config.theta, dtype=config.dtype)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held now (at most ``size * (d * b + 4)``)."""
        return int(self._hidden.nbytes + self._scale.nbytes + self._next.nbytes)

    def clear(self) -> None:
        self._hidden = self._hidden[:0].copy()
        self._scale = self._scale[:0].copy()
        self._next = self._next[:0].copy()
        self._order = self._order[:0].copy()
        self._head = self._count = 0

    def add(self, hiddens: npt.ArrayLike, next_ids: npt.ArrayLike) -> None:
        """Append pairs ``hiddens (T, d)``, ``next_ids (T,)``; the oldest go past ``size``."""
        h = np.asarray(hiddens, dtype=np.float32)
        ids = np.asarray(next_ids, dtype=np.int64)
        if h.ndim != 2 or h.shape[1] != self.hidden_size or ids.shape != (h.shape[0],):
            raise ValueError(
                f"need hiddens (T, {self.hidden_size}) and next_ids (T,), "
                f"got {h.shape} and {ids.shape}"
            )
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(_ID_DTYPE).max):
            raise ValueError("word ids must be non-negative int32 values")
        if self.size == 0 or ids.size == 0:
            return
        if ids.size > self.size:  # only the last `size` pairs can survive
            h, ids = h[-self.size :], ids[-self.size :]
        added = ids.size
        self._reserve(min(self.size, self._count + added))
        capacity = self._next.shape[0]
        slots = (self._head + self._count + np.arange(added)) % capacity
        if self.dtype == np.int8:
            kernels.put_int8(self._steps(), self._scale, slots, np.ascontiguousarray(h))
        else:
            self._hidden[slots] = h  # rounds to float16 when stored as such
        overflow = max(0, self._count + added - capacity)
        self._head = (self._head + overflow) % capacity
        self._put_words(slots, ids, min(capacity, self._count + added))

    def _put_words(self, slots: IntArray, ids: IntArray, count: int) -> None:
        """Store the next words of ``slots`` and keep :attr:`_order` sorted (a keystroke adds a
        pair or two: each moves one slot; a long read sorts afresh)."""
        if 4 * ids.size < self._count:
            self._count = kernels.put_words(self._next, self._order, self._count, slots, ids)
            return
        self._next[slots] = ids
        self._order[:count] = np.argsort(self._next[:count], kind="stable")
        self._count = count

    def _reserve(self, needed: int) -> None:
        capacity = self._next.shape[0]
        if needed <= capacity:
            return
        # Growth happens only before the buffer first fills, while the oldest pair is in slot 0.
        new = min(self.size, max(needed, 2 * capacity, 16))
        hidden = np.zeros((new, self.hidden_size), dtype=self.dtype)
        ids = np.zeros(new, dtype=_ID_DTYPE)
        order = np.zeros(new, dtype=np.int64)
        hidden[: self._count] = self._hidden[: self._count]
        ids[: self._count] = self._next[: self._count]
        order[: self._count] = self._order[: self._count]
        self._hidden, self._next, self._order = hidden, ids, order
        if self.dtype == np.int8:
            scale = np.zeros(new, dtype=_SCALE_DTYPE)
            scale[: self._count] = self._scale[: self._count]
            self._scale = scale

    def _steps(self) -> npt.NDArray[np.int8]:
        """The stored vectors as int8 steps (``dtype`` int8 only)."""
        return cast(I8Array, self._hidden)  # an alias: subscripting at run time costs µs

    def pairs(self) -> tuple[F32Array, IntArray]:
        """The cached pairs oldest first: ``hiddens (n, d)`` float32 and ``next_ids (n,)``."""
        order = (self._head + np.arange(self._count)) % max(1, self._next.shape[0])
        hiddens = self._hidden[order].astype(np.float32)
        if self.dtype == np.int8:
            hiddens *= self._scale[order, None]
        return hiddens, self._next[order].astype(np.int64)

    def distribution(self, hidden: npt.ArrayLike) -> CacheDistribution:
        """``p_cache(w | h)`` over the distinct cached words; empty when the cache is empty."""
        h = np.ascontiguousarray(hidden, dtype=np.float32).reshape(-1)
        if h.shape != (self.hidden_size,):
            raise ValueError(f"hidden must have shape ({self.hidden_size},), got {h.shape}")
        count = self._count
        if count == 0:
            return CacheDistribution(_NO_IDS, _NO_PROBS)
        # Slots [0, count) are the live ones: the buffer wraps only once it is full.
        dots = np.empty(count, dtype=np.float64)
        if self.dtype == np.int8:
            kernels.int8_dots(self._steps(), self._scale, h, count, dots)
        else:
            dots[:] = self._hidden[:count].astype(np.float32, copy=False) @ h
        ids = np.empty(count, dtype=np.int64)
        probs = np.empty(count, dtype=np.float64)
        distinct = kernels.grouped_softmax(
            dots, self.theta, self._next, self._order, count, ids, probs
        )
        return CacheDistribution(ids[:distinct], probs[:distinct])


def session_lam(cache: ContinuousCache, lam: float) -> float:
    """The mixture weight to use now: ``lam``, or 0 while the cache is empty (then
    ``P_mix = P_tree``)."""
    return lam if len(cache) else 0.0


# -- mixing ------------------------------------------------------------------------------------


def mixture_log_probs(
    tree_logprobs: npt.ArrayLike, cache_probs: npt.ArrayLike, lam: float
) -> F64Array:
    """``log((1 - lam) * P_tree + lam * p_cache)`` elementwise, e.g. for scoring candidates
    (``cache_probs`` from :meth:`CacheDistribution.probs_of`, 0 for uncached words).

    Over the whole vocabulary the result sums to 1: both distributions do.
    """
    _check_lam(lam)
    tree_lp = np.asarray(tree_logprobs, dtype=np.float64)
    cache_p = np.asarray(cache_probs, dtype=np.float64)
    if lam == 0.0:
        return tree_lp.copy()
    # An uncached word's p_cache of 0 is floored at 1e-300 (log -690.8): it then adds nothing
    # a float64 can hold to any tree probability above e^-650, and np.errstate, which log(0)
    # would need, costs more than the rest of this function.
    cache_lp = math.log(lam) + np.log(np.maximum(cache_p, 1e-300))
    mixed: F64Array = np.logaddexp(math.log1p(-lam) + tree_lp, cache_lp)
    return mixed


def _check_lam(lam: float) -> None:
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must satisfy 0 <= lam < 1, got {lam!r}")


class SessionAdaptation:
    """One session's :class:`ContinuousCache` fed from the texts it types: the pairs of every
    position read, each added once even though a text is read again at every keystroke and
    after an edit is encoded again from the start (only positions past the part the previous
    text shares with it are new)."""

    def __init__(self, cache: ContinuousCache, lam: float) -> None:
        self.cache = cache
        self.lam = lam
        self._tokens: IntArray = _NO_IDS  # the text whose positions the cache holds
        self._reads = 0  # pairs-adding reads so far: the cache's version
        self._last: tuple[F32Array, int, CacheDistribution] | None = None

    def read(self, ids: IntArray, hiddens: F32Array, first: int) -> None:
        """Take the pairs of a text: ``hiddens[j]`` is the hidden vector at position
        ``first + j`` of ``ids`` (the one that predicted ``ids[first + j + 1]``)."""
        shared = _shared_length(self._tokens, ids)
        start = max(first, shared - 1)  # the pair of position p is (h_p, ids[p + 1])
        stop = min(first + len(hiddens), len(ids) - 1)
        if stop > start:
            self.cache.add(hiddens[start - first : stop - first], ids[start + 1 : stop + 1])
            self._reads += 1
        self._tokens = ids

    def mixture_weight(self) -> float:
        return session_lam(self.cache, self.lam)

    def distribution(self, hidden: F32Array) -> CacheDistribution:
        """``p_cache`` at ``hidden``. Every keystroke inside a word asks at the same hidden
        vector (the text before the word has not changed), so the last answer is kept until
        the cache changes; holding ``hidden`` keeps its identity from being reused."""
        last = self._last
        if last is not None and last[0] is hidden and last[1] == self._reads:
            return last[2]
        found = self.cache.distribution(hidden)
        self._last = (hidden, self._reads, found)
        return found


def warm_up(hidden_size: int) -> None:
    """Compile (or load from numba's cache) every kernel a cache runs, for each storage type:
    the first keystroke-sized add of a process would otherwise pay ~3 ms for it."""
    h = np.ones((8, hidden_size), dtype=np.float32)
    for dtype in DTYPES:
        cache = ContinuousCache(8, hidden_size, theta=1.0, dtype=dtype)
        cache.add(h, np.arange(8))  # sorts afresh
        cache.add(h[:1], [4])  # moves one slot
        found = cache.distribution(h[0])
        found.mix(np.arange(2), np.zeros(2), 0.5)


def _shared_length(a: IntArray, b: IntArray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
