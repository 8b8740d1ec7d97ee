"""Text -> tokens -> encoder -> tree decoding: the work behind ``/v1/suggest`` and ``/v1/score``.

Every text is read as the corpus is: a stream of lines that each end in ``<eos>``, so the encoder
always starts from ``<eos>`` and an empty text asks for sentence starters.  Keyboard convention
(:func:`service.text.split_typed`): text that does not end in whitespace ends in a partly typed
word, which suggestions complete and score candidates replace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service import decode
from service.adaptation import CacheConfig, ContinuousCache, SessionAdaptation
from service.batcher import Batcher
from service.bundle import Bundle
from service.policy import Mixture, PolicyConfig, SuggestionPolicy
from service.session_words import SessionWords
from service.sessions import ContextCache, EncodedText, SessionCache, Shown
from service.text import UNK, detokenize, display_token, split_typed, tokenize

Tokens = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PredictorOptions:
    beam_width: int = 4
    max_expansions: int = 200_000
    default_budget_ms: float = 20.0
    block_list: tuple[str, ...] = ()
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cache: CacheConfig = field(default_factory=lambda: CacheConfig(size=0))
    """The session cache (:mod:`service.adaptation`); off unless configured."""


@dataclass(frozen=True)
class Suggestion:
    text: str
    tokens: tuple[str, ...]
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent per stage of one request."""

    tokenize: float
    encode: float
    decode: float
    total: float


@dataclass(frozen=True)
class Suggested:
    suggestions: list[Suggestion]
    partial_word: str
    exact: bool
    expansions: int
    unexplored_mass: float
    state_reused: bool
    """The context was encoded from a session's or a cached context's state, not from scratch."""
    timing: Timing


@dataclass(frozen=True)
class Score:
    candidate: str
    logprob: float
    in_vocab: bool


class _Found(NamedTuple):
    """Suggestions and how the search went (the fields :class:`Suggested` reports)."""

    suggestions: list[Suggestion]
    expansions: int
    exact: bool
    unexplored_mass: float


@dataclass(frozen=True)
class _Context:
    """A text read up to its partly typed word: the ids it encodes (``<eos>`` first), their
    tokens and the word's prefix."""

    ids: Tokens
    tokens: list[str]
    prefix: str


class Predictor:
    """Everything a request needs, built once from a bundle; methods are thread-safe."""

    def __init__(
        self,
        bundle: Bundle,
        decode_tree: decode.DecodeTree,
        batcher: Batcher,
        sessions: SessionCache,
        zero_state: Floats,
        options: PredictorOptions,
        contexts: ContextCache | None = None,
    ) -> None:
        self.bundle = bundle
        self.tree = decode_tree
        self.batcher = batcher
        self.sessions = sessions
        self.contexts = contexts if contexts is not None else ContextCache(0)
        self.zero_state = zero_state  # (L, 1, S)
        self._start_encoded: EncodedText | None = None
        self.options = options
        self.vocab = bundle.vocab
        self.index = {token: i for i, token in enumerate(bundle.vocab)}
        self.eos_id = bundle.eos_id
        self.unk_id = bundle.unk_id
        blocked = blocked_ids(bundle.vocab, options.block_list)
        self.policy = SuggestionPolicy(
            bundle.vocab, [self.unk_id, *blocked], self.eos_id, options.policy
        )

    # -- /v1/suggest -------------------------------------------------------------------------

    def suggest(
        self,
        text: str,
        *,
        k: int = 3,
        max_words: int = 1,
        min_prob: float = 0.0,
        session_id: str | None = None,
        budget_ms: float | None = None,
        include_eos: bool = False,
        include_punctuation: bool = False,
        reoffer: bool | None = None,
    ) -> Suggested:
        """Top-k completions of the partly typed word, or next words / phrases, under the
        suggestion policy (:mod:`service.policy`); ``reoffer=None`` takes its default."""
        start = time.perf_counter()
        budget = self.options.default_budget_ms if budget_ms is None else budget_ms
        deadline = start + budget / 1000.0
        context = self._read(text)
        tokenized = time.perf_counter()
        encoded, reused = self._encode_context(context.ids, session_id)
        encoded_at = time.perf_counter()
        banned = self.policy.banned(
            context.prefix, include_eos=include_eos, include_punctuation=include_punctuation
        )
        if max_words == 1:
            reoffer = self.policy.config.reoffer if reoffer is None else reoffer
            found = self._words(
                context, encoded, session_id, k, min_prob, banned, reoffer, deadline
            )
        else:
            result = decode.beam_search(
                self.tree,
                self._step,
                encoded.hidden,
                encoded.state,
                max_words=max_words,
                beam_width=max(self.options.beam_width, k),
                k=k,
                min_prob=min_prob,
                prefix=context.prefix or None,
                banned=banned,
                max_expansions=self.options.max_expansions,
                deadline=deadline,
            )
            phrases = [self._phrase(p.ids, p.logprob) for p in result.phrases]
            found = _Found(phrases, result.expansions, result.exact, result.unexplored_mass)
        done = time.perf_counter()
        return Suggested(
            suggestions=found.suggestions,
            partial_word=context.prefix,
            exact=found.exact,
            expansions=found.expansions,
            unexplored_mass=found.unexplored_mass,
            state_reused=reused,
            timing=Timing(
                tokenize=_ms(start, tokenized),
                encode=_ms(tokenized, encoded_at),
                decode=_ms(encoded_at, done),
                total=_ms(start, done),
            ),
        )

    def _words(
        self,
        context: _Context,
        encoded: EncodedText,
        session_id: str | None,
        k: int,
        min_prob: float,
        banned: decode.BoolArray,
        reoffer: bool,
        deadline: float,
    ) -> _Found:
        """One-word suggestions ranked by the policy; the session remembers what it showed."""
        memory = None if session_id is None else self.sessions.memory(session_id)
        shown = None if memory is None or reoffer else memory.shown
        held = self.policy.held_back(shown, context.ids, context.prefix)
        config = self.policy.config
        mixture = None if memory is None else _mixture(memory.adaptation, encoded.hidden)
        extra = []
        if memory is not None and config.session_words:
            extra = self._session_words(memory.words, context, encoded, mixture)

        def after(ids: Tokens) -> Floats:  # the encoder after the context and each of ids
            return self._step(ids, np.repeat(encoded.state, len(ids), axis=1))[0]

        ranked = self.policy.top_k(
            self.tree, encoded.hidden, k, prefix=context.prefix, banned=banned, held=held,
            sentence_start=self.policy.starts_sentence(context.ids),
            after=after if config.contractions else None, extra=extra, cache=mixture,
            clitic_memo=encoded.clitics,
            min_prob=min_prob, max_expansions=self.options.max_expansions, deadline=deadline,
        )  # fmt: skip
        if memory is not None:
            memory.shown = Shown(context.ids, context.prefix, frozenset(ranked.words), held)
        suggestions = [
            Suggestion(text=word, tokens=(word,), logprob=lp)
            if isinstance(word, str)
            else self._phrase(word, lp)
            for word, lp in zip(ranked.words, ranked.logprobs, strict=True)
        ]
        return _Found(suggestions, ranked.expansions, ranked.exact, ranked.unexplored_mass)

    def _session_words(
        self,
        words: SessionWords,
        context: _Context,
        encoded: EncodedText,
        mixture: Mixture | None,
    ) -> list[tuple[str, float]]:
        """The session's unknown words that complete the prefix, with their share of
        ``P(<unk> | context)`` (:mod:`service.session_words`); learns the context's own."""
        # Learn from a text only when it was read anew (keystrokes inside a word re-send it).
        unknown = (
            np.flatnonzero(context.ids[1:] == self.unk_id) if encoded.tokens is context.ids else ()
        )
        if len(unknown):
            words.update(t for t in (context.tokens[i] for i in unknown) if t != UNK)
        matching = words.matching(context.prefix) if len(words) else []
        if not matching:
            return []
        # A Python float: a numpy one would reach the response (which orjson cannot encode).
        unk_lp = float(self._log_probs(encoded.hidden, np.array([self.unk_id]), mixture)[0])
        return [(word, unk_lp + share) for word, share in matching if word not in self.index]

    def _phrase(self, ids: Sequence[int], logprob: float) -> Suggestion:
        tokens = tuple(self.vocab[i] for i in ids)
        text = display_token(tokens[0]) if len(tokens) == 1 else detokenize(tokens)
        return Suggestion(text=text, tokens=tokens, logprob=float(logprob))

    # -- /v1/score ---------------------------------------------------------------------------

    def score(
        self, text: str, candidates: Sequence[str], session_id: str | None = None
    ) -> list[Score]:
        """``log P(candidate | text)`` for each candidate (the text's partly typed word dropped);
        with a session, under its cache's mixture (read only: scoring teaches it nothing)."""
        context = self._read(text, keep_prefix=False)
        encoded, _ = self._encode_context(context.ids, None)
        parsed = [self._candidate_ids(candidate) for candidate in candidates]
        memory = None if session_id is None else self.sessions.memory(session_id)
        adaptation = None if memory is None else memory.adaptation
        sequences = [ids for ids, _ in parsed]
        logprobs = self._sequence_log_probs(encoded, sequences, adaptation)
        return [
            Score(candidate=c, logprob=lp, in_vocab=in_vocab)
            for c, (_, in_vocab), lp in zip(candidates, parsed, logprobs, strict=True)
        ]

    def _candidate_ids(self, candidate: str) -> tuple[list[int], bool]:
        exact = self.index.get(candidate)
        if exact is not None:
            return [exact], True
        ids = [self.index.get(token, -1) for token in tokenize(candidate)]
        in_vocab = bool(ids) and min(ids) >= 0
        return [self.unk_id if i < 0 else i for i in ids], in_vocab

    def _sequence_log_probs(
        self,
        context: EncodedText,
        sequences: list[list[int]],
        adaptation: SessionAdaptation | None = None,
    ) -> list[float]:
        """Sum of token log-probabilities of each id sequence after the context (each token
        under the session cache's mixture at its position, with ``adaptation``)."""

        def log_probs(hidden: Floats, ids: Tokens) -> npt.NDArray[np.float64]:
            return self._log_probs(hidden, ids, _mixture(adaptation, hidden))

        totals = [0.0] * len(sequences)
        firsts = [i for i, ids in enumerate(sequences) if ids]
        if firsts:
            first_ids = np.array([sequences[i][0] for i in firsts], dtype=np.int64)
            first_lps = log_probs(context.hidden, first_ids)
            for i, lp in zip(firsts, first_lps, strict=True):
                totals[i] = float(lp)
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(sequences):
            if len(ids) > 1:
                by_length.setdefault(len(ids), []).append(i)
        for length, members in by_length.items():
            # One batched encoder call per length: hidden after each prefix of each candidate.
            tokens = np.array([sequences[i][: length - 1] for i in members], dtype=np.int64)
            state = np.repeat(context.state, len(members), axis=1)
            hidden, _ = self.batcher.encode(tokens, state)  # (B, length - 1, d)
            for row, i in enumerate(members):
                for pos in range(1, length):
                    word = np.array([sequences[i][pos]], dtype=np.int64)
                    totals[i] += float(log_probs(hidden[row, pos - 1], word)[0])
        return totals

    def _log_probs(
        self, hidden: Floats, ids: Tokens, mixture: Mixture | None
    ) -> npt.NDArray[np.float64]:
        """``log P(word | hidden)`` of ``ids`` from the tree, mixed with the cache if given."""
        tree_lps = decode.word_log_probs(self.tree, hidden, ids)
        if mixture is None:
            return tree_lps
        return mixture.distribution.mix(ids, tree_lps, mixture.lam)

    def warm_up(self) -> None:
        """Take every request path once (encoder shapes, compiled decode variants, sessions)."""
        for text, max_words in (("", 1), ("The ", 1), ("The wea", 1), ("The ", 2), ("The c", 2)):
            self.suggest(text, k=3, max_words=max_words)
        self.suggest("The ", session_id="warm-up")
        self.suggest("The c", session_id="warm-up")
        self.sessions.forget("warm-up")
        self.score("The ", [self.vocab[0], "New York", "<eos>", ""])

    # -- shared steps ------------------------------------------------------------------------

    def _read(self, text: str, *, keep_prefix: bool = True) -> _Context:
        tokens, partial = split_typed(text)  # partial: one token, e.g. "kn" of "well-kn"
        prefix = partial if keep_prefix else ""
        ids = np.empty(len(tokens) + 1, dtype=np.int64)
        ids[0] = self.eos_id
        index, unk = self.index, self.unk_id
        ids[1:] = [index.get(token, unk) for token in tokens]
        return _Context(ids=ids, tokens=tokens, prefix=prefix)

    def _encode_context(self, ids: Tokens, session_id: str | None) -> tuple[EncodedText, bool]:
        """Encode ``ids``, starting from the session's state when ``ids`` extend what it read,
        or, without a session, from the longest cached context that ``ids`` extend; failing
        both, from the state after ``<eos>`` (:meth:`_start`), which every text begins with.
        The flag says whether a session's or a cached context's state was reused."""
        if session_id is not None:
            resume = self.sessions.resume(session_id, ids)
        else:
            resume = self.contexts.resume(ids)
        known, todo = resume.known, resume.todo
        reused = known is not None
        if known is None:
            known, todo = self._start(), ids[1:]
        hiddens = None  # the encoder's output at every position it just read
        if len(todo) == 0:
            encoded = known
        else:
            hidden, state_out = self.batcher.encode(todo[None, :], known.state)
            hiddens = hidden[0]
            # Copies: a slice of a batch's output would keep the whole batch alive in the cache
            # (np.ascontiguousarray does not copy it: a (L, 1, S) slice counts as contiguous).
            encoded = EncodedText(tokens=ids, state=state_out.copy(), hidden=hiddens[-1].copy())
        if session_id is not None:
            self.sessions.put(session_id, encoded)
            if hiddens is not None and self.options.cache.enabled:
                # known.hidden is the position before hiddens[0]
                first = len(ids) - len(todo) - 1
                self._adapt(session_id, ids, np.vstack([known.hidden, hiddens]), first)
        elif encoded is not resume.known:  # new, or the start: a later text may extend it
            self.contexts.put(encoded)
        return encoded, reused

    def _start(self) -> EncodedText:
        """The encoder after ``<eos>`` alone, where every text starts; computed once. Shared by
        every request (it holds no user text), so a new session's or line's first keystroke
        encodes nothing, and its hosts' clitics (:attr:`EncodedText.clitics`) are looked up
        once per process rather than once per session."""
        start = self._start_encoded
        if start is None:
            ids = np.array([self.eos_id], dtype=np.int64)
            hidden, state = self.batcher.encode(ids[None, :], self.zero_state)
            start = EncodedText(tokens=ids, state=state.copy(), hidden=hidden[0, -1].copy())
            self._start_encoded = start  # racing first requests compute the same state
        return start

    def _adapt(self, session_id: str, ids: Tokens, hiddens: Floats, first: int) -> None:
        """Feed the session's continuous cache the positions of its text just encoded."""
        memory = self.sessions.memory(session_id)
        if memory is None:
            return
        if memory.adaptation is None:
            cache = ContinuousCache.from_config(self.options.cache, self.tree.hidden_size)
            memory.adaptation = SessionAdaptation(cache, self.options.cache.lam)
        memory.adaptation.read(ids, hiddens, first)

    def _step(self, ids: Tokens, state: Floats) -> tuple[Floats, Floats]:
        hidden, state_out = self.batcher.encode(ids[:, None], state)
        return hidden[:, 0], state_out


def _mixture(adaptation: SessionAdaptation | None, hidden: Floats) -> Mixture | None:
    """A session cache's part of the probabilities at ``hidden`` (None while it is empty)."""
    if adaptation is None or adaptation.mixture_weight() == 0.0:
        return None
    return Mixture(adaptation.mixture_weight(), adaptation.distribution(hidden))


def blocked_ids(vocab: Sequence[str], block_list: Sequence[str]) -> list[int]:
    """Ids of every vocabulary token equal to a block-list word, ignoring case."""
    blocked = {word.casefold() for word in block_list}
    return [i for i, token in enumerate(vocab) if token.casefold() in blocked]


def _ms(start: float, stop: float) -> float:
    return (stop - start) * 1000.0
