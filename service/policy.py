"""What a keyboard may be shown: typed words only, case that fits, no word shown twice.

The tree ranks vocabulary *tokens*; a suggestion bar shows *typed words*, and every slot a user
cannot pick costs keystrokes. :class:`SuggestionPolicy` turns the tree's exact ranking into the
ranking a keyboard shows, and stays exact with respect to it:

* **Word classes** (built once per vocabulary). Punctuation (tokens without a letter or digit:
  ``,`` ``.`` ``"`` ``@-@``) takes no word slot unless the request asks for it. Clitic fragments
  (``'s`` ``'t`` ``'m``: WikiText splits ``don't`` as ``don 't``) are never offered as a word,
  except while the user types one (the partly typed word starts with ``'``, as in ``don'``).
* **Case.** A typed capital keeps its case: the prefix then matches case-sensitively. A
  lowercase prefix matches both cases, but a capitalised word ranks as if its probability were
  :attr:`PolicyConfig.capital_penalty` times smaller, except at a sentence start (the text is
  empty or its last token ends a sentence, perhaps followed by a quote), where capitals are
  what a person types. The probability reported is always the model's own.
* **No re-offering.** Words already shown for the word being typed and passed over (the user
  typed another letter instead) are held back for the rest of that word (:class:`Shown`): they
  rank after every other qualifying word, so they return only to slots nothing else would fill.

Exactness (checked against brute force in tests/test_policy.py). Each rule only *lowers* a
word's ranking score below its log-probability (a penalty; :data:`HELD_PENALTY` for a held-back
word), so :meth:`SuggestionPolicy.top_k` fetches the tree's exact top ``n`` under the same
filters and rescores them. Every word not fetched has log-probability, and hence score, at most
that of the ``n``-th fetched word; once the ``k``-th best rescored word reaches that bound (or
fewer than ``n`` words qualify at all), no unfetched word can enter the top ``k``, and the
result is exact. Otherwise ``n`` doubles and the search runs again.

Two more kinds of word join the ranking (each tested against brute force too): contractions
(:mod:`service.forms`: a host's probability shared out between its bare word and its forms, so
again only lowered), and, with a session, the continuous cache's mixture
(:mod:`service.adaptation`), which *raises* the words in the cache: a word outside it has
``P_mix = (1 - lam) P_tree``, so the tree's order holds among those and the bound above just
shifts by ``log(1 - lam)``, while the qualifying cached words that could still reach the top
``k`` are scored one by one (:meth:`SuggestionPolicy._with_cache`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service import decode
from service.adaptation import CacheDistribution
from service.forms import MIN_CLITIC_PROB, After, WordForms
from service.sessions import Shown

BoolArray = npt.NDArray[np.bool_]
Tokens = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]

SENTENCE_END = frozenset({".", "!", "?", "<eos>"})
"""Tokens after which the next word starts a sentence."""

QUOTES = frozenset({'"'})
"""Tokens that may stand between a sentence end and the next sentence's first word: a quote
that closes the sentence (WikiText writes ``. "``) or opens the next one (``" The``). After
``. "`` the next word in WikiText-2's test split is capitalised 194 times in 253."""

HELD_PENALTY = 1e4
"""Subtracted from a held-back word's score (natural log): below any other word's."""

_MIN_CLITIC_LOGPROB = math.log(MIN_CLITIC_PROB)

_MAX_FETCH = 4096
"""The largest rescoring fetch; past it the result is the best found (``exact=False``)."""

_SPARE = 1
"""Words fetched beyond ``k`` when capitals or contractions may rank some down."""

_CACHE_LOOKUPS = 8
"""Cached words whose tree probability is looked up at a time (a few dot products each)."""

_MAX_CACHE_LOOKUPS = 32
"""More candidates than this from the cache, and the tree list is lengthened instead."""

_CACHE_FETCH_FACTOR = 2
"""The first tree list is this much longer at a word start with a session cache: behind a
short list's bound, a full cache lets more than :data:`_MAX_CACHE_LOOKUPS` words through, and
a second search cost more than the longer first one (benchmarks/http_latency.py's full-cache
keystrokes at a word start: 0.58 -> 0.53 ms mean in-process)."""


def _cache_floor(kth: float, uncached_mass: float, lam: float) -> float:
    """The least ``p_cache`` with which an unfetched word's mixture bound,
    ``uncached_mass + lam p_cache``, reaches the log-probability ``kth`` (a hair lower, so that
    rounding never drops a word that could tie)."""
    return (math.exp(kth) * (1.0 - 1e-9) - uncached_mass) / lam


@dataclass(frozen=True)
class PolicyConfig:
    capital_penalty: float = 4.0
    """How much more probable a capitalised word must be than a lowercase one to rank above it
    after a lowercase prefix (1: no preference; chosen by benchmarks/keystrokes.py)."""
    reoffer: bool = False
    """Default for requests: show again words passed over for the word being typed."""
    contractions: bool = True
    """Offer ``don't`` as one word (:mod:`service.forms`)."""
    session_words: bool = True
    """Offer words outside the vocabulary that the session typed (:mod:`service.session_words`)."""

    def __post_init__(self) -> None:
        if not self.capital_penalty >= 1.0 or math.isinf(self.capital_penalty):
            raise ValueError(f"capital_penalty must be finite and >= 1, got {self.capital_penalty}")


@dataclass(frozen=True)
class WordClasses:
    """Per-token flags of a vocabulary, each a ``(V,)`` mask."""

    punctuation: BoolArray
    fragment: BoolArray
    capitalised: BoolArray

    @classmethod
    def of(cls, vocab: Sequence[str]) -> WordClasses:
        punctuation = np.array([not any(c.isalnum() for c in t) for t in vocab], dtype=bool)
        fragment = np.array([t[:1] == "'" and t[1:2].isalpha() for t in vocab], dtype=bool)
        capitalised = np.array([t[:1].isupper() for t in vocab], dtype=bool)
        return cls(punctuation=punctuation, fragment=fragment, capitalised=capitalised)


Word = tuple[int, ...] | str
"""A suggestion: token ids (one token, or a host and its clitic, :mod:`service.forms`), or the
text of a word outside the vocabulary that the session typed (:mod:`service.session_words`)."""

_Scored = tuple[float, Word, float]
"""(ranking score, word, the model's log-probability)."""
_ScoredTokens = tuple[float, tuple[int, ...], float]


class Mixture(NamedTuple):
    """A session cache's part of ``P_mix = (1 - lam) P_tree + lam p_cache`` for one request
    (:mod:`service.adaptation`)."""

    lam: float
    distribution: CacheDistribution


@dataclass(frozen=True)
class _Request:
    """What one :meth:`SuggestionPolicy.top_k` call filters and ranks by."""

    dt: decode.DecodeTree
    prefix: str
    case_insensitive: bool
    banned: BoolArray
    held: frozenset[Word]
    cache: Mixture | None
    penalty: float
    min_lp: float

    def qualifies(self, ids: Tokens) -> BoolArray:
        """Which of ``ids`` match the prefix and are not banned (as the tree search filters)."""
        if not self.prefix:
            return ~self.banned[ids]
        index, key = self.dt._prefix_index(self.prefix, self.case_insensitive)
        lo, hi = index.range(key)
        rank = index.rank[ids]
        ok = (rank >= lo) & (rank < hi)
        ok[ok] = ~self.banned[ids[ok]]
        return ok


@dataclass(frozen=True)
class Ranked:
    """The result of :meth:`SuggestionPolicy.top_k`: words best first under the policy."""

    words: list[Word]
    logprobs: list[float]
    """The model's own ``log P(word | context)``, not the policy's ranking score."""
    expansions: int
    exact: bool
    unexplored_mass: float


class SuggestionPolicy:
    """The rules above for one vocabulary; masks are built once, requests only pick one."""

    def __init__(
        self, vocab: Sequence[str], banned_ids: Sequence[int], eos_id: int, config: PolicyConfig
    ) -> None:
        """``banned_ids`` are never suggested (``<unk>``, the block list), ``<eos>`` on request."""
        self.config = config
        self.classes = WordClasses.of(vocab)
        self.forms = WordForms.of(vocab)
        self._split_floor = math.log(len(self.forms.clitic_ids) + 1)
        # Per word, for _floors: what a split may take from a host, and 1.0 for a capital.
        self._split_cost = np.where(self.forms.is_host, self._split_floor, 0.0)
        self._capital_ones = self.classes.capitalised.astype(np.float64)
        self.sentence_end_ids = frozenset(i for i, t in enumerate(vocab) if t in SENTENCE_END)
        self.quote_ids = frozenset(i for i, t in enumerate(vocab) if t in QUOTES)
        always = np.zeros(len(vocab), dtype=bool)
        always[np.asarray(banned_ids, dtype=np.int64)] = True
        self._banned: dict[tuple[bool, bool, bool], BoolArray] = {}
        for include_eos in (False, True):
            for include_punctuation in (False, True):
                for typing_fragment in (False, True):
                    mask = always.copy()
                    mask[eos_id] = not include_eos
                    mask |= self.classes.fragment if not typing_fragment else False
                    mask |= self.classes.punctuation if not include_punctuation else False
                    self._banned[include_eos, include_punctuation, typing_fragment] = mask

    def banned(self, prefix: str, *, include_eos: bool, include_punctuation: bool) -> BoolArray:
        """Tokens that may not fill a word slot for this request (a shared mask: never write)."""
        return self._banned[include_eos, include_punctuation, prefix[:1] == "'"]

    def starts_sentence(self, context: Tokens) -> bool:
        """The next word starts a sentence: the context is empty or ends in a sentence end,
        perhaps followed by quotes (:data:`QUOTES`)."""
        end = len(context)
        while end > 0 and int(context[end - 1]) in self.quote_ids:
            end -= 1
        return end == 0 or int(context[end - 1]) in self.sentence_end_ids

    def held_back(self, shown: Shown | None, context: Tokens, prefix: str) -> frozenset[Word]:
        """Words shown earlier for the word being typed, when this request continues it.

        The same word continues when the context is unchanged and the prefix extends the one
        typed at the previous request; a repeated request (same prefix) holds back what its
        first showing held back, so it gets the same answer; a deletion starts afresh.
        """
        if shown is None or shown.context.tobytes() != context.tobytes():
            return frozenset()
        if prefix == shown.prefix:
            return shown.held
        if prefix.startswith(shown.prefix):
            return shown.held | shown.words
        return frozenset()

    def top_k(
        self,
        dt: decode.DecodeTree,
        hidden: npt.NDArray[np.floating],
        k: int,
        *,
        prefix: str,
        banned: BoolArray,
        held: frozenset[Word],
        sentence_start: bool,
        after: After | None = None,
        extra: Sequence[tuple[str, float]] = (),
        cache: Mixture | None = None,
        clitic_memo: dict[int, F64Array] | None = None,
        min_prob: float = 0.0,
        max_expansions: int | None = None,
        deadline: float | None = None,
    ) -> Ranked:
        """The ``k`` best words under the policy's ranking (exact; see the module docstring).

        With ``after`` (the encoder after the context plus one token), hosts that can still
        reach the top ``k`` are split into their contractions (:mod:`service.forms`).
        ``extra`` are more qualifying words, ``(text, log-probability)``, outside the tree.
        With ``cache``, probabilities are the session cache's mixture (:class:`Mixture`).
        ``clitic_memo`` keeps the hosts' clitic log-probabilities for this context (they do not
        depend on the prefix, so later keystrokes of the word reuse them).
        """
        typed_capital = prefix[:1].isupper()
        exempt = sentence_start or typed_capital
        request = _Request(
            dt, prefix, not typed_capital, banned, held, cache,
            penalty=0.0 if exempt else math.log(self.config.capital_penalty),
            min_lp=math.log(min_prob) if min_prob > 0.0 else -math.inf,
        )  # fmt: skip
        # Uncached words have P_mix = (1 - lam) P_tree: the tree search's floor is raised to
        # match, and cached words below it are looked up on their own (_with_cache).
        tree_min_prob = min(min_prob / (1.0 - cache.lam), 1.0) if cache else min_prob
        split = {} if clitic_memo is None else clitic_memo  # host -> log P(clitic | host)
        # Enough for one search to settle as a rule: k words, the held-back ones the tree will
        # pop again, and a few for capitals and hosts ranked down (if short, it searches again).
        lowered = request.penalty != 0.0 or after is not None
        n = k + self._held_in_tree(request) + (_SPARE if lowered else 0)
        if cache is not None and not prefix:
            n *= _CACHE_FETCH_FACTOR
        found: decode.TopK | None = None
        while True:
            # A longer list continues the last search where it can (decode.more), rather than
            # searching again from the root for the words it already has.
            longer = None if found is None else decode.more(
                dt, found, n, max_expansions=max_expansions, deadline=deadline
            )  # fmt: skip
            found = longer if longer is not None else decode.top_k(
                dt, hidden, n, min_prob=tree_min_prob, prefix=prefix or None,
                case_insensitive=request.case_insensitive, banned=banned,
                max_expansions=max_expansions, deadline=deadline,
            )  # fmt: skip
            exhausted = len(found.ids) < n
            # Every qualifying word not fetched has at most this tree log-probability.
            if exhausted:
                bound = math.log(tree_min_prob) if tree_min_prob > 0.0 else -math.inf
            else:
                bound = float(found.logprobs[-1])
            tokens = self._scored_tokens(request, found, k, hidden, bound, last=n >= _MAX_FETCH)
            if tokens is None:  # a longer tree list is cheaper than many cached-word lookups
                n = min(2 * n, _MAX_FETCH)
                continue
            if after is not None:
                tokens = self._with_forms(dt, tokens, k, request, after, split)
            words: list[_Scored] = [*tokens, *self._best_extra(extra, request, k)]
            scored = sorted(
                (
                    (score - HELD_PENALTY if word in held else score, word, lp)
                    for score, word, lp in words
                    if lp >= request.min_lp
                ),
                key=lambda w: -w[0],
            )[:k]
            # Unfetched uncached words score at most their mixed bound (penalties and splits
            # only lower a score; cached ones were looked up), so reaching it settles the top k.
            shift = math.log1p(-cache.lam) if cache else 0.0
            settled = len(scored) == k and scored[-1][0] >= bound + shift
            if exhausted or settled or not found.exact or n >= _MAX_FETCH:
                return Ranked(
                    words=[word for _, word, _ in scored],
                    logprobs=[lp for _, _, lp in scored],
                    expansions=found.expansions,
                    exact=found.exact and (exhausted or settled),
                    unexplored_mass=found.unexplored_mass,
                )
            n = min(2 * n, _MAX_FETCH)

    def _held_in_tree(self, request: _Request) -> int:
        """How many held-back words the tree search can pop (their first token matches)."""
        vocab = request.dt.vocab or []
        fold = str.casefold if request.case_insensitive else str
        key = fold(request.prefix)
        return sum(
            1
            for word in request.held
            if not isinstance(word, str) and fold(vocab[word[0]]).startswith(key)
        )

    def _best_extra(
        self, extra: Sequence[tuple[str, float]], request: _Request, k: int
    ) -> list[_Scored]:
        """The ``k`` best of the extra words (no other one can reach the top ``k``), ranked as
        :meth:`top_k` ranks them (held-back words last)."""
        penalty, held = request.penalty, request.held
        scored = ((lp - penalty if t[:1].isupper() else lp, t, lp) for t, lp in extra)
        return heapq.nlargest(k, scored, key=lambda w: w[0] - (HELD_PENALTY if w[1] in held else 0))

    def _scored_tokens(
        self,
        request: _Request,
        found: decode.TopK,
        k: int,
        hidden: npt.NDArray[np.floating],
        bound: float,
        last: bool,
    ) -> list[_ScoredTokens] | None:
        """The fetched words, and the cached ones that can reach the top ``k``, with their
        ranking scores and (mixed) log-probabilities; None if more than
        :data:`_MAX_CACHE_LOOKUPS` cached words would need looking up (unless ``last``)."""
        ids, logprobs = found.ids, found.logprobs
        cache = request.cache
        if cache is not None:
            mixed = self._with_cache(request, ids, logprobs, k, hidden, bound, last)
            if mixed is None:
                return None
            ids, logprobs = mixed
        capitalised = self.classes.capitalised
        penalty = request.penalty
        return [
            (lp - penalty if capitalised[i] else lp, (i,), lp)
            for i, lp in zip(ids.tolist(), logprobs.tolist(), strict=True)
        ]

    def _with_cache(
        self,
        request: _Request,
        ids: Tokens,
        tree_lps: F64Array,
        k: int,
        hidden: npt.NDArray[np.floating],
        bound: float,
        last: bool,
    ) -> tuple[Tokens, F64Array] | None:
        """Mix the fetched words' probabilities with the cache's and add the qualifying cached
        words not fetched whose mixture can reach the ``k``-th best: such a word has
        ``P_mix <= (1 - lam) e^bound + lam p_cache``, so it can only if ``p_cache`` is at least
        :func:`_cache_floor` of the ``k``-th best. They are looked up most probable first, a
        few at a time, until the next one falls below that floor. When the tree list is so
        short that its bound lets more than :data:`_MAX_CACHE_LOOKUPS` through, None asks for
        a longer list instead (unless ``last``)."""
        cache = request.cache
        assert cache is not None
        lam, dist = cache.lam, cache.distribution
        mixed = dist.mix(ids, tree_lps, lam)
        uncached_mass = (1.0 - lam) * math.exp(bound)
        floors = self._floors(request, ids, mixed)
        kth = floors[k - 1] if len(floors) >= k else -math.inf
        # The few that can reach first (one comparison over the cache), then the filters.
        reach = dist.probs >= _cache_floor(kth, uncached_mass, lam)
        others, others_p = dist.ids[reach], dist.probs[reach]
        qualifying = request.qualifies(others)
        others, others_p = others[qualifying], others_p[qualifying]
        fetched = set(ids.tolist())
        todo = [i for i, word in enumerate(others.tolist()) if word not in fetched]
        if not todo:
            return ids, mixed
        if not last and len(todo) > _MAX_CACHE_LOOKUPS:
            return None
        order = np.argsort(-others_p[todo], kind="stable")  # most probable first
        others, others_p = others[todo][order], others_p[todo][order]
        found_ids, found_lps = [ids], [mixed]
        for start in range(0, others.size, _CACHE_LOOKUPS):
            kth = floors[k - 1] if len(floors) >= k else -math.inf
            if others_p[start] < _cache_floor(kth, uncached_mass, lam):
                break
            chunk = others[start : start + _CACHE_LOOKUPS]
            chunk_lps = dist.mix(chunk, decode.word_log_probs(request.dt, hidden, chunk), lam)
            found_ids.append(chunk)
            found_lps.append(chunk_lps)
            floors = sorted([*floors, *self._floors(request, chunk, chunk_lps)])[::-1]
        return np.concatenate(found_ids), np.concatenate(found_lps)

    def _floors(self, request: _Request, ids: Tokens, lps: F64Array) -> list[float]:
        """Lower bounds of the final scores of these words, best first: for a host the most a
        split can take from its best part (its bare word and forms share its probability: one
        has 1 / (forms + 1) of it), then a capital's penalty. Left out: held words, and words
        whose best part may fall below ``min_prob`` (dropped, they fill no slot)."""
        part_lps = lps - self._split_cost[ids]
        kept = part_lps >= request.min_lp
        if request.held:
            kept &= np.fromiter(((i,) not in request.held for i in ids.tolist()), bool, len(ids))
        lowest = part_lps - request.penalty * self._capital_ones[ids]
        floors: list[float] = np.sort(lowest[kept])[::-1].tolist()
        return floors

    def _with_forms(
        self,
        dt: decode.DecodeTree,
        words: list[_ScoredTokens],
        k: int,
        request: _Request,
        after: After,
        split: dict[int, F64Array],
    ) -> list[_ScoredTokens]:
        """``words`` with each host that can reach the top ``k`` replaced by its bare word and
        its contractions. A host scoring below ``k`` shown non-hosts cannot: its forms score
        no higher than it does (only words that will be shown count: not held, not below
        ``min_prob``)."""
        is_host, held, min_lp = self.forms.is_host, request.held, request.min_lp
        plain = sorted(
            (
                score
                for score, word, lp in words
                if not is_host[word[0]] and word not in held and lp >= min_lp
            ),
            reverse=True,
        )
        floor = plain[k - 1] if len(plain) >= k else -math.inf
        todo = [w[0] for score, w, _ in words if is_host[w[0]] and score >= floor]
        todo = [host for host in todo if host not in split]
        if todo:
            split.update(zip(todo, self.forms.clitic_log_probs(dt, after, todo), strict=True))
        out: list[_ScoredTokens] = []
        clitics = self.forms.clitic_ids.tolist()
        for score, word, lp in words:
            clitic_lps = split.get(word[0])
            if clitic_lps is None:
                out.append((score, word, lp))
                continue
            offered = clitic_lps >= _MIN_CLITIC_LOGPROB
            # log(1 - sum P(offered clitic | host)), floored so a bare word never gets -inf.
            rest = math.log(max(1.0 - float(np.exp(clitic_lps[offered]).sum()), 1e-12))
            out.append((score + rest, word, lp + rest))
            for clitic, clitic_lp in zip(clitics, clitic_lps.tolist(), strict=True):
                if clitic_lp >= _MIN_CLITIC_LOGPROB:
                    out.append((score + clitic_lp, (word[0], clitic), lp + clitic_lp))
        return out
