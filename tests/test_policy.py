"""service.policy: the keyboard ranking against brute force, and what a session holds back."""

from __future__ import annotations

import math
from collections.abc import Iterator
from unittest.mock import patch

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from service_fakes import VOCAB
from test_decode import SETTINGS, TOL, Case, cases

from service import decode
from service import policy as policy_module
from service.adaptation import CacheDistribution
from service.decode import DecodeTree, brute_force_log_probs
from service.forms import MIN_CLITIC_PROB
from service.policy import (
    HELD_PENALTY,
    Mixture,
    PolicyConfig,
    Ranked,
    SuggestionPolicy,
    WordClasses,
)
from service.predictor import Predictor
from service.sessions import Shown


def policy_scores(
    brute: npt.NDArray[np.float64],
    vocab: list[str],
    prefix: str,
    *,
    banned: npt.NDArray[np.bool_],
    held: frozenset[tuple[int, ...]],
    penalty: float,
    sentence_start: bool,
) -> npt.NDArray[np.float64]:
    """The documented ranking score of every word, written out directly (-inf: not shown)."""
    typed_capital = prefix[:1].isupper()
    scores = np.full(len(vocab), -np.inf)
    for i, word in enumerate(vocab):
        if typed_capital:
            matches = word.startswith(prefix)
        else:
            matches = word.casefold().startswith(prefix.casefold())
        if not matches or banned[i]:
            continue
        lowered = not (sentence_start or typed_capital) and word[:1].isupper()
        scores[i] = brute[i] - (math.log(penalty) if lowered else 0.0)
        scores[i] -= HELD_PENALTY if (i,) in held else 0.0
    return scores


@SETTINGS
@given(
    case=cases(),
    k=st.integers(1, 8),
    prefix=st.sampled_from(["", "a", "A", "b", "B", "aA", "é", "Ab"]),
    penalty=st.sampled_from([1.0, 1.5, 4.0, 1e4]),
    sentence_start=st.booleans(),
    held_share=st.sampled_from([0.0, 0.2, 0.6]),
)
def test_top_k_equals_the_brute_force_ranking(
    case: Case, k: int, prefix: str, penalty: float, sentence_start: bool, held_share: float
) -> None:
    vocab = case.dt.vocab or []
    policy = SuggestionPolicy(vocab, [], 0, PolicyConfig(capital_penalty=penalty))
    banned = case.rng.random(len(vocab)) < 0.1
    held = frozenset((i,) for i in np.flatnonzero(case.rng.random(len(vocab)) < held_share))
    got = policy.top_k(
        case.dt, case.hidden, k, prefix=prefix, banned=banned, held=held,
        sentence_start=sentence_start,
    )  # fmt: skip
    scores = policy_scores(
        case.brute, vocab, prefix, banned=banned, held=held, penalty=penalty,
        sentence_start=sentence_start,
    )  # fmt: skip
    expected = np.sort(scores[np.isfinite(scores)])[::-1][:k]
    assert got.exact
    assert len(got.words) == len(expected) == len(set(got.words))
    ids = [word[0] for word in got.words]
    np.testing.assert_allclose(scores[ids], expected, atol=TOL, rtol=0)
    # The reported probability is the model's, not the ranking score.
    np.testing.assert_allclose(got.logprobs, case.brute[ids], atol=TOL, rtol=0)


FORMS_VOCAB = ["it", "It", "don", "I", "'s", "'t", "'m"]
NOT_SHOWN = {"<eos>", "<unk>", ",", ".", "@-@", "@,@", "'s"}


def with_forms(
    case: Case,
) -> tuple[
    list[str], DecodeTree, npt.NDArray[np.float64], SuggestionPolicy, npt.NDArray[np.float32]
]:
    """The case's tree over a vocabulary whose first words are hosts and clitics, its policy
    and a hidden vector after each word (what ``after`` returns for a host)."""
    vocab = list(case.dt.vocab or [])
    vocab[: len(FORMS_VOCAB)] = FORMS_VOCAB[: len(vocab)]
    dt = DecodeTree(case.dt.tree, case.dt.weight, case.dt.bias, vocab, case.dt.factors)
    policy = SuggestionPolicy(vocab, [], 0, PolicyConfig(capital_penalty=4.0))
    table = case.rng.standard_normal((len(vocab), dt.hidden_size)).astype(np.float32)
    return vocab, dt, brute_force_log_probs(dt, case.hidden), policy, table


@SETTINGS
@given(
    case=cases(max_leaves=40),
    k=st.integers(1, 8),
    prefix=st.sampled_from(["", "i", "I", "d", "a"]),
    sentence_start=st.booleans(),
    min_prob=st.sampled_from([0.0, 0.01]),
)
def test_contractions_rank_exactly(
    case: Case, k: int, prefix: str, sentence_start: bool, min_prob: float
) -> None:
    """Hosts split into bare word and forms, each scored exactly (brute force over all)."""
    vocab, dt, brute, policy, table = with_forms(case)
    calls: list[list[int]] = []

    def after(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        calls.append(ids.tolist())
        return table[ids]

    banned = policy.banned(prefix, include_eos=True, include_punctuation=True)
    got = policy.top_k(
        dt, case.hidden, k, prefix=prefix, banned=banned, held=frozenset(),
        sentence_start=sentence_start, after=after, min_prob=min_prob,
    )  # fmt: skip
    token_scores = policy_scores(
        brute, vocab, prefix, banned=banned, held=frozenset(), penalty=4.0,
        sentence_start=sentence_start,
    )  # fmt: skip
    assert_words_rank(got, brute_force_words(policy, dt, token_scores, brute, table, min_prob), k)
    # Hosts go to the encoder in non-empty batches, each host once (the memo keeps its split).
    split = [host for batch in calls for host in batch]
    assert all(calls)
    assert len(split) == len(set(split))
    assert set(split) <= set(np.flatnonzero(policy.forms.is_host).tolist())


def test_word_classes() -> None:
    classes = WordClasses.of(VOCAB)
    flagged = {name: {VOCAB[i] for i in np.flatnonzero(getattr(classes, name))} for name in
               ("punctuation", "fragment", "capitalised")}  # fmt: skip
    assert flagged["punctuation"] == {",", ".", "@-@", "@,@"}
    assert flagged["fragment"] == {"'s"}
    assert flagged["capitalised"] == {"The", "New", "York", "Valkyria", "Wealth"}


def test_capital_penalty_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="capital_penalty"):
        PolicyConfig(capital_penalty=0.5)
    with pytest.raises(ValueError, match="capital_penalty"):
        PolicyConfig(capital_penalty=math.inf)


def test_a_sentence_starts_after_its_end_and_any_quotes() -> None:
    vocab = ["<eos>", ".", "?", '"', ",", "the", "The", "said"]
    policy = SuggestionPolicy(vocab, [], 0, PolicyConfig())

    def starts(*tokens: str) -> bool:
        return policy.starts_sentence(np.array([vocab.index(t) for t in tokens], dtype=np.int64))

    starting = [(), ("<eos>",), ("<eos>", '"'), ("<eos>", "The", "said", ".")]
    starting.append(("<eos>", "the", "?", '"', '"'))
    assert all(starts(*tokens) for tokens in starting)
    inside = [("<eos>", "The"), ("<eos>", "the", ",", '"'), ("<eos>", "The", "said", '"')]
    assert not any(starts(*tokens) for tokens in inside)


def test_banned_masks_follow_the_request() -> None:
    policy = SuggestionPolicy(VOCAB, [VOCAB.index("<unk>")], VOCAB.index("<eos>"), PolicyConfig())

    def shown(prefix: str, **flags: bool) -> set[str]:
        options = {"include_eos": False, "include_punctuation": False, **flags}
        mask = policy.banned(prefix, **options)
        return {w for w, banned in zip(VOCAB, mask, strict=True) if not banned}

    words = shown("")
    assert {",", ".", "'s", "@-@", "<eos>", "<unk>"}.isdisjoint(words)
    assert {"the", "The", "1"} <= words
    assert {",", "."} <= shown("", include_punctuation=True)
    assert "<eos>" in shown("", include_eos=True)
    assert "'s" in shown("'")  # typing a clitic: "it'" completes to "it's"
    assert "<unk>" not in shown("'", include_eos=True, include_punctuation=True)


def test_held_back_only_while_the_same_word_goes_on() -> None:
    policy = SuggestionPolicy(VOCAB, [], 0, PolicyConfig())
    context = np.array([0, 1], dtype=np.int64)
    before = Shown(context, "we", words=frozenset({(12,), (13,)}), held=frozenset({(14,)}))
    assert policy.held_back(before, context, "wea") == {(12,), (13,), (14,)}
    assert policy.held_back(before, context, "we") == {(14,)}  # the same request again
    assert policy.held_back(before, context, "w") == frozenset()  # a deletion
    assert policy.held_back(before, np.array([0, 2], dtype=np.int64), "wea") == frozenset()
    assert policy.held_back(None, context, "wea") == frozenset()
    start = Shown(context, "", words=frozenset({(12,)}), held=frozenset())
    assert policy.held_back(start, context, "w") == {(12,)}  # shown before the first letter


@pytest.fixture
def predictor() -> Iterator[Predictor]:
    from service_fakes import make_predictor

    predictor, _, batcher = make_predictor()
    yield predictor
    batcher.stop()


def test_a_word_passed_over_is_not_shown_again_for_that_word(predictor: Predictor) -> None:
    seen: set[str] = set()
    for text in ("the ", "the w", "the we", "the wea"):
        words = [s.text for s in predictor.suggest(text, k=2, session_id="s").suggestions]
        prefix = text.split(" ")[-1]
        fresh = [w for w in words if w not in seen]
        unseen = {w for w in VOCAB if w.lower().startswith(prefix) and w not in seen} - NOT_SHOWN
        # Words not shown yet come first; passed-over ones only fill what nothing else would.
        assert words[: len(fresh)] == fresh, (text, words, seen)
        assert len(fresh) == min(2, len(unseen)), (text, words, seen)
        seen.update(words)
    assert len(seen) > 4  # the bar moved on at every letter
    # Opting out shows the model's plain ranking again; without a session nothing is held back.
    plain = [s.text for s in predictor.suggest("the wea", k=2).suggestions]
    again = predictor.suggest("the wea", k=2, session_id="s", reoffer=True).suggestions
    assert [s.text for s in again] == plain
    # A finished word starts afresh.
    fresh_word = predictor.suggest("the weather ", k=2, session_id="s").suggestions
    plain_next = predictor.suggest("the weather ", k=2).suggestions
    assert [s.text for s in fresh_word] == [s.text for s in plain_next]


def test_suggestions_are_typed_words(predictor: Predictor) -> None:
    for text in ("", "the ", "New York ", "it", "1"):
        for suggestion in predictor.suggest(text, k=20).suggestions:
            assert any(c.isalnum() for c in suggestion.text), (text, suggestion)
            assert not suggestion.text.startswith("'"), (text, suggestion)
    # "it" is a host: its contraction is one suggestion, ranked with the bare word, where
    # P('s | it) reaches MIN_CLITIC_PROB.
    for context in ("", "the ", "New ", "he ", "and "):
        ids = [predictor.index[t] for t in ["<eos>", *context.split(), "it"]]
        hidden, _ = predictor.batcher.encode(np.array([ids]), predictor.zero_state)
        clitic = decode.word_log_probs(predictor.tree, hidden[0, -1], [predictor.index["'s"]])
        everything = predictor.suggest(context, k=50).suggestions
        forms = [s.tokens for s in everything if s.text == "it's"]
        assert forms == ([("it", "'s")] if math.exp(clitic[0]) >= MIN_CLITIC_PROB else [])
        assert "it" in {s.text for s in everything}
    clitic = predictor.suggest("it'", k=3)
    assert ([s.text for s in clitic.suggestions], clitic.partial_word) == (["'s"], "'")
    with_punctuation = predictor.suggest("the ", k=40, include_punctuation=True).suggestions
    assert {",", "."} <= {s.text for s in with_punctuation}


@settings(SETTINGS, max_examples=500)  # the cache's bound is subtle: more cases than most
@given(
    case=cases(max_leaves=40),
    k=st.integers(1, 8),
    prefix=st.sampled_from(["", "i", "I", "a", "A", "b"]),
    sentence_start=st.booleans(),
    min_prob=st.sampled_from([0.0, 0.005, 0.05]),
    lam=st.sampled_from([0.05, 0.25, 0.9]),
    cached_share=st.sampled_from([0.05, 0.3, 1.0]),
    held_share=st.sampled_from([0.0, 0.3]),
    lookups=st.sampled_from([(8, 32), (1, 2)]),
)
def test_the_cache_mixture_ranks_exactly(
    case: Case,
    k: int,
    prefix: str,
    sentence_start: bool,
    min_prob: float,
    lam: float,
    cached_share: float,
    held_share: float,
    lookups: tuple[int, int],
) -> None:
    """P_mix = (1 - lam) P_tree + lam p_cache, with the penalty, held words and contractions;
    also with lookups one at a time and a longer tree list after two (every path of
    SuggestionPolicy._with_cache, at these small vocabularies)."""
    vocab, dt, brute, policy, table = with_forms(case)
    cached = np.flatnonzero(case.rng.random(len(vocab)) < cached_share)
    if cached.size == 0:
        cached = np.array([int(case.rng.integers(len(vocab)))])
    weights = case.rng.random(cached.size) ** 4  # a few cached words carry most of the mass
    dist = CacheDistribution(cached.astype(np.int64), weights / weights.sum())
    held = frozenset((int(i),) for i in np.flatnonzero(case.rng.random(len(vocab)) < held_share))
    banned = policy.banned(prefix, include_eos=True, include_punctuation=True)
    chunk, most = lookups
    with (
        patch.object(policy_module, "_CACHE_LOOKUPS", chunk),
        patch.object(policy_module, "_MAX_CACHE_LOOKUPS", most),
    ):
        got = policy.top_k(
            dt, case.hidden, k, prefix=prefix, banned=banned, held=held,
            sentence_start=sentence_start, after=lambda ids: table[ids],
            cache=Mixture(lam, dist), min_prob=min_prob,
        )  # fmt: skip
    mixed = np.log((1 - lam) * np.exp(brute) + lam * dist.probs_of(np.arange(len(vocab))))
    token_scores = policy_scores(
        mixed, vocab, prefix, banned=banned, held=frozenset(), penalty=4.0,
        sentence_start=sentence_start,
    )  # fmt: skip
    want = brute_force_words(policy, dt, token_scores, mixed, table, min_prob, held)
    assert_words_rank(got, want, k)


Expected = dict[tuple[int, ...], tuple[float, float]]
"""word -> (ranking score, log-probability)."""


def brute_force_words(
    policy: SuggestionPolicy,
    dt: DecodeTree,
    token_scores: npt.NDArray[np.float64],
    token_lps: npt.NDArray[np.float64],
    table: npt.NDArray[np.float32],
    min_prob: float,
    held: frozenset[tuple[int, ...] | str] = frozenset(),
) -> Expected:
    """Every word the policy may show, scored directly: each host split into its bare word and
    the contractions whose clitic reaches MIN_CLITIC_PROB (``table[host]``: the hidden vector
    after it), held words lowered, words below ``min_prob`` dropped."""
    clitics = policy.forms.clitic_ids
    want: Expected = {}
    for i in np.flatnonzero(np.isfinite(token_scores)):
        score, lp = float(token_scores[i]), float(token_lps[i])
        entries = [((int(i),), score, lp)]
        if policy.forms.is_host[i]:
            clitic_lps = brute_force_log_probs(dt, table[i])[clitics]
            offered = np.exp(clitic_lps) >= MIN_CLITIC_PROB
            rest = math.log(max(1.0 - float(np.exp(clitic_lps[offered]).sum()), 1e-12))
            entries = [((int(i),), score + rest, lp + rest)]
            entries += [
                ((int(i), c), score + c_lp, lp + c_lp)
                for c, c_lp, ok in zip(clitics.tolist(), clitic_lps.tolist(), offered, strict=True)
                if ok
            ]
        for word, word_score, word_lp in entries:
            if word_lp >= math.log(max(min_prob, 1e-300)):
                want[word] = (word_score - (HELD_PENALTY if word in held else 0.0), word_lp)
    return want


def assert_words_rank(got: Ranked, want: Expected, k: int) -> None:
    """``got`` is a top-k of ``want`` by score (ties in any order), with its log-probabilities."""
    expected = sorted((v[0] for v in want.values()), reverse=True)[:k]
    assert got.exact
    assert len(got.words) == len(expected) == len(set(got.words))
    # rtol too: a bare word's 1 - sum P(clitic) cancels when a clitic is nearly certain.
    np.testing.assert_allclose([want[w][0] for w in got.words], expected, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(got.logprobs, [want[w][1] for w in got.words], atol=1e-6, rtol=1e-6)
