"""model_export.corpus: each source format, the service's tokenizer, document splits, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from model_export.corpus import (
    CorpusOptions,
    check_text,
    detect_format,
    has_tokens,
    read_corpus,
    read_documents,
    read_text,
    split_documents,
    split_labels,
)
from model_export.data import Corpus, DataError, corpus_from_units, load_corpus, read_wikitext
from service.text import tokenize

HELLO = ["Hello", ",", "world", "!"]
ITS = ["It", "'s", "3", "@.@", "5", "m", "."]
DONT = ["Don", "'t", "stop", "."]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def paragraphs(count: int) -> str:
    """``count`` blank-line-separated paragraphs of two lines, over a few word types and one
    word of its own each (``name7``), which only its paragraph has."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    lines = [
        " ".join(words[(i * 3 + j) % len(words)] for j in range(4 + i % 3)) + "."
        for i in range(2 * count)
    ]
    return "\n\n".join(f"{lines[2 * i]} name{i}\n{lines[2 * i + 1]}" for i in range(count)) + "\n"


# -- formats -------------------------------------------------------------------------------------


def test_text_file_documents_are_blocks_between_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "Hello, world!\nIt's 3.5 m.\n\n \t\n\nDon\u2019t stop.\n")
    assert read_documents(path, "text") == [[HELLO, ITS], [DONT]]


def test_text_file_without_blank_lines_is_one_document_per_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "Hello, world!\r\nIt's 3.5 m.\r\nDon't stop.")
    assert read_documents(path, "text") == [[HELLO], [ITS], [DONT]]


def test_text_dir_reads_txt_files_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    write(root / "b.txt", "Don't stop.\n")
    write(root / "a.txt", "Hello, world!\n\nIt's 3.5 m.\n")  # blank lines end no document here
    write(root / "empty.txt", "\n \n")  # no tokens: no document
    write(root / "notes.md", "not read")
    write(root / "sub" / "c.txt", "not read either")
    assert detect_format(root) == "text-dir"
    assert read_documents(root, "text-dir") == [[HELLO, ITS], [DONT]]


def test_jsonl_reads_the_text_field_of_each_line(tmp_path: Path) -> None:
    records = [
        {"text": "Hello, world!\nIt's 3.5 m.", "id": 1},
        {"text": "  "},
        {"text": "Don't stop."},
    ]
    lines = [json.dumps(record) for record in records]
    path = write(tmp_path / "a.jsonl", "\n".join([lines[0], "", *lines[1:]]) + "\n")
    assert detect_format(path) == "jsonl"
    assert read_documents(path, "jsonl") == [[HELLO, ITS], [DONT]]
    other = write(tmp_path / "b.jsonl", json.dumps({"body": "Don't stop."}) + "\n")
    assert read_documents(other, "jsonl", text_field="body") == [[DONT]]


def test_wikitext_directory_is_read_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    for split in ("train", "valid", "test"):
        write(root / f"{split}.txt", " = Title = \n well @-@ known <unk> , 1 @,@ 000 \n")
    assert detect_format(root) == "wikitext"
    sourced = read_corpus(root)
    expected = load_corpus(root)
    assert sourced.format == "wikitext"
    assert sourced.documents is None
    assert sourced.corpus.vocab == expected.vocab
    assert "@-@" in sourced.corpus.vocab  # not re-tokenized into "@ - @"
    assert np.array_equal(sourced.corpus.train, expected.train)


def test_raw_text_is_tokenized_as_the_service_tokenizes_typed_text(tmp_path: Path) -> None:
    lines = [
        "The U.S. and e.g. this, Mr. Smith of St. Louis.",
        "\u201cQuoted\u201d caf\u0065\u0301 \u2014 12,345.67 well-known (twice)",
        "wait... what\u2026 $5 or 10% and/or don't",
        "emoji \U0001f44d\U0001f3fd a<unk>b \x07bell",
    ]
    path = write(tmp_path / "a.txt", "\n".join(lines) + "\n")
    units = [unit for document in read_documents(path, "text") for unit in document]
    assert units == [tokenize(line) for line in lines]


# -- splits and the corpus -----------------------------------------------------------------------


def test_document_splits_are_seeded_disjoint_and_in_corpus_order() -> None:
    documents = [[[f"w{i}"]] for i in range(20)]
    splits = split_documents(documents, 0.1, seed=7)
    assert [len(splits[name]) for name in ("train", "valid", "test")] == [16, 2, 2]
    ids = {name: [int(doc[0][0][1:]) for doc in docs] for name, docs in splits.items()}
    assert sorted(ids["train"] + ids["valid"] + ids["test"]) == list(range(20))
    assert all(part == sorted(part) for part in ids.values())
    assert split_documents(documents, 0.1, seed=7) == splits
    assert split_documents(documents, 0.1, seed=8) != splits


def test_document_split_of_a_seed_never_changes() -> None:
    # Recorded once (blake2b of "seed:index"): a resumed run must rebuild the vocabulary it
    # started with, under any numpy or Python.
    splits = split_documents([[[str(i)]] for i in range(10)], 0.2, seed=0)
    held = {name: [int(doc[0][0]) for doc in docs] for name, docs in splits.items()}
    assert held == {"train": [0, 1, 2, 4, 5, 6], "valid": [3, 7], "test": [8, 9]}


@pytest.mark.parametrize(
    ("count", "fraction", "sizes"), [(3, 0.05, [1, 1, 1]), (4, 0.45, [2, 1, 1])]
)
def test_every_split_gets_a_document(count: int, fraction: float, sizes: list[int]) -> None:
    splits = split_documents([[[str(i)]] for i in range(count)], fraction, seed=0)
    assert [len(splits[name]) for name in ("train", "valid", "test")] == sizes


def test_read_corpus_splits_documents_and_counts_oov(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", paragraphs(31))
    options = CorpusOptions(valid_fraction=0.1, seed=3)
    sourced = read_corpus(path, options)
    corpus = sourced.corpus
    assert sourced.format == "text"
    assert sourced.documents == {"train": 25, "valid": 3, "test": 3}
    assert corpus.counts.sum() == len(corpus.train)
    for split in ("valid", "test"):
        # Recount by hand: the split's tokens whose word the vocabulary lacks.
        units = [unit for doc in _split_docs(path, options)[split] for unit in doc]
        missing = sum(token not in corpus.index for unit in units for token in unit)
        assert missing >= 3  # the name of each of its 3 paragraphs at least
        assert corpus.oov[split] == missing
        assert corpus.oov_rate(split) == missing / len(corpus.split(split))
    assert sourced.summary()["documents"] == sourced.documents


def _split_docs(path: Path, options: CorpusOptions) -> dict[str, list[list[list[str]]]]:
    documents = read_documents(path, "text")
    return split_documents(documents, options.valid_fraction, options.seed)


def test_oov_rate_on_a_hand_checked_corpus(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    write(root / "train.txt", " a a b\n")
    write(root / "valid.txt", " a c <unk>\n")  # 4 tokens with <eos>: c is OOV, <unk> is not
    write(root / "test.txt", " b d\n")
    corpus = read_corpus(root).corpus
    assert (corpus.oov_rate("valid"), corpus.oov_rate("test")) == (0.25, 1 / 3)
    capped = read_corpus(root, CorpusOptions(max_vocab=3)).corpus  # <eos>, <unk> and a
    assert capped.vocab == ["a", "<eos>", "<unk>"]
    assert (capped.oov_rate("valid"), capped.oov_rate("test")) == (0.25, 2 / 3)
    assert capped.oov["train"] == 1  # b
    assert read_corpus(root, CorpusOptions(min_count=2)).corpus.vocab == capped.vocab


def test_data_tokens_cuts_each_split(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", paragraphs(40))
    corpus = read_corpus(path, CorpusOptions(max_tokens=12)).corpus
    assert len(corpus.train) == len(corpus.valid) == len(corpus.test) == 12


# -- bad input -----------------------------------------------------------------------------------


def bad_corpus(tmp_path: Path, case: str) -> Path:
    if case == "missing":
        return tmp_path / "nope.txt"
    if case == "half_wikitext":
        write(tmp_path / "d" / "train.txt", "a b\n")
        return tmp_path / "d"
    if case == "no_txt_files":
        write(tmp_path / "d" / "a.md", "a b\n")
        return tmp_path / "d"
    if case == "binary_in_dir":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "a.txt").write_bytes(b"a\0b")
        return tmp_path / "d"
    contents: dict[str, bytes] = {
        "empty": b"",
        "blank": b"\n  \n\t\n",
        "nul": b"hello\0world\n",
        "not_utf8": b"caf\xe9 au lait\n",
        "one_type": b"a a\n\na\n\na a a\n",
        "two_documents": b"a b\n\nc d\n",
        "bad_json": b'{"text": "a b"}\n\n{"text": oops}\n',
        "no_field": b'{"text": "a b"}\n{"body": "c"}\n',
        "not_object": b'{"text": "a b"}\n[1, 2]\n',
        "not_string": b'{"text": 5}\n',
    }
    suffix = ".jsonl" if case in {"bad_json", "no_field", "not_object", "not_string"} else ".txt"
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(contents[case])
    return path


BAD_INPUTS = [
    ("missing", "does not exist"),
    ("half_wikitext", "has train.txt but no test.txt, valid.txt"),
    ("no_txt_files", "has no .txt files"),
    ("binary_in_dir", r"a.txt is not UTF-8 text \(NUL byte at 1"),
    ("empty", "has no text"),
    ("blank", "has no text"),
    ("nul", r"is not UTF-8 text \(NUL byte at 5: a binary file\?\)"),
    ("not_utf8", r"is not UTF-8 text \(byte 3\)"),
    ("one_type", "train split of .* has 1 word type"),
    ("two_documents", "2 document.*at least 3.*separated by blank lines"),
    ("bad_json", "line 3 is not JSON"),
    ("no_field", "line 2 has no 'text' field"),
    ("not_object", "line 2 has no 'text' field"),
    ("not_string", "line 1: 'text' is a int, not a string"),
]


@pytest.mark.parametrize(("case", "message"), BAD_INPUTS)
def test_bad_corpora_give_one_line_errors(tmp_path: Path, case: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        read_corpus(bad_corpus(tmp_path, case))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_vocab": 1}, r"--max-vocab must be at least 2"),
        ({"valid_fraction": 0.0}, r"--valid-fraction must be in \(0, 0.5\), got 0.0"),
        ({"valid_fraction": 0.5}, r"--valid-fraction must be in \(0, 0.5\), got 0.5"),
        ({"valid_fraction": -0.1}, r"--valid-fraction"),
        ({"min_count": 0}, "--min-count must be at least 1"),
        ({"max_tokens": 0}, "--data-tokens must be positive"),
        ({"format": "pdf"}, "unknown corpus format 'pdf'"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        CorpusOptions(**options)  # type: ignore[arg-type]


def test_a_format_that_does_not_fit_the_path_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", paragraphs(5))
    with pytest.raises(DataError, match="is not a directory, as --corpus-format text-dir needs"):
        read_corpus(path, CorpusOptions(format="text-dir"))
    with pytest.raises(DataError, match="is not a file, as --corpus-format jsonl needs"):
        read_corpus(tmp_path, CorpusOptions(format="jsonl"))


# -- streaming: the same corpus as reading it whole ------------------------------------------------
# The reader before streaming, kept as the reference: every document in memory at once.


def whole_documents(path: Path, kind: str, field: str = "text") -> list[list[list[str]]]:
    def units(text: str) -> list[list[str]]:
        return [tokens for tokens in map(tokenize, text.split("\n")) if tokens]

    if kind == "text-dir":
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        return [doc for doc in (units(read_text(file)) for file in files) if doc]
    text = read_text(path)
    if kind == "jsonl":
        records = [json.loads(line) for line in text.split("\n") if line.strip()]
        return [doc for doc in (units(record[field]) for record in records) if doc]
    blocks: list[list[list[str]]] = [[]]
    for line in text.split("\n"):
        tokens = tokenize(line)
        if tokens:
            blocks[-1].append(tokens)
        elif blocks[-1]:
            blocks.append([])
    blocks = [block for block in blocks if block]
    return [[unit] for unit in blocks[0]] if len(blocks) == 1 else blocks


def whole_split(n: int, fraction: float, seed: int) -> dict[str, list[int]]:
    held = min(max(1, round(fraction * n)), (n - 1) // 2)
    key = lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()  # noqa: E731
    order = sorted(range(n), key=key)
    return {
        "valid": sorted(order[:held]),
        "test": sorted(order[held : 2 * held]),
        "train": sorted(order[2 * held :]),
    }


def whole_corpus(
    path: Path, kind: str, options: CorpusOptions, vocabulary: list[str] | None = None
) -> tuple[Corpus, dict[str, int] | None]:
    if kind == "wikitext":
        units, documents = read_wikitext(path), None
    else:
        docs = whole_documents(path, kind, options.text_field)
        chosen = whole_split(len(docs), options.valid_fraction, options.seed)
        units = {s: [u for i in chosen[s] for u in docs[i]] for s in chosen}
        documents = {s: len(chosen[s]) for s in ("train", "valid", "test")}
    corpus = corpus_from_units(
        units,
        "train",
        max_tokens=options.max_tokens,
        max_vocab=options.max_vocab,
        min_count=options.min_count,
        vocabulary=vocabulary,
    )
    return corpus, documents


def streaming_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    """A few small corpora of each format, with the awkward bits each reader must agree on."""
    odd = "\ufeffCaf\u00e9 \u201cno\u201d\r\n\x07\n<unk> a<unk>b \u2028 12,345.6\n\n\u00bf?\n"
    text = write(tmp_path / "blocks.txt", paragraphs(31) + odd + paragraphs(7))
    lines = write(tmp_path / "lines.txt", "".join(f"line {i % 7} name{i} .\n" for i in range(40)))
    root = tmp_path / "docs"
    for i in range(12):
        write(root / f"{i:02}.txt", paragraphs(1 + i % 3) if i != 4 else " \n\x07\n")
    records = [{"text": paragraphs(1 + i % 4), "id": i} for i in range(25)]
    records[3]["text"] = "\n \n"  # no tokens: no document
    jsonl = write(tmp_path / "a.jsonl", "\n\n".join(json.dumps(r) for r in records) + "\n")
    wiki = tmp_path / "wt"
    write(wiki / "train.txt", " = T = \n\n a b <eos> a\r\n c\rd \u2028 e\n" + paragraphs(9))
    write(wiki / "valid.txt", " a zz <unk>\n\n b\r")
    write(wiki / "test.txt", paragraphs(2))
    return [
        (text, "text"),
        (lines, "text"),
        (root, "text-dir"),
        (jsonl, "jsonl"),
        (wiki, "wikitext"),
    ]


OPTION_CASES = [
    {},
    {"valid_fraction": 0.2, "seed": 5},
    {"max_vocab": 9},
    {"min_count": 2, "seed": 1},
    {"max_tokens": 40},
    {"max_tokens": 1, "max_vocab": 4},
]


@pytest.mark.parametrize("extra", OPTION_CASES)
def test_streaming_reader_gives_the_corpus_of_the_whole_reader(
    tmp_path: Path, extra: dict[str, object]
) -> None:
    for path, kind in streaming_cases(tmp_path):
        options = CorpusOptions(format=kind, **extra)  # type: ignore[arg-type]
        expected, documents = whole_corpus(path, kind, options)
        sourced = read_corpus(path, options, directory=tmp_path)
        assert_same_corpus(sourced.corpus, expected)
        assert sourced.documents == documents, path
        assert isinstance(sourced.corpus.train, np.memmap)
    assert not list(tmp_path.glob("nextword-corpus-*"))  # the id files are gone


def test_streaming_reader_in_a_given_vocabulary(tmp_path: Path) -> None:
    vocabulary = ["<eos>", "the", "cat", "<unk>", "mat", "zebra"]
    for path, kind in streaming_cases(tmp_path):
        options = CorpusOptions(format=kind)
        expected, _ = whole_corpus(path, kind, options, vocabulary)
        assert_same_corpus(read_corpus(path, options, vocabulary).corpus, expected)


def assert_same_corpus(corpus: Corpus, expected: Corpus) -> None:
    assert corpus.vocab == expected.vocab
    assert corpus.index == expected.index
    assert corpus.counts.dtype == np.int64
    assert corpus.counts.tolist() == expected.counts.tolist()
    for split in ("train", "valid", "test"):
        assert corpus.split(split).dtype == np.int64
        assert corpus.split(split).tolist() == expected.split(split).tolist(), split
    assert corpus.oov == expected.oov


def test_document_split_is_the_one_sorted_by_hash_gave() -> None:
    for n in (3, 4, 10, 57, 1000):
        for fraction, seed in ((0.05, 0), (0.3, 7)):
            labels = split_labels(n, fraction, seed)
            by_split = {name: np.flatnonzero(labels == code).tolist() for code, name in SPLIT_CODES}
            assert by_split == whole_split(n, fraction, seed)


SPLIT_CODES = list(enumerate(("train", "valid", "test")))


def test_has_tokens_is_whether_tokenize_finds_any() -> None:
    lines = [
        "",
        " ",
        "\x07",
        "\u200b",
        "a",
        "\u0301",
        ".",
        "`",
        "_",
        "@",
        "<unk>",
        "\ue000",
        "¿",
        "ж",
    ]
    lines += ["\u2028", "\ufeff", "\ud800", "--", "'", "\U0001f44d\U0001f3fd", "x\x00y"]
    for line in lines:
        assert has_tokens(line) == bool(tokenize(line)), repr(line)


@pytest.mark.parametrize(
    "data",
    [
        b"ok\n",
        b"\xef\xbb\xbfcaf\xe9\n",
        b"\xef\xbb\xbfa\nb\n\xff\n",
        b"a\nb\xc3\nc\n",
        b"a\xff\nb\x00c\n",
        b"\xef\xbb\xbf\x00",
        b"a\n\n\xe2\x82",
    ],
)
def test_checking_line_by_line_refuses_as_reading_whole_does(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    try:
        read_text(path)
    except DataError as exc:
        with pytest.raises(DataError, match=re.escape(str(exc))):
            check_text(path)
    else:
        check_text(path)


def test_bad_input_leaves_no_id_files(tmp_path: Path) -> None:
    ids = tmp_path / "ids"
    ids.mkdir()
    for case in ("bad_json", "one_type", "nul", "not_utf8", "two_documents"):
        (tmp_path / case).mkdir()
        with pytest.raises(DataError):
            read_corpus(bad_corpus(tmp_path / case, case), directory=ids)
    assert not list(ids.iterdir())


@pytest.mark.slow
def test_reading_streams_instead_of_holding_the_corpus(tmp_path: Path) -> None:
    # ~3 MB in paragraphs over a few thousand word types. Read whole, every token would be a str
    # object (50+ bytes) in a list (8 more): ~60 bytes a token, ~40 MB here, besides the text.
    # Streamed, memory is the vocabulary, one document and fixed-size buffers (~5 MB measured).
    path = tmp_path / "big.txt"
    with path.open("w", encoding="utf-8") as out:
        for i in range(40_000):
            words = " ".join(f"w{(i * 7 + j * j) % 3000}" for j in range(12))
            out.write(f"{words.capitalize()}, said N{i % 50}.\n" + ("\n" if i % 3 == 2 else ""))
    tracemalloc.start()
    try:
        corpus = read_corpus(path, directory=tmp_path).corpus
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tokens = sum(len(corpus.split(split)) for split in ("train", "valid", "test"))
    assert tokens > 600_000  # the whole file was read
    token_strings = 58 * tokens
    assert peak < token_strings / 4, f"peak {peak:,} bytes for {tokens:,} tokens"
