"""benchmarks/keystrokes.py: the typing model, counted by hand on backends of known behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.keystrokes import (
    Tally,
    Unit,
    simulate,
    text_entries,
    type_entry,
    units,
    wikitext_sentences,
)


class Scripted:
    """Offers the target word once ``after`` letters of it are typed; records every call."""

    name = "scripted"

    def __init__(self, entry: str, after: int, extra: tuple[str, ...] = ()) -> None:
        self.words = [u.word for u in units(entry)]
        self.after = after
        self.extra = extra
        self.calls: list[str] = []

    def start_entry(self) -> None:
        pass

    def suggest(self, typed: str, k: int) -> list[str]:
        self.calls.append(typed)
        done = typed.count(" ")  # units finished so far (one space after each)
        word = self.words[done]
        typed_letters = len(typed) - (typed.rfind(" ") + 1)
        offered = [*self.extra, word] if typed_letters >= self.after else list(self.extra)
        return offered[:k]


def test_units_split_punctuation_around_words() -> None:
    assert units('"Hello, world!" don\'t 1,000 well-known U.S. (a)') == [
        Unit('"', "Hello", ","),
        Unit("", "world", '!"'),
        Unit("", "don't", ""),
        Unit("", "1,000", ""),
        Unit("", "well-known", ""),
        Unit("", "U.S", "."),
        Unit("(", "a", ")"),
    ]
    assert units("-- ok") == [Unit("--", "", ""), Unit("", "ok", "")]


def test_a_perfect_backend_costs_one_key_a_word_plus_punctuation() -> None:
    entry = "the cat sat, on it."
    tally = Tally()
    backend = Scripted(entry, after=0)
    type_entry(backend, entry, 3, tally, str.__eq__)
    assert tally.keys_without == len(entry) + 1
    # the(1) cat(1) sat(1) ","(1) space(1) on(1) it(1) "."(1) space(1)
    assert tally.keys == 9
    assert (tally.word_starts, tally.top1, tally.topk) == (5, 5, 5)
    assert backend.calls[:3] == ["", "the ", "the cat "]


def test_a_late_suggestion_costs_the_letters_before_it() -> None:
    entry = "weather is fine"
    tally = Tally()
    type_entry(Scripted(entry, after=2), entry, 3, tally, str.__eq__)
    # "we"+pick, "is" typed whole (never offered before it ends) + space, "fi"+pick
    assert tally.keys == 3 + 3 + 3
    assert tally.calls_by_letters[:3] == [3, 3, 2]
    assert tally.hits_by_letters[:3] == [0, 0, 2]
    summary = tally.summary()
    assert summary["ksr"] == pytest.approx(1 - 9 / 16)
    assert summary["next_word_top1"] == 0.0


def test_no_suggestions_save_nothing_and_count_empty_slots() -> None:
    summary = simulate(Scripted("a bc", after=99), ["a bc"], 3)
    assert summary["ksr"] == 0.0
    assert summary["wasted_slots"]["empty"] == 1.0


def test_wasted_slots_and_case() -> None:
    entry = "Paris is"
    backend = Scripted(entry, after=99, extra=(",", "'s", "paris"))
    summary = simulate(backend, [entry], 3)
    assert summary["wasted_slots"]["punctuation"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["wasted_slots"]["fragments"] == pytest.approx(1 / 3, abs=1e-4)
    # Every call after the first within a word repeats what was shown before.
    calls = summary["calls"]
    words_calls = 2  # one call per word start
    assert summary["wasted_slots"]["repeats"] == pytest.approx(
        (calls - words_calls) / calls, abs=1e-4
    )
    insensitive = simulate(Scripted(entry, after=99, extra=("paris",)), [entry], 3, True)
    assert insensitive["next_word_top1"] == 0.5  # "paris" accepted for "Paris" up to case


def test_wikitext_sentences_are_typed_text(tmp_path: Path) -> None:
    (tmp_path / "test.txt").write_text(
        " = Title = \n\n The cat 's toy cost 1 @,@ 000 dollars . It was well @-@ known . \n"
        " A <unk> word here . Too short . \n",
        encoding="utf-8",
    )
    assert wikitext_sentences(tmp_path) == [
        "The cat's toy cost 1,000 dollars.",
        "It was well-known.",
    ]


def test_fortune_entries(tmp_path: Path) -> None:
    path = tmp_path / "fortunes"
    path.write_text(
        "Be yourself.\n  Everyone else\n is taken.\n%\nQuote.\n\t-- Someone\n%\n1234\n%\nOk.\n"
    )
    assert text_entries(path, "fortune") == ["Be yourself. Everyone else is taken.", "Ok."]
    assert text_entries(path, "lines")[:2] == ["Be yourself.", "Everyone else"]
    with pytest.raises(ValueError, match="format"):
        text_entries(path, "xml")
