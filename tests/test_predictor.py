"""service.predictor against brute force over a toy vocabulary with a numpy encoder."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
from service_fakes import VOCAB, FakeEncoder
from test_policy import policy_scores

from service import decode
from service.adaptation import CacheConfig, mixture_log_probs
from service.policy import PolicyConfig
from service.predictor import Predictor, PredictorOptions, blocked_ids
from service.text import split_typed

BANNED = {"<eos>", "<unk>"}
NOT_WORDS = {",", ".", "@-@", "@,@", "'s"}
"""Punctuation and clitic fragments: never a one-word suggestion by default (service.policy)."""


@pytest.fixture
def parts() -> Iterator[tuple[Predictor, FakeEncoder]]:
    from service_fakes import make_predictor

    predictor, encoder, batcher = make_predictor()
    yield predictor, encoder
    batcher.stop()


def _context_log_probs(predictor: Predictor, encoder: FakeEncoder, tokens: list[str]) -> np.ndarray:
    ids = [predictor.eos_id, *(predictor.index.get(t, predictor.unk_id) for t in tokens)]
    hidden, _ = encoder.run(np.array([ids], dtype=np.int64), encoder.zero_state(1))
    return decode.brute_force_log_probs(predictor.tree, hidden[0, -1])


def _policy_ranking(
    predictor: Predictor, log_probs: np.ndarray, text: str, k: int
) -> list[tuple[str, float]]:
    """The default policy's ranking: typed words only, capitals lowered after a lowercase
    prefix unless a sentence starts (service.policy)."""
    tokens, prefix = split_typed(text)
    classes = predictor.policy.classes
    banned = np.array([w in BANNED for w in VOCAB]) | classes.punctuation | classes.fragment
    scores = policy_scores(
        log_probs, VOCAB, prefix, banned=banned, held=frozenset(),
        penalty=predictor.policy.config.capital_penalty,
        sentence_start=not tokens or tokens[-1] in {".", "!", "?"},
    )  # fmt: skip
    best = sorted(np.flatnonzero(np.isfinite(scores)), key=lambda i: -scores[i])[:k]
    return [(VOCAB[i], float(log_probs[i])) for i in best]


def _got(result: object) -> list[tuple[str, float]]:
    return [(s.tokens[0], s.logprob) for s in result.suggestions]  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["", "The ", "the weather of ", "he said 1,000 "])
def test_next_words_equal_the_brute_force_ranking(
    parts: tuple[Predictor, FakeEncoder], text: str
) -> None:
    predictor, encoder = parts
    result = predictor.suggest(text, k=5)
    log_probs = _context_log_probs(predictor, encoder, split_typed(text)[0])
    want = _policy_ranking(predictor, log_probs, text, 5)
    got = _got(result)
    assert [w for w, _ in got] == [w for w, _ in want]
    np.testing.assert_allclose([lp for _, lp in got], [lp for _, lp in want], atol=1e-5)
    assert result.exact
    assert result.partial_word == ""


def test_partial_word_is_completed_case_insensitively(
    parts: tuple[Predictor, FakeEncoder],
) -> None:
    predictor, encoder = parts
    result = predictor.suggest("the wea", k=10)
    log_probs = _context_log_probs(predictor, encoder, ["the"])
    allowed = [i for i, w in enumerate(VOCAB) if w.lower().startswith("wea")]
    assert {VOCAB[i] for i in allowed} == {"weather", "weak", "wealth", "weapon", "Wealth"}
    want = _policy_ranking(predictor, log_probs, "the wea", 10)
    assert {w for w, _ in want} == {VOCAB[i] for i in allowed}
    got = _got(result)
    assert [w for w, _ in got] == [w for w, _ in want]
    np.testing.assert_allclose([lp for _, lp in got], [lp for _, lp in want], atol=1e-5)
    assert result.partial_word == "wea"
    assert all(math.isclose(s.prob, math.exp(s.logprob)) for s in result.suggestions)


def test_keystroke_sessions_equal_full_encodes(parts: tuple[Predictor, FakeEncoder]) -> None:
    predictor, encoder = parts
    typed = "The weather of New York was bad , and it 's worse"
    for end in range(len(typed) + 1):
        text = typed[:end]
        encoder.calls.clear()
        # reoffer: the plain ranking (what a session holds back is tested in test_policy.py).
        with_session = predictor.suggest(text, k=4, session_id="typing", reoffer=True)
        session_calls = list(encoder.calls)
        without = predictor.suggest(text, k=4)
        assert [w for w, _ in _got(with_session)] == [w for w, _ in _got(without)]
        np.testing.assert_allclose(
            [lp for _, lp in _got(with_session)], [lp for _, lp in _got(without)], atol=1e-5
        )
        assert with_session.state_reused == (end > 0)
        # Reuse means at most the newly finished tokens are encoded, never the whole text.
        assert all(steps <= 2 for _, steps in session_calls), (text, session_calls)


def test_typing_without_a_session_reuses_cached_contexts() -> None:
    from service_fakes import make_predictor

    cached, encoder, batcher = make_predictor(context_cache_size=64)
    reference, _, reference_batcher = make_predictor()
    typed = "The weather of New York was bad , and it 's worse"
    try:
        for end in range(len(typed) + 1):
            encoder.calls.clear()
            got = cached.suggest(typed[:end], k=4)
            want = reference.suggest(typed[:end], k=4)
            assert [w for w, _ in _got(got)] == [w for w, _ in _got(want)]
            np.testing.assert_allclose(
                [lp for _, lp in _got(got)], [lp for _, lp in _got(want)], atol=1e-5
            )
            assert got.state_reused == (end > 0)
            assert all(steps <= 2 for _, steps in encoder.calls), (typed[:end], encoder.calls)
        # Another client's different text never resumes from a state it was not computed from.
        encoder.calls.clear()
        other = cached.suggest("the weak of New ", k=4)
        assert not other.state_reused
        assert encoder.calls == [(1, 4)]  # four tokens after the start state (<eos>)
        assert _got(other) == _got(reference.suggest("the weak of New ", k=4))
    finally:
        batcher.stop()
        reference_batcher.stop()


def test_an_edited_earlier_word_falls_back_to_a_full_encode(
    parts: tuple[Predictor, FakeEncoder],
) -> None:
    predictor, encoder = parts
    predictor.suggest("the weather of New ", session_id="s")
    edited = "the weak of New "
    encoder.calls.clear()
    result = predictor.suggest(edited, k=5, session_id="s")
    assert not result.state_reused
    assert encoder.calls == [(1, 4)]  # four tokens, from the start state (<eos>)
    assert _got(result) == _got(predictor.suggest(edited, k=5))


def test_a_session_word_is_offered_back_with_python_numbers(
    parts: tuple[Predictor, FakeEncoder],
) -> None:
    # A numpy float here once reached the response body, which orjson cannot encode: a 500
    # that schema fuzzing (benchmarks/fuzz.py on bundles/default) found.
    predictor, _ = parts
    predictor.suggest("the weather of zorblax and ", session_id="s")
    result = predictor.suggest("the zo", k=2, session_id="s")
    assert [s.text for s in result.suggestions] == ["zorblax"]
    assert all(type(s.logprob) is float for s in result.suggestions)
    assert type(result.exact) is bool
    assert type(result.unexplored_mass) is float


def test_scores_of_every_vocabulary_line_sum_to_one(parts: tuple[Predictor, FakeEncoder]) -> None:
    predictor, _ = parts
    scores = predictor.score("the weather of ", VOCAB)
    assert all(s.in_vocab for s in scores)
    assert math.isclose(sum(math.exp(s.logprob) for s in scores), 1.0, rel_tol=1e-6)


def test_score_agrees_with_suggest(parts: tuple[Predictor, FakeEncoder]) -> None:
    predictor, _ = parts
    suggested = predictor.suggest("New York was ", k=10)
    scores = {s.candidate: s.logprob for s in predictor.score("New York was ", VOCAB)}
    penalty = math.log(predictor.policy.config.capital_penalty)
    ranked = sorted(
        (w for w in VOCAB if w not in BANNED | NOT_WORDS),
        key=lambda w: -(scores[w] - (penalty if w[0].isupper() else 0.0)),
    )[:10]
    assert [s.tokens[0] for s in suggested.suggestions] == ranked
    for s in suggested.suggestions:
        assert math.isclose(s.logprob, scores[s.tokens[0]], abs_tol=1e-6)


def test_multi_token_and_unknown_candidates(parts: tuple[Predictor, FakeEncoder]) -> None:
    predictor, encoder = parts
    by_name = {
        s.candidate: s
        for s in predictor.score(
            "the ", ["New York", "York", "zebra", "<unk>", "<eos>", "well-known"]
        )
    }
    after_the = _context_log_probs(predictor, encoder, ["the"])
    after_new = _context_log_probs(predictor, encoder, ["the", "New"])
    york = predictor.index["York"]
    assert by_name["New York"].logprob == pytest.approx(
        after_the[predictor.index["New"]] + after_new[york], abs=1e-5
    )
    assert by_name["York"].logprob == pytest.approx(after_the[york], abs=1e-6)
    assert by_name["zebra"].logprob == pytest.approx(after_the[predictor.unk_id], abs=1e-6)
    assert not by_name["zebra"].in_vocab
    assert by_name["<unk>"].in_vocab
    assert by_name["<eos>"].in_vocab
    after_well = _context_log_probs(predictor, encoder, ["the", "well"])
    after_hyphen = _context_log_probs(predictor, encoder, ["the", "well", "@-@"])
    want = (
        after_the[predictor.index["well"]]
        + after_well[predictor.index["@-@"]]
        + after_hyphen[predictor.index["known"]]
    )
    assert by_name["well-known"].logprob == pytest.approx(want, abs=1e-5)
    assert by_name["well-known"].in_vocab


def test_score_drops_the_partly_typed_word(parts: tuple[Predictor, FakeEncoder]) -> None:
    predictor, _ = parts
    typed = predictor.score("the wea", ["weather", "weak"])
    finished = predictor.score("the ", ["weather", "weak"])
    assert [s.logprob for s in typed] == [s.logprob for s in finished]


def test_special_and_blocked_words_are_never_suggested() -> None:
    from service_fakes import make_predictor

    predictor, _, batcher = make_predictor(PredictorOptions(block_list=("weather", "YORK")))
    try:
        words = {s.tokens[0] for s in predictor.suggest("the ", k=len(VOCAB)).suggestions}
        assert words == set(VOCAB) - BANNED - NOT_WORDS - {"weather", "York"}
        with_eos = {
            s.tokens[0]
            for s in predictor.suggest("the ", k=len(VOCAB), include_eos=True).suggestions
        }
        assert "<eos>" in with_eos
        assert "<unk>" not in with_eos
    finally:
        batcher.stop()
    assert blocked_ids(VOCAB, ["wealth"]) == [VOCAB.index("wealth"), VOCAB.index("Wealth")]


def test_two_word_phrases_equal_exhaustive_search() -> None:
    from service_fakes import make_predictor

    # A beam as wide as the vocabulary makes beam search exhaustive for two words.
    predictor, encoder, batcher = make_predictor(PredictorOptions(beam_width=len(VOCAB)))
    try:
        result = predictor.suggest("New ", k=5, max_words=2)
        first = _context_log_probs(predictor, encoder, ["New"])
        allowed = [i for i, w in enumerate(VOCAB) if w not in BANNED | NOT_WORDS]
        seconds = {a: _context_log_probs(predictor, encoder, ["New", VOCAB[a]]) for a in allowed}
        phrases = [
            ((VOCAB[a], VOCAB[b]), first[a] + seconds[a][b])
            for a, b in itertools.product(allowed, allowed)
        ]
        phrases.sort(key=lambda p: -p[1])
        assert [s.tokens for s in result.suggestions] == [p for p, _ in phrases[:5]]
        np.testing.assert_allclose(
            [s.logprob for s in result.suggestions], [lp for _, lp in phrases[:5]], atol=1e-5
        )
    finally:
        batcher.stop()


def test_expansion_cap_reports_an_inexact_result() -> None:
    from service_fakes import make_predictor

    predictor, _, batcher = make_predictor(PredictorOptions(max_expansions=1))
    try:
        result = predictor.suggest("the ", k=3)
        assert not result.exact
        assert 0.0 < result.unexplored_mass <= 1.0
    finally:
        batcher.stop()


def test_odd_text_is_served(parts: tuple[Predictor, FakeEncoder]) -> None:
    predictor, encoder = parts
    result = predictor.suggest("hello \x00\x07 😀 wörld ", k=3)
    log_probs = _context_log_probs(predictor, encoder, split_typed("hello 😀 wörld ")[0])
    want = _policy_ranking(predictor, log_probs, "hello 😀 wörld ", 3)
    assert [s.tokens[0] for s in result.suggestions] == [w for w, _ in want]
    timing = result.timing
    assert min(timing.tokenize, timing.encode, timing.decode) >= 0.0
    assert timing.total >= timing.tokenize + timing.encode + timing.decode - 1e-6


# -- the session cache (service.adaptation) ---------------------------------------------------

CACHE = CacheConfig(size=64, theta=0.5, lam=0.3, dtype="float32")


@pytest.fixture
def cached() -> Iterator[tuple[Predictor, FakeEncoder]]:
    from service_fakes import make_predictor

    # Contractions off: the brute-force mixture below ranks single tokens (test_policy.py
    # checks contractions under the mixture).
    options = PredictorOptions(cache=CACHE, policy=PolicyConfig(contractions=False))
    predictor, encoder, batcher = make_predictor(options)
    yield predictor, encoder
    batcher.stop()


def _type(predictor: Predictor, text: str, session_id: str) -> None:
    for end in range(len(text) + 1):
        predictor.suggest(text[:end], k=3, session_id=session_id)


def test_the_session_cache_holds_each_position_once(cached: tuple[Predictor, FakeEncoder]) -> None:
    """Keystrokes re-read the text, and an edit re-encodes it from the start: each position of
    the text still enters the cache once."""
    predictor, encoder = cached

    def ids(text: str) -> list[int]:
        return [predictor.eos_id, *(predictor.index[t] for t in split_typed(text)[0])]

    typed = "the weather of New York was bad , and it's worse "
    _type(predictor, typed, "s")
    predictor.suggest(typed, session_id="s")  # the same text again
    edited = "the weather of New York was worse , and it "
    predictor.suggest(edited, session_id="s")  # one request: a jump back and on
    memory = predictor.sessions.memory("s")
    assert memory is not None
    assert memory.adaptation is not None
    hiddens, next_ids = memory.adaptation.cache.pairs()
    shared = 7  # <eos> the weather of New York was
    assert next_ids.tolist() == ids(typed)[1:] + ids(edited)[shared:]
    full, _ = encoder.run(np.array([ids(typed)]), encoder.zero_state(1))
    np.testing.assert_allclose(hiddens[: len(ids(typed)) - 1], full[0, :-1], atol=1e-5)


def test_suggestions_under_the_cache_equal_the_brute_force_mixture(
    cached: tuple[Predictor, FakeEncoder],
) -> None:
    predictor, encoder = cached
    _type(predictor, "the weather was bad and the weather was worse . the ", "s")
    text = "the weather was bad and the weather was worse . the "
    memory = predictor.sessions.memory("s")
    assert memory is not None
    assert memory.adaptation is not None
    tree = _context_log_probs(predictor, encoder, split_typed(text)[0])
    ids = [predictor.eos_id, *(predictor.index[t] for t in split_typed(text)[0])]
    hidden, _ = encoder.run(np.array([ids]), encoder.zero_state(1))
    cache = memory.adaptation.cache.distribution(hidden[0, -1])
    mixed = mixture_log_probs(tree, cache.probs_of(np.arange(len(VOCAB))), CACHE.lam)
    got = predictor.suggest(text, k=6, session_id="s", reoffer=True)
    want = _policy_ranking(predictor, mixed, text, 6)
    assert [s.text for s in got.suggestions] == [w for w, _ in want]
    np.testing.assert_allclose(
        [s.logprob for s in got.suggestions], [lp for _, lp in want], atol=1e-5
    )
    # The cache raised the words the text repeats.
    assert mixed[predictor.index["weather"]] > tree[predictor.index["weather"]]
    # /v1/score with the session: the same mixture, a distribution over the vocabulary.
    scores = {s.candidate: s.logprob for s in predictor.score(text, VOCAB, session_id="s")}
    assert math.isclose(sum(math.exp(lp) for lp in scores.values()), 1.0, rel_tol=1e-6)
    for s in got.suggestions:
        assert math.isclose(s.logprob, scores[s.text], abs_tol=1e-5)
    plain = {s.candidate: s.logprob for s in predictor.score(text, VOCAB)}
    assert plain["weather"] == pytest.approx(float(tree[predictor.index["weather"]]), abs=1e-5)


def test_a_new_text_starts_from_the_shared_start_state(
    parts: tuple[Predictor, FakeEncoder],
) -> None:
    predictor, encoder = parts
    encoder.calls.clear()
    first = predictor.suggest("h", k=3, session_id="one")
    # The start state (<eos>), then the host step that looks up the forms of "he" ("he's").
    assert encoder.calls == [(1, 1), (1, 1)]
    assert first.suggestions[0].text == "he"
    encoder.calls.clear()
    # Another session's first keystroke, and a new line typed in an old session, reuse both.
    assert _got(predictor.suggest("h", k=3, session_id="two")) == _got(first)
    assert encoder.calls == []
    predictor.suggest("the weather of ", session_id="one")
    encoder.calls.clear()
    assert _got(predictor.suggest("h", k=3, session_id="one")) == _got(first)
    assert encoder.calls == []
