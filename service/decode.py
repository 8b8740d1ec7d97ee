"""Decoding the hierarchical softmax: exact best-first top-k, prefix completion, phrase beams.

A word's probability is the product of branch probabilities on its root-to-leaf path, so a
node's path probability bounds every word below it. Best-first search over path
log-probability (a max-heap frontier) therefore pops leaves in exact descending order: the
first ``k`` leaves popped are the exact top ``k``, after expanding a handful of nodes instead
of scoring all ``V`` words (fastText's ``predict`` does a depth-first variant of this; we pop
the more probable branch first and work in log space with a stable log-sigmoid).

Constraints are pushed into the search rather than applied afterwards, so it stays exact:
``min_prob`` prunes nodes whose path probability is already too small, banned words are never
pushed, and a typed prefix marks the matching leaves and their ancestors so that subtrees
without a matching word are never entered. Everything O(V) (the sorted vocabulary for prefix
ranges) is built once in :class:`DecodeTree`; a request costs O(expansions) plus, for a prefix,
O(matching words' ancestors) capped by :data:`MARK_LIMIT`.

A latency budget is honoured by running the compiled search in chunks of
:data:`CHUNK_EXPANSIONS` expansions and reading the clock between chunks; a search that ends
within its first chunk (the common case) never reads the clock.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service import decode_kernels as kernels
from service.bundle import Bundle
from service.tree import Factors, Tree

BoolArray = npt.NDArray[np.bool_]
MarkArray = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]

Step = Callable[[IntArray, F32Array], tuple[F32Array, F32Array]]
"""Encoder step of :func:`beam_search`: ``(ids (B,), state) -> (hidden (B, d), state)``."""

CHUNK_EXPANSIONS = 1024
"""Expansions between two clock readings when a deadline is set (~50-100 µs of work)."""

MARK_LIMIT = 8192
"""Prefixes matching more words than this are filtered at the leaves instead of marked."""

SHARED_MARKS_MIN_WORDS = 64
"""Prefixes matching at least this many words share node marks built once (:class:`_SharedMarks`):
marking a one-letter prefix's thousands of words and ancestors costs ~50 µs, as much as the
search, and the same few short prefixes start most words a keyboard completes."""

SHARED_MARKS_BYTES = 32 << 20
"""Memory for shared node marks, a bitset over the tree's nodes each (8 KiB at V = 33k, where
all 242 case-folded prefixes with 64 words or more and the 104 exact-case ones starting with a
capital take 2.7 MiB)."""

_UNLIMITED = 1 << 62
_MAX_CHAR = chr(0x10FFFF)
_HEAP_START = 4096
_NO_MARKS = np.zeros(0, dtype=np.uint64)
_NO_RANKS = np.zeros(0, dtype=np.int64)
_NO_BANS = np.zeros(0, dtype=bool)


class TopK(NamedTuple):
    """The result of :func:`top_k` (a named tuple: cheap to build on the hot path)."""

    ids: IntArray
    """Word ids, most probable first; at most ``k``."""
    logprobs: F64Array
    """Natural-log ``P(word | h)`` of each id."""
    expansions: int
    """Internal nodes expanded."""
    exact: bool
    """False when the deadline or the expansion cap stopped the search early."""
    unexplored_mass: float
    """Upper bound on the total probability of the qualifying words not returned: those never
    examined, and those a wide node's expansion found below the k-th best of its own leaves."""
    frontier: _Frontier | None = None
    """Where the search stopped, for :func:`more` (None: it cannot be continued)."""


@dataclass(frozen=True)
class _Frontier:
    """A finished search's heap, left in its thread's scratch arrays: valid while the scratch
    still names it as its owner (any other search there takes ownership first)."""

    fixed: SearchArgs
    size: int
    expansions: int
    mass: float


@dataclass(frozen=True)
class Phrase:
    ids: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class BeamResult:
    """The result of :func:`beam_search`."""

    phrases: list[Phrase]
    """Best first, at most ``k``."""
    expansions: int
    exact: bool
    """Every inner top-k was exact (the beam itself is a heuristic unless it is wide enough)."""
    unexplored_mass: float
    """Sum over inner searches of ``P(beam) * unexplored_mass``."""
    encoder_calls: int


class _PrefixIndex:
    """The vocabulary sorted by a key, so the words starting with a prefix are one range."""

    def __init__(self, keys: list[str]) -> None:
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.keys = [keys[i] for i in order]
        self.order: IntArray = np.asarray(order, dtype=np.int64)  # sorted position -> word id
        self.rank: IntArray = np.empty(len(keys), dtype=np.int64)  # word id -> sorted position
        self.rank[self.order] = np.arange(len(keys), dtype=np.int64)

    def range(self, prefix: str) -> tuple[int, int]:
        """``[lo, hi)`` of the sorted positions of the words starting with ``prefix``."""
        if not prefix:
            return 0, len(self.keys)
        lo = bisect_left(self.keys, prefix)
        if prefix[-1] == _MAX_CHAR:  # no successor string: compare truncated keys instead
            return lo, bisect_right(self.keys, prefix, key=itemgetter(slice(len(prefix))))
        # Every word starting with the prefix sorts before the prefix's successor.
        return lo, bisect_left(self.keys, prefix[:-1] + chr(ord(prefix[-1]) + 1), lo)

    def popular(self, min_words: int) -> list[tuple[str, int, int]]:
        """Every prefix matching at least ``min_words`` words, as ``(prefix, lo, hi)``, most
        words first. The cost is the number of words under such prefixes, summed over them."""
        found: list[tuple[str, int, int]] = []
        todo = [("", 0, len(self.keys))]
        while todo:
            prefix, lo, hi = todo.pop()
            at = len(prefix)
            position = lo
            # Sorted keys with this prefix: the ones that end here first, then one run per
            # next character.
            for char, run in groupby(self.keys[lo:hi], key=itemgetter(slice(at, at + 1))):
                size = sum(1 for _ in run)
                if char and size >= min_words:
                    found.append((prefix + char, position, position + size))
                    todo.append((prefix + char, position, position + size))
                position += size
        found.sort(key=lambda item: item[1] - item[2])
        return found


class _SharedMarks:
    """Node marks of popular prefixes, shared by all threads and never changed once built.

    A prefix's marks set the bit of every leaf matching it and of all their ancestors (the
    kernels' ``node_marks``). Banned words are marked too (the marks do not depend on a
    request's bans); the search still never pushes a banned leaf.

    The prefixes with the most words that a keyboard sends, case-folded ones and (given
    ``exact``) exact-case ones that start with a capital, which is how :mod:`service.policy`
    searches after a typed capital, are marked up front in one block, as much of it as
    ``max_bytes`` allows: built on first use instead, each cost a request up to ~2 ms, mostly
    faulting in fresh memory (for an exact-case ``C`` at V = 33k, ~0.2 ms of a first search's
    0.7). Other prefixes (or more than the block holds) are built on first use and kept in an LRU
    within the rest of the memory; an evicted array stays valid for a search still reading it.
    """

    def __init__(
        self,
        parent: IntArray,
        max_bytes: int,
        folded: _PrefixIndex | None = None,
        min_words: int = 1,
        *,
        exact: _PrefixIndex | None = None,
    ) -> None:
        self.parent = parent
        self.words = kernels.marks_words(len(parent))
        slots = max(1, max_bytes // (8 * self.words))
        popular: list[tuple[bool, _PrefixIndex, str, int, int]] = []
        if folded is not None:
            popular += [(True, folded, *found) for found in folded.popular(min_words)]
        if exact is not None:
            capitals = (found for found in exact.popular(min_words) if found[0][:1].isupper())
            popular += [(False, exact, *found) for found in capitals]
        popular.sort(key=lambda item: item[3] - item[4])  # most words first
        del popular[slots // 2 :]
        self.block: MarkArray = np.zeros((len(popular), self.words), dtype=np.uint64)
        self._fixed: dict[tuple[bool, str], MarkArray] = {}
        for row, (is_folded, index, key, lo, hi) in enumerate(popular):
            kernels.mark_ancestors(index.order, lo, hi, parent, _NO_BANS, self.block[row], True)
            self._fixed[(is_folded, key)] = self.block[row]
        self.capacity = max(1, slots - len(popular))
        self._recent: OrderedDict[tuple[bool, str], MarkArray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: _PrefixIndex, key: str, folded: bool, lo: int, hi: int) -> MarkArray:
        """The marks of ``key``, whose words are ``index.order[lo:hi]`` (the caller's range)."""
        marks = self._fixed.get((folded, key))
        if marks is not None:
            return marks
        with self._lock:
            marks = self._recent.get((folded, key))
            if marks is not None:
                self._recent.move_to_end((folded, key))
                return marks
        marks = np.zeros(self.words, dtype=np.uint64)  # built outside the lock
        kernels.mark_ancestors(index.order, lo, hi, self.parent, _NO_BANS, marks, True)
        with self._lock:
            self._recent[(folded, key)] = marks
            while len(self._recent) > self.capacity:
                self._recent.popitem(last=False)
        return marks


class _Scratch:
    """One thread's reusable buffers: a request allocates only its result arrays."""

    def __init__(self, num_nodes: int, buf_size: int) -> None:
        self.heap_lp: F64Array = np.empty(_HEAP_START + buf_size, dtype=np.float64)
        self.heap_node: IntArray = np.empty(_HEAP_START + buf_size, dtype=np.int64)
        self.buf: F64Array = np.empty(buf_size, dtype=np.float64)
        self.marks: MarkArray = np.zeros(kernels.marks_words(num_nodes), dtype=np.uint64)
        self._marked: tuple[IntArray, int, int] | None = None
        self.owner: _Frontier | None = None
        """The search whose heap and marks these arrays hold, if it may be continued."""

    def grow_heap(self) -> None:
        """Double the heap arrays, keeping their contents (a search resumes on them)."""
        self.heap_lp = np.concatenate([self.heap_lp, np.empty_like(self.heap_lp)])
        self.heap_node = np.concatenate([self.heap_node, np.empty_like(self.heap_node)])

    def mark(self, order: IntArray, lo: int, hi: int, parent: IntArray, bans: BoolArray) -> None:
        """Set :attr:`marks` to the leaves ``order[lo:hi]`` and their ancestors, first clearing
        the previous request's marks by walking the same paths: O(marked nodes), not O(N)."""
        if self._marked is not None:
            last, last_lo, last_hi = self._marked
            kernels.mark_ancestors(last, last_lo, last_hi, parent, _NO_BANS, self.marks, False)
        self._marked = (order, lo, hi)
        kernels.mark_ancestors(order, lo, hi, parent, bans, self.marks, True)


class DecodeTree:
    """A tree with its parameters and the indexes decoding needs, built once per bundle.

    Safe to share between threads: per-request scratch space is thread-local.
    """

    def __init__(
        self,
        tree: Tree,
        weight: npt.NDArray[np.floating],
        bias: npt.NDArray[np.floating],
        vocab: Sequence[str] | None = None,
        factors: Factors | None = None,
    ) -> None:
        tree.check_parameters(weight, bias)
        if vocab is not None and len(vocab) != tree.num_leaves:
            raise ValueError(f"vocab has {len(vocab)} words, the tree has {tree.num_leaves} leaves")
        self.tree = tree
        self.weight: F32Array = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias: F32Array = np.ascontiguousarray(bias, dtype=np.float32)
        self.vocab = None if vocab is None else list(vocab)
        self._exact = None if vocab is None else _PrefixIndex(self.vocab or [])
        self._folded = None if vocab is None else _PrefixIndex([w.casefold() for w in vocab])
        self.max_children = tree.max_children
        self.max_depth = int(tree.depths.max())
        self.num_words = tree.num_leaves
        self.hidden_size = int(self.weight.shape[1])
        self.hidden_shape = (self.hidden_size,)
        self.factors = Factors.none(tree, self.hidden_size) if factors is None else factors
        if self.factors.dim != self.hidden_size:
            raise ValueError(
                f"factors project {self.factors.dim} dims, the rows have {self.hidden_size}"
            )
        # A node's child log-probs, then the projected vector of a factored node after them.
        self.buf_size = self.max_children + self.factors.max_rank
        self.arrays = (
            tree.child_ptr,
            tree.children,
            self.weight,
            self.bias,
            self.factors.kernel_arrays,
        )
        """The model as the kernels take it."""
        self._local = threading.local()
        self._start_search: Callable[..., tuple[int, int, int, float]] = self._first_search
        self._shared_marks = _SharedMarks(
            tree.parent, SHARED_MARKS_BYTES, self._folded, SHARED_MARKS_MIN_WORDS,
            exact=self._exact,
        )  # fmt: skip

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> DecodeTree:
        return cls(bundle.tree, bundle.weight, bundle.bias, bundle.vocab, bundle.factors)

    def ban_mask(self, ids: Iterable[int]) -> BoolArray:
        """A ``(V,)`` mask with ``True`` at ``ids``: words never suggested. Build it once."""
        mask = np.zeros(self.num_words, dtype=bool)
        mask[np.fromiter(ids, dtype=np.int64)] = True
        return mask

    def count_prefix(self, prefix: str, *, case_insensitive: bool = True) -> int:
        index, key = self._prefix_index(prefix, case_insensitive)
        lo, hi = index.range(key)
        return hi - lo

    def _prefix_index(self, prefix: str, case_insensitive: bool) -> tuple[_PrefixIndex, str]:
        if self._exact is None or self._folded is None:
            raise ValueError("prefix completion needs a DecodeTree built with its vocabulary")
        if case_insensitive:
            return self._folded, prefix.casefold()
        return self._exact, prefix

    def _first_search(self, *args: object) -> tuple[int, int, int, float]:
        """:func:`kernels.start_search` on the first search; it then calls its entry point
        directly (:func:`kernels.entry_point`). :func:`top_k` validates what callers hand it
        (``hidden``, ``banned``) and builds everything else, so the types never change."""
        self._start_search = kernels.entry_point(kernels.start_search, args)
        return self._start_search(*args)

    def _scratch(self) -> _Scratch:
        scratch: _Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = _Scratch(self.tree.num_nodes, self.buf_size)
            self._local.scratch = scratch
        return scratch


FilterArgs = tuple[IntArray, int, int, BoolArray, MarkArray, float]
"""A request's constraints as the kernels take them (empty arrays mean "off"):
``(leaf_rank, lo, hi, banned, node_marks, min_logprob)``."""


SearchArgs = tuple[
    IntArray, IntArray, F32Array, F32Array, kernels.FactorArrays, F32Array, int,
    IntArray, int, int, BoolArray, MarkArray, float,
]  # fmt: skip
"""The kernels' leading arguments: the model (:attr:`DecodeTree.arrays`), ``h``, ``V`` and the
:data:`FilterArgs`."""


def _make_filter(
    dt: DecodeTree,
    min_prob: float,
    prefix: str | None,
    case_insensitive: bool,
    banned: BoolArray | None,
) -> FilterArgs:
    if banned is None:
        bans = _NO_BANS
    elif banned.shape == (dt.num_words,) and banned.dtype == np.bool_:
        bans = banned if banned.flags.c_contiguous else np.ascontiguousarray(banned)
    else:
        raise ValueError(f"banned must be a ({dt.num_words},) bool mask, got shape {banned.shape}")
    min_lp = math.log(min_prob) if min_prob > 0.0 else -math.inf
    if not prefix:
        return _NO_RANKS, 0, dt.num_words, bans, _NO_MARKS, min_lp
    index, key = dt._prefix_index(prefix, case_insensitive)
    lo, hi = index.range(key)
    if hi - lo > MARK_LIMIT:  # marking would cost more than filtering popped leaves
        return index.rank, lo, hi, bans, _NO_MARKS, min_lp
    if hi - lo >= SHARED_MARKS_MIN_WORDS:
        marks = dt._shared_marks.get(index, key, case_insensitive, lo, hi)
        return index.rank, lo, hi, bans, marks, min_lp
    scratch = dt._scratch()
    scratch.mark(index.order, lo, hi, dt.tree.parent, bans)
    return index.rank, lo, hi, bans, scratch.marks, min_lp


_F32 = np.dtype(np.float32)


def _as_hidden(dt: DecodeTree, hidden: npt.NDArray[np.floating]) -> F32Array:
    # The common case (a float32 row from the encoder) is checked with attribute lookups only:
    # this runs on every search, and a call into numpy costs as much as a tenth of one.
    if hidden.dtype is _F32 and hidden.shape == dt.hidden_shape and hidden.flags.c_contiguous:
        return hidden
    h = np.ascontiguousarray(hidden, dtype=np.float32)
    if h.shape != dt.hidden_shape:
        raise ValueError(f"hidden must have shape ({dt.hidden_size},), got {h.shape}")
    return h


# -- exact top-k -------------------------------------------------------------------------------


def top_k(
    dt: DecodeTree,
    hidden: npt.NDArray[np.floating],
    k: int,
    *,
    min_prob: float = 0.0,
    prefix: str | None = None,
    case_insensitive: bool = True,
    banned: BoolArray | None = None,
    max_expansions: int | None = None,
    deadline: float | None = None,
) -> TopK:
    """The ``k`` most probable qualifying words after ``hidden`` (exact unless stopped early).

    Qualifying words have ``P >= min_prob``, start with ``prefix`` (``str.casefold`` comparison
    when ``case_insensitive``) and are not ``banned``. ``deadline`` is a ``time.perf_counter()``
    value, read every :data:`CHUNK_EXPANSIONS` expansions; ``max_expansions`` caps the work.
    When either stops the search, the exact leading words found so far are completed with
    greedy descents from the best unexplored nodes and the result has ``exact=False``.
    """
    # This function is on every request's path and costs about as much as the search itself
    # for a one-word suggestion, so it avoids avoidable calls: each one here is ~0.1-0.5 µs.
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    dt._scratch().owner = None  # this search's heap and marks replace any continuable one's
    fixed: SearchArgs = (
        *dt.arrays,
        _as_hidden(dt, hidden),
        dt.num_words,
        *_make_filter(dt, min_prob, prefix, case_insensitive, banned),
    )
    cap = _UNLIMITED if max_expansions is None else max(int(max_expansions), 0)
    stop = cap if deadline is None or cap <= CHUNK_EXPANSIONS else CHUNK_EXPANSIONS
    scratch = dt._scratch()
    out_ids = np.empty(k, np.int64)  # fresh: the result keeps views of these
    out_lp = np.empty(k, np.float64)
    size, n_out, expansions, mass = dt._start_search(
        *fixed, scratch.heap_lp, scratch.heap_node, out_ids, out_lp, k, stop, scratch.buf
    )
    progress = (size, n_out, expansions, stop, mass)
    return _finish(dt, fixed, cap, deadline, out_ids, out_lp, progress)


def more(
    dt: DecodeTree,
    found: TopK,
    k: int,
    *,
    max_expansions: int | None = None,
    deadline: float | None = None,
) -> TopK | None:
    """The ``k`` best words of the search that gave ``found``, continued from where it stopped
    rather than started again (its first words are ``found``'s), or None where it cannot be
    continued: :func:`top_k` then gives the same words from the start.

    Exact because the frontier is unchanged: best-first search pops words in descending order
    whatever ``k`` it was given, except at wide nodes, which prune leaves below the k-th best
    of their own (:func:`service.decode_kernels.leaf_floor`), so trees with wide nodes are
    never continued. ``max_expansions`` counts the continued search's expansions in all.
    """
    frontier = found.frontier
    scratch = dt._scratch()
    if frontier is None or scratch.owner is not frontier or k <= len(found.ids):
        return None
    n_out = len(found.ids)
    out_ids = np.empty(k, np.int64)
    out_lp = np.empty(k, np.float64)
    out_ids[:n_out], out_lp[:n_out] = found.ids, found.logprobs
    cap = _UNLIMITED if max_expansions is None else max(int(max_expansions), 0)
    expansions = frontier.expansions
    stop = cap if deadline is None else min(cap, expansions + CHUNK_EXPANSIONS)
    size, n_out, expansions, mass = kernels.best_first(
        *frontier.fixed, scratch.heap_lp, scratch.heap_node, frontier.size,
        out_ids, out_lp, n_out, k, expansions, frontier.mass, stop, scratch.buf,
    )  # fmt: skip
    progress = (size, n_out, expansions, stop, mass)
    return _finish(dt, frontier.fixed, cap, deadline, out_ids, out_lp, progress)


def _finish(
    dt: DecodeTree,
    fixed: SearchArgs,
    cap: int,
    deadline: float | None,
    out_ids: IntArray,
    out_lp: F64Array,
    progress: tuple[int, int, int, int, float],
) -> TopK:
    """The result of a search that returned from the kernels with ``progress``. One that stopped
    on a chunk boundary or a full heap is continued until it ends, the deadline passes or
    ``cap`` expansions are spent (then filled up greedily, inexact); an exact one is left
    continuable (:func:`more`) where that stays exact."""
    size, n_out, expansions, stop, mass = progress
    k = out_ids.shape[0]
    scratch = dt._scratch()
    exact = True
    while n_out < k and size > 0:
        if expansions < stop:  # the heap arrays filled up
            scratch.grow_heap()
        elif expansions >= cap or (deadline is not None and time.perf_counter() >= deadline):
            n_out, expansions = kernels.greedy_fill(
                *fixed, scratch.heap_lp, scratch.heap_node, size,
                out_ids, out_lp, n_out, k, expansions, (k - n_out) * dt.max_depth, scratch.buf,
            )  # fmt: skip
            exact = False
            break
        else:
            stop = min(cap, stop + CHUNK_EXPANSIONS)
        size, n_out, expansions, mass = kernels.best_first(
            *fixed, scratch.heap_lp, scratch.heap_node, size,
            out_ids, out_lp, n_out, k, expansions, mass, stop, scratch.buf,
        )  # fmt: skip
    found = TopK(out_ids[:n_out], out_lp[:n_out], expansions, exact, mass)
    if exact and size > 0 and dt.max_children < kernels.WIDE_NODE:
        frontier = _Frontier(fixed, size, expansions, found.unexplored_mass)
        scratch.owner = frontier
        return found._replace(frontier=frontier)
    return found


# -- phrases -----------------------------------------------------------------------------------


def beam_search(
    dt: DecodeTree,
    step: Step,
    hidden: npt.NDArray[np.floating],
    state: F32Array,
    *,
    max_words: int,
    beam_width: int,
    k: int,
    min_prob: float = 0.0,
    prefix: str | None = None,
    case_insensitive: bool = True,
    banned: BoolArray | None = None,
    max_expansions: int | None = None,
    deadline: float | None = None,
    state_axis: int = 1,
) -> BeamResult:
    """The ``k`` best phrases of ``max_words`` words by word-level beam search.

    ``hidden`` / ``state`` are the encoder's output after the context (``state`` holds one
    sequence along ``state_axis``). Each word position runs one exact top-k per beam and then
    ONE batched ``step`` for all surviving beams. ``prefix`` constrains the first word,
    ``banned`` every word, ``min_prob`` the whole phrase; ``max_expansions`` and ``deadline``
    apply to each inner top-k. ``beam_width=1`` is greedy decoding.
    """
    if max_words < 1 or beam_width < 1 or k < 0:
        raise ValueError("max_words and beam_width must be >= 1 and k >= 0")
    beams = [Phrase((), 0.0)]
    hiddens = np.asarray(hidden, dtype=np.float32)[None, :]  # (B, d)
    expansions, exact, unexplored, calls = 0, True, 0.0, 0
    for position in range(max_words):
        last = position == max_words - 1
        width = max(k, beam_width) if last else beam_width
        scored: list[tuple[float, int, int]] = []  # (phrase logprob, beam, word)
        for b, beam in enumerate(beams):
            # The phrase needs P(word) >= min_prob / P(beam); in log space to avoid overflow.
            floor = math.log(min_prob) - beam.logprob if min_prob > 0 else -math.inf
            if floor > 0.0:
                continue  # no continuation can reach min_prob
            found = top_k(
                dt, hiddens[b], width, min_prob=math.exp(floor),
                prefix=prefix if position == 0 else None, case_insensitive=case_insensitive,
                banned=banned, max_expansions=max_expansions, deadline=deadline,
            )  # fmt: skip
            expansions += found.expansions
            exact = exact and found.exact
            unexplored += math.exp(beam.logprob) * found.unexplored_mass
            pairs = zip(found.ids.tolist(), found.logprobs.tolist(), strict=True)
            scored += [(beam.logprob + lp, b, w) for w, lp in pairs]
        scored.sort(key=lambda item: -item[0])  # stable: ties keep beam order
        chosen = scored[: k if last else beam_width]
        if not chosen:
            return BeamResult(beams[:k] if position else [], expansions, exact, unexplored, calls)
        beams = [Phrase((*beams[b].ids, w), lp) for lp, b, w in chosen]
        if last:
            break
        parents = np.fromiter((b for _, b, _ in chosen), dtype=np.int64, count=len(chosen))
        words = np.fromiter((w for _, _, w in chosen), dtype=np.int64, count=len(chosen))
        hiddens, state = step(words, np.take(state, parents, axis=state_axis))
        calls += 1
    return BeamResult(beams, expansions, exact, unexplored, calls)


# -- scoring and the reference -----------------------------------------------------------------


def word_log_probs(
    dt: DecodeTree, hidden: npt.NDArray[np.floating], ids: npt.ArrayLike
) -> F64Array:
    """``log P(word | h)`` of the given word ids, ``(n,)``: O(n * depth) dot products."""
    h = _as_hidden(dt, hidden)
    words = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if words.size and (words.min() < 0 or words.max() >= dt.num_words):
        raise ValueError(f"word ids must lie in [0, {dt.num_words})")
    out = np.empty(words.shape[0], dtype=np.float64)
    tree = dt.tree
    kernels.path_log_probs(
        tree.child_ptr, tree.parent, tree.node_edge, dt.weight, dt.bias, dt.arrays[4], h,
        tree.num_leaves, words, np.empty(dt.buf_size, dtype=np.float64), out,
    )  # fmt: skip
    return out


def brute_force_log_probs(dt: DecodeTree, hidden: npt.NDArray[np.floating]) -> F64Array:
    """Every word's ``log P(word | h)``: ``(V,)`` for ``(d,)``, ``(B, V)`` for ``(B, d)``."""
    h = np.asarray(hidden, dtype=np.float64)
    scores = dt.tree.leaf_log_probs(dt.weight, dt.bias, h, dt.factors)
    return scores[0] if h.ndim == 1 else scores


def warm_up(dt: DecodeTree) -> None:
    """Compile (or load from numba's cache) every kernel variant before serving traffic."""
    h = np.zeros(dt.hidden_size, dtype=np.float32)
    banned = dt.ban_mask([0])
    top_k(dt, h, 3, banned=banned, min_prob=1e-9)
    top_k(dt, h, 3, max_expansions=1)  # the early-stop path: greedy_fill
    if dt.vocab is not None:
        top_k(dt, h, 3, prefix=dt.vocab[-1][:1], banned=banned)
    word_log_probs(dt, h, [0, dt.num_words - 1])
    _warm_up_continuation(dt, h, None)
    if dt.vocab is not None:
        _warm_up_continuation(dt, h, dt.vocab[-1][:1])


def _warm_up_continuation(dt: DecodeTree, h: F32Array, prefix: str | None) -> None:
    """Compile the resumable kernel: real requests reach it only when a search outlasts one chunk
    (a one-letter prefix often does), and compiling it then stalls that request for seconds."""
    scratch = dt._scratch()
    scratch.owner = None
    fixed = (*dt.arrays, h, dt.num_words, *_make_filter(dt, 0.0, prefix, True, None))
    out_ids = np.empty(1, dtype=np.int64)
    out_lp = np.empty(1, dtype=np.float64)
    size, n_out, expansions, mass = kernels.start_search(
        *fixed, scratch.heap_lp, scratch.heap_node, out_ids, out_lp, 1, 1, scratch.buf
    )
    kernels.best_first(
        *fixed, scratch.heap_lp, scratch.heap_node, size,
        out_ids, out_lp, n_out, 1, expansions, mass, expansions + 1, scratch.buf,
    )  # fmt: skip
