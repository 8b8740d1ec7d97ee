"""service.session_words: a session's unknown words, their share of P(<unk>), and the bounds."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from service import decode
from service.predictor import Predictor
from service.session_words import MAX_WORD_CHARS, MAX_WORDS, SessionWords


def test_counts_are_the_most_seen_in_one_text() -> None:
    words = SessionWords()
    words.update(["Zorblax", "Zorblax", "Quux"])
    words.update(["Zorblax"])  # the same text read again at a later keystroke
    shares = dict(words.matching(""))
    assert shares == pytest.approx({"Zorblax": math.log(2 / 4), "Quux": math.log(1 / 4)})
    assert sum(math.exp(s) for s in shares.values()) < 1.0  # some mass left for new words


def test_matching_follows_the_case_rule() -> None:
    words = SessionWords()
    words.update(["Zorblax", "zorro"])
    assert {w for w, _ in words.matching("zo")} == {"Zorblax", "zorro"}
    assert {w for w, _ in words.matching("Zo")} == {"Zorblax"}
    assert words.matching("x") == []


def test_bounded_and_filtered() -> None:
    words = SessionWords()
    words.update(["x" * (MAX_WORD_CHARS + 1), "---", *(f"w{i}" for i in range(MAX_WORDS + 10))])
    assert len(words) == MAX_WORDS
    names = {w for w, _ in words.matching("")}
    assert "w0" not in names  # the oldest dropped first
    assert f"w{MAX_WORDS + 9}" in names
    assert "---" not in names


@pytest.fixture
def predictor() -> Iterator[Predictor]:
    from service_fakes import make_predictor

    predictor, _, batcher = make_predictor()
    yield predictor
    batcher.stop()


def test_a_name_typed_once_completes_the_second_time(predictor: Predictor) -> None:
    text = "the Zorblax was bad and the Zo"
    assert predictor.suggest(text, k=3).suggestions == []  # no vocabulary word starts with zo
    got = predictor.suggest(text, k=3, session_id="s").suggestions
    assert [s.text for s in got] == ["Zorblax"]
    # Its probability: all of the session's unknown-word occurrences but a +1 share of P(<unk>).
    ids = [predictor.eos_id, *(predictor.index.get(t, predictor.unk_id) for t in text.split()[:-1])]
    hidden, _ = predictor.batcher.encode(np.array([ids], dtype=np.int64), predictor.zero_state)
    unk = decode.word_log_probs(predictor.tree, hidden[0, -1], [predictor.unk_id])[0]
    assert got[0].logprob == pytest.approx(unk + math.log(1 / 2), abs=1e-5)
    # The session remembers it in a new text; another session knows nothing of it.
    assert [s.text for s in predictor.suggest("a Zo", k=3, session_id="s").suggestions] == [
        "Zorblax"
    ]
    assert predictor.suggest("a Zo", k=3, session_id="other").suggestions == []
