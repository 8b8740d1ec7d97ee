"""Compiled inner loops of :mod:`service.adaptation` (numba, ``nogil``). Private to that module.

A full continuous cache is 990 int8 vectors of 256 (250 KiB), read once at every word start.
Widening it to float32 in numpy first writes and reads a 1 MiB temporary; :func:`int8_dots`
reads the bytes once. The cache distribution groups the cached pairs by next word; instead of
``np.unique`` of the ring buffer's words after every add, the buffer keeps its slots in word
order (``order``) and :func:`put_words` moves the one slot an add overwrites.

Conventions: ``words (capacity,)`` int32 is each slot's next-word id; ``order (capacity,)``
int64 lists the live slots ``[0, count)`` sorted by ``(word, slot)``. Like the decode kernels,
these never allocate (:func:`service.decode_kernels.kernel_jit`): callers pass the outputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.decode_kernels import DOT_MATH, F32Array, F64Array, IntArray, kernel_jit

I32Array = npt.NDArray[np.int32]
I8Array = npt.NDArray[np.int8]


@kernel_jit(fastmath=DOT_MATH)  # vectorises the int8 -> float32 widening
def int8_dots(steps: I8Array, scale: F32Array, h: F32Array, count: int, out: F64Array) -> None:
    """``out[i] = scale[i] * (steps[i] . h)`` for the first ``count`` rows."""
    for i in range(count):
        row = steps[i]
        acc = np.float32(0.0)
        for t in range(row.shape[0]):
            acc += np.float32(row[t]) * h[t]
        out[i] = np.float64(acc) * np.float64(scale[i])


@kernel_jit()
def grouped_softmax(
    dots: F64Array,
    theta: float,
    words: I32Array,
    order: IntArray,
    count: int,
    ids_out: IntArray,
    probs_out: F64Array,
) -> int:
    """``softmax(theta * dots)`` over the first ``count`` slots, summed per next word: the
    distinct words ascending in ``ids_out`` and their probabilities in ``probs_out``; returns
    how many there are."""
    peak = -np.inf
    for i in range(count):
        peak = max(peak, theta * dots[i])
    total = 0.0
    m = -1
    for j in range(count):
        slot = order[j]
        weight = np.exp(theta * dots[slot] - peak)  # the largest weight is 1: no overflow
        total += weight
        word = np.int64(words[slot])
        if m < 0 or ids_out[m] != word:
            m += 1
            ids_out[m] = word
            probs_out[m] = 0.0
        probs_out[m] += weight
    for j in range(m + 1):
        probs_out[j] /= total
    return m + 1


@kernel_jit()
def put_words(
    words: I32Array, order: IntArray, count: int, slots: IntArray, new_words: IntArray
) -> int:
    """Write ``new_words[j]`` into slot ``slots[j]`` one by one, keeping ``order`` sorted;
    ``count`` is the number of live slots before, the new count is returned (a slot at
    ``count`` or beyond becomes live; one below is overwritten)."""
    for j in range(slots.shape[0]):
        slot = slots[j]
        if slot < count:  # overwritten: take it out of the order
            at = 0
            while order[at] != slot:
                at += 1
            for i in range(at, count - 1):
                order[i] = order[i + 1]
            count -= 1
        word = new_words[j]
        words[slot] = word
        # The first position whose (word, slot) is greater: binary search over the live order.
        lo, hi = 0, count
        while lo < hi:
            mid = (lo + hi) // 2
            other = order[mid]
            if words[other] < word or (words[other] == word and other < slot):
                lo = mid + 1
            else:
                hi = mid
        for i in range(count, lo, -1):
            order[i] = order[i - 1]
        order[lo] = slot
        count += 1
    return count


@kernel_jit()
def put_int8(steps: I8Array, scale: F32Array, slots: IntArray, hiddens: F32Array) -> None:
    """Store row ``j`` of ``hiddens`` in slot ``slots[j]`` as
    :func:`service.adaptation.quantize` would (its float32 arithmetic, ties to even)."""
    top = np.float32(127.0)
    for j in range(slots.shape[0]):
        row = hiddens[j]
        peak = np.float32(0.0)
        for t in range(row.shape[0]):
            peak = max(peak, abs(row[t]))
        step = peak / top if peak > 0 else np.float32(1.0)
        slot = slots[j]
        scale[slot] = step
        for t in range(row.shape[0]):
            steps[slot, t] = np.int8(min(max(np.rint(row[t] / step), -top), top))


@kernel_jit()
def mixed_log_probs(
    ids: IntArray,
    tree_lps: F64Array,
    cache_ids: IntArray,
    cache_probs: F64Array,
    lam: float,
    out: F64Array,
) -> None:
    """``out[n] = log((1 - lam) exp(tree_lps[n]) + lam p_cache(ids[n]))``, where ``p_cache``
    is ``cache_probs`` at ``ids[n]`` in the ascending ``cache_ids``, 0 if absent (``0 < lam <
    1``): :func:`service.adaptation.mixture_log_probs` of a lookup, in one call instead of ten
    numpy ones (each of which costs ~5 µs on a keystroke's cold path)."""
    keep, share = np.log1p(-lam), np.log(lam)
    size = cache_ids.shape[0]
    for n in range(ids.shape[0]):
        word = ids[n]
        lo, hi = 0, size
        while lo < hi:  # the first cached id >= word
            mid = (lo + hi) // 2
            if cache_ids[mid] < word:
                lo = mid + 1
            else:
                hi = mid
        a = keep + tree_lps[n]
        if lo == size or cache_ids[lo] != word or cache_probs[lo] <= 0.0:
            out[n] = a
            continue
        b = share + np.log(cache_probs[lo])
        top = max(a, b)
        out[n] = top + np.log1p(np.exp(-abs(a - b)))  # np.logaddexp's formula
