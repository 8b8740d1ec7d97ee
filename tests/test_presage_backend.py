"""benchmarks/presage_backend.py against the real Presage library and text2ngram.

Skipped as a whole where Debian's ``libpresage1v5`` or ``presage`` (text2ngram) is missing. The
expectations about suggestions (which words, the no-repeat rule) were checked against Presage
0.9.1 with its default profile; each test uses a fresh engine because what Presage suggests
depends on what it suggested before and on what it has learnt from the text typed so far.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.presage_backend import (
    DB_VARIABLE,
    SUGGESTIONS_VARIABLE,
    TEXT2NGRAM,
    USER_DB_VARIABLE,
    Presage,
    PresageError,
    build_database,
    find_library,
)

if find_library() is None:
    pytest.skip(
        "libpresage not found (Debian package libpresage1v5): Presage tests skipped",
        allow_module_level=True,
    )
if shutil.which(TEXT2NGRAM) is None:
    pytest.skip(
        f"{TEXT2NGRAM} not on PATH (Debian package presage): Presage tests skipped",
        allow_module_level=True,
    )

# Made up for these tests. After "sat on the", "mat" (9 times) beats "rug", "sofa", "floor" and
# "step" (once or twice each); "the m" can be "mat", "milk", "mouse" or "morning"; "the" is
# followed by more than five different words. Capitals and punctuation check that -l and the
# tokeniser reduce them to the lowercase words Presage looks up.
CORPUS = [
    "The cat sat on the mat.",
    "The cat sat on the mat and looked at the dog.",
    "Every morning the cat sat on the mat by the door.",
    "The old cat sat on the mat again today.",
    "My cat sat on the mat while the dog sat on the rug.",
    "The dog sat on the rug near the fire.",
    "A small cat sat on the mat, then slept.",
    "The cat sat on the mat and drank the milk.",
    "The grey cat sat on the mat in the morning sun.",
    "The dog slept on the sofa all afternoon.",
    "The boy sat on the floor and read a book.",
    "The girl sat on the step and waited for the bus.",
    "The mouse ran under the table.",
    "The cat chased the mouse across the kitchen.",
    "The dog chased the cat up the tree.",
    "She poured the milk into a bowl for the cat.",
    "He opened the door and let the dog out.",
    "The sun came up over the hill.",
    "We walked to the park in the morning.",
    "The children played in the garden after school.",
    "The bus was late again this morning.",
    "The book was on the table next to the lamp.",
    "The fire kept the room warm all night.",
    "The cat slept by the fire.",
    "A dog barked at the mouse.",
    "The tree in the garden lost its leaves.",
    "The kitchen smelled of fresh bread.",
    "They drank tea and read the paper.",
    "The lamp on the table was broken.",
    "The cat sat on the mat once more.",
]


@pytest.fixture(autouse=True)
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME: a ~/.presage/presage.xml of this machine cannot change the results, and
    the HOME test below can see whether anything was written there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_database(CORPUS, tmp_path_factory.mktemp("presage") / "ngrams.db")


@pytest.fixture
def make(db: Path, tmp_path: Path) -> Iterator[Callable[..., Presage]]:
    """Opens fresh engines on the test database and closes them after the test."""
    opened: list[Presage] = []

    def factory(**kwargs: object) -> Presage:
        kwargs.setdefault("user_db_dir", tmp_path / "user")
        engine = Presage(db, **kwargs)  # type: ignore[arg-type]
        opened.append(engine)
        return engine

    yield factory
    for engine in opened:
        engine.close()


def _rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


def test_database_has_one_table_per_order_filled_with_lowercase_counts(db: Path) -> None:
    tables = {name for (name,) in _rows(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"_1_gram", "_2_gram", "_3_gram"} <= tables
    for n in (1, 2, 3):
        assert _rows(db, f"SELECT COUNT(*) FROM _{n}_gram")[0][0] > 10
    # 9 lines have "... on the mat": capitalised "The" counted as "the", the "." dropped.
    assert _rows(
        db, "SELECT count FROM _3_gram WHERE word_2='on' AND word_1='the' AND word='mat'"
    ) == [(9,)]
    assert _rows(db, "SELECT COUNT(*) FROM _1_gram WHERE word='The' OR word LIKE '%.'") == [(0,)]


def test_next_word_is_the_corpus_continuation(make: Callable[..., Presage]) -> None:
    words = make().predict("the cat sat on the ")
    assert words[0] == "mat"
    assert len(set(words)) == len(words) == 3


def test_completions_start_with_the_typed_prefix(make: Callable[..., Presage]) -> None:
    words = make(suggestions=5).predict("the cat sat on the m")
    assert "mat" in words
    assert len(words) >= 2
    assert all(word.startswith("m") for word in words), words


def test_typed_capitals_are_lowercased(make: Callable[..., Presage]) -> None:
    # LOWERCASE_MODE=yes: the context is lowercased before lookup, suggestions come back lower.
    words = make().predict("The Cat Sat On The M")
    assert words
    assert words[0] == "mat"


@pytest.mark.parametrize("suggestions", [1, 2, 5])
def test_returns_at_most_the_configured_number(
    make: Callable[..., Presage], suggestions: int
) -> None:
    engine = make(suggestions=suggestions)
    assert engine.config(SUGGESTIONS_VARIABLE) == str(suggestions)
    # "the" has many continuations in the corpus, so Presage fills every slot.
    assert len(engine.predict("we walked to the ")) == suggestions


def test_a_word_offered_for_the_current_word_is_not_offered_again(
    make: Callable[..., Presage],
) -> None:
    engine = make()
    assert engine.config("Presage.Selector.REPEAT_SUGGESTIONS") == "no"  # the default
    assert "mat" in engine.predict("the cat sat on the ")
    # One keystroke later, still the same word: "mat" was shown and not taken, so it is gone,
    # although a fresh engine puts it first for this very text.
    assert "mat" not in engine.predict("the cat sat on the m")
    assert make().predict("the cat sat on the m")[0] == "mat"
    # Once the word is finished the memory is cleared: "mat" comes back for the next word.
    assert "mat" in engine.predict("the cat sat on the mat and the ")


def test_asking_twice_for_the_same_text_gives_new_words(make: Callable[..., Presage]) -> None:
    # The flip side of no-repeat: a caller must ask once per keystroke.
    engine = make()
    first = engine.predict("the cat sat on the ")
    second = engine.predict("the cat sat on the ")
    assert first
    assert second
    assert not set(first) & set(second)


def test_repeat_suggestions_can_be_switched_on(make: Callable[..., Presage]) -> None:
    engine = make(config={"Presage.Selector.REPEAT_SUGGESTIONS": "yes"})
    assert "mat" in engine.predict("the cat sat on the ")
    assert engine.predict("the cat sat on the m")[0] == "mat"


def test_learn_adds_words_the_database_lacks(make: Callable[..., Presage]) -> None:
    assert "ran" not in make().predict("the zebra ")
    engine = make()
    engine.learn("the zebra ran home. the zebra ran away. the zebra ran fast.")
    assert engine.predict("the zebra ")[0] == "ran"


def test_config_points_at_our_files_and_home_stays_untouched(
    make: Callable[..., Presage], db: Path, tmp_path: Path, fake_home: Path
) -> None:
    user_dir = tmp_path / "user"
    with make(user_db_dir=user_dir) as engine:
        assert engine.config(DB_VARIABLE) == str(db.resolve())
        user_db = Path(engine.config(USER_DB_VARIABLE))
        assert user_db == engine.user_db_path
        assert user_db.parent.parent == user_dir.resolve()
        engine.predict("the cat sat on the m")
        engine.learn("the zebra ran home")
    assert user_db.is_file()
    # The library's own default would have created ~/.presage/lm.db during construction.
    assert list(fake_home.iterdir()) == []


def test_each_engine_gets_a_fresh_user_database(make: Callable[..., Presage]) -> None:
    first, second = make(), make()
    assert first.user_db_path != second.user_db_path
    first.learn("the zebra ran home. the zebra ran away.")
    assert "ran" not in second.predict("the zebra ")


def test_build_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = build_database(CORPUS, tmp_path / "ngrams.db")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        build_database(["the zebra ran home to the zebra house"], path)
    assert path.read_bytes() == before

    build_database(["the zebra ran home to the zebra house"], path, force=True)
    assert _rows(path, "SELECT count FROM _1_gram WHERE word='zebra'") == [(2,)]
    assert _rows(path, "SELECT COUNT(*) FROM _1_gram WHERE word='cat'") == [(0,)]


def test_build_fails_when_the_corpus_has_no_trigram(tmp_path: Path) -> None:
    path = tmp_path / "out" / "ngrams.db"
    with pytest.raises(PresageError, match=r"\[3\]"):
        build_database(["hello"], path)
    assert list(path.parent.iterdir()) == []  # neither the db nor a temporary left behind


def test_build_fails_without_text2ngram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PresageError, match=TEXT2NGRAM):
        build_database(CORPUS, tmp_path / "ngrams.db")


def test_missing_database_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(PresageError, match=r"presage_new_with_config.*INIT_PREDICTOR"):
        Presage(missing, user_db_dir=tmp_path / "user")
    assert not missing.exists()


def test_unknown_config_variable_is_an_error(make: Callable[..., Presage]) -> None:
    with pytest.raises(PresageError, match="CONFIG_VARIABLE_ERROR"):
        make().config("Presage.Selector.NO_SUCH_VARIABLE")
    # presage_config_set itself would accept the name and create it; the backend refuses.
    with pytest.raises(PresageError, match="CONFIG_VARIABLE_ERROR"):
        make(config={"Presage.Selector.NO_SUCH_VARIABLE": "1"})


def test_closed_engine_refuses_calls(make: Callable[..., Presage]) -> None:
    engine = make()
    engine.close()
    engine.close()
    with pytest.raises(PresageError, match="closed"):
        engine.predict("the ")


def test_a_home_profile_is_warned_about(make: Callable[..., Presage], fake_home: Path) -> None:
    (fake_home / ".presage").mkdir()
    (fake_home / ".presage" / "presage.xml").write_text("<Presage/>\n")
    with pytest.warns(UserWarning, match="presage.xml"):
        make()
