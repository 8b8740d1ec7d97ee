"""model_export.data: fetching and reading the corpus; every bad input is a DataError."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from model_export.data import (
    WIKITEXT2_MEMBERS,
    Corpus,
    DataError,
    download_wikitext2,
    load_corpus,
)


def write_corpus(root: Path, train: str, valid: str = " a b \n", test: str = " b c \n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{split}.txt").write_text(text, encoding="utf-8")
    return root


# -- reading -------------------------------------------------------------------------------------


def test_small_corpus_ids_counts_and_order(tmp_path: Path) -> None:
    root = write_corpus(tmp_path, " = T = \n \n b a b\n c b <unk>\n", valid=" a zz\n", test="\n")
    corpus = load_corpus(root)
    # Counts: b 3, <eos> 4 (one per line, blank included), = 2, a/c/<unk>/T 1 (first-seen order).
    assert corpus.vocab == ["<eos>", "b", "=", "T", "a", "c", "<unk>"]
    assert corpus.counts.tolist() == [4, 3, 2, 1, 1, 1, 1]
    assert corpus.counts.dtype == np.int64
    assert corpus.index == {word: i for i, word in enumerate(corpus.vocab)}
    ids = corpus.index
    assert corpus.train.tolist() == [
        ids["="], ids["T"], ids["="], ids["<eos>"], ids["<eos>"],
        ids["b"], ids["a"], ids["b"], ids["<eos>"], ids["c"], ids["b"], ids["<unk>"], ids["<eos>"],
    ]  # fmt: skip
    assert corpus.valid.tolist() == [ids["a"], corpus.unk_id, corpus.eos_id]
    assert corpus.test.tolist() == [corpus.eos_id]
    assert corpus.counts.sum() == len(corpus.train)


def test_unk_is_in_vocab_even_when_train_has_none(tmp_path: Path) -> None:
    corpus = load_corpus(write_corpus(tmp_path, " a b a\n"))
    assert corpus.vocab[corpus.unk_id] == "<unk>"
    assert corpus.counts[corpus.unk_id] == 0
    assert corpus.valid.tolist() == [corpus.index["a"], corpus.index["b"], corpus.eos_id]
    assert corpus.test.tolist() == [corpus.index["b"], corpus.unk_id, corpus.eos_id]


def test_only_newlines_end_lines(tmp_path: Path) -> None:
    # U+2028 and U+0085 are whitespace inside a line, not line breaks; CRLF counts once.
    corpus = load_corpus(write_corpus(tmp_path, "a\u2028b\u0085c\r\nd e\n"))
    assert corpus.counts[corpus.eos_id] == 2
    assert len(corpus.train) == 7


def test_max_tokens_truncates_each_split(tmp_path: Path) -> None:
    train = "".join(f" w{i % 7} w{i % 3}\n" for i in range(100))
    corpus = load_corpus(write_corpus(tmp_path, train, valid=train, test=train), max_tokens=10)
    assert len(corpus.train) == len(corpus.valid) == len(corpus.test) == 10
    # The vocabulary comes from the lines that were read (4 lines: w0..w3 and w0..w2).
    assert set(corpus.vocab) == {"w0", "w1", "w2", "w3", "<eos>", "<unk>"}
    with pytest.raises(DataError, match="max_tokens"):
        load_corpus(tmp_path, max_tokens=0)


def test_vocabulary_limits_and_out_of_vocabulary_counts(tmp_path: Path) -> None:
    root = write_corpus(tmp_path, " a a b c\n", valid=" a b zz\n", test=" c <unk>\n")
    full = load_corpus(root)
    assert full.oov == {"train": 0, "valid": 1, "test": 0}  # zz; a literal <unk> is not OOV
    capped = load_corpus(root, max_vocab=4)  # <eos>, <unk> and the two most frequent: a, b
    assert capped.vocab == ["a", "b", "<eos>", "<unk>"]
    assert capped.counts.tolist() == [2, 1, 1, 1]  # c's count went to <unk>
    assert capped.oov == {"train": 1, "valid": 1, "test": 1}
    assert capped.oov_rate("valid") == 1 / 4
    assert capped.oov_rate("test") == 1 / 3
    assert load_corpus(root, min_count=2).vocab == ["a", "<unk>", "<eos>"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty_dir", "is empty"),
        ("no_valid", "has no valid.txt"),
        ("empty_train", "train.txt is empty"),
        ("one_type", "1 word type"),
        ("blank_lines", "0 word type"),
        ("not_utf8", "not UTF-8"),
    ],
)
def test_bad_corpora_give_one_line_errors(tmp_path: Path, setup: str, message: str) -> None:
    root = tmp_path / "data"
    if setup == "empty_dir":
        root.mkdir()
    elif setup == "no_valid":
        write_corpus(root, " a b\n")
        (root / "valid.txt").unlink()
    elif setup == "empty_train":
        write_corpus(root, "")
    elif setup == "one_type":
        write_corpus(root, " a a a <unk>\n a\n")
    elif setup == "blank_lines":
        write_corpus(root, " \n\n \n")
    elif setup == "not_utf8":
        write_corpus(root, " a b\n")
        (root / "train.txt").write_bytes(b" a \xff b\n")
    with pytest.raises(DataError, match=message) as caught:
        load_corpus(root)
    assert "\n" not in str(caught.value)


# -- the real WikiText-2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wikitext2(data_dir: Path) -> Corpus:
    return load_corpus(data_dir)


def test_wikitext2_matches_the_published_figures(wikitext2: Corpus) -> None:
    assert len(wikitext2.vocab) == 33_278
    assert len(wikitext2.train) == 2_088_628
    assert len(wikitext2.valid) == 217_646
    assert len(wikitext2.test) == 245_569
    assert wikitext2.counts.sum() == len(wikitext2.train)
    assert np.array_equal(np.bincount(wikitext2.train, minlength=33_278), wikitext2.counts)
    assert (np.diff(wikitext2.counts) <= 0).all()
    assert wikitext2.vocab[:3] == ["the", ",", "."]
    assert wikitext2.counts[wikitext2.unk_id] == 54_625
    assert (wikitext2.valid == wikitext2.unk_id).sum() == 11_718  # valid adds no new types
    assert wikitext2.counts[wikitext2.eos_id] == 36_718


# -- download (never the real network) -------------------------------------------------------------


def fake_archive(path: Path) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for split, member in WIKITEXT2_MEMBERS.items():
            archive.writestr(member, f" = {split} = \n \n the {split} text\n")
    return path.as_uri()


def test_download_unpacks_the_archive(tmp_path: Path) -> None:
    url = fake_archive(tmp_path / "wikitext-2-v1.zip")
    dest = download_wikitext2(tmp_path / "wt2", url=url)
    assert sorted(p.name for p in dest.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    corpus = load_corpus(dest)
    assert corpus.counts[corpus.eos_id] == 3
    assert "train" in corpus.vocab
    with pytest.raises(DataError, match="not empty"):
        download_wikitext2(dest, url=url)


def test_download_offline_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    # Port 9 on loopback: connection refused at once, no traffic leaves the machine.
    with pytest.raises(DataError, match=r"could not download .* are you offline") as caught:
        download_wikitext2(tmp_path / "wt2", url="http://127.0.0.1:9/wikitext-2-v1.zip", timeout=5)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_download_rejects_a_wrong_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not the wikitext-2-v1 archive"):
        download_wikitext2(tmp_path / "wt2", url=bogus.as_uri())
    assert not (tmp_path / "wt2").exists()
