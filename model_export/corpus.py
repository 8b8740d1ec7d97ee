"""Corpus sources: a team's own text, read into a train/valid/test :class:`.data.Corpus`.

Formats (:data:`FORMATS`; ``auto`` picks by what the path is):

``wikitext``
    A directory with ``train.txt``, ``valid.txt`` and ``test.txt``, already tokenized; read as
    :func:`model_export.data.load_corpus` reads WikiText-2, splits as given. ``auto``: a
    directory holding all three.
``text``
    One UTF-8 text file. Documents are blocks of lines separated by blank lines; a file with
    no blank line between its lines is taken one line per document (one sentence per line is
    common, and one document could not be split). ``auto``: any other file.
``text-dir``
    A directory of ``.txt`` files (not its subdirectories, nor other files), each file one
    document, read in sorted order of name. ``auto``: any other directory.
``jsonl``
    One JSON object per line, whose text field (``text`` by default) is one document; blank
    lines are skipped. ``auto``: a file named ``*.jsonl``.

Raw text (every format but ``wikitext``) goes through :func:`service.text.tokenize`, the
tokenizer the service applies to typed text, so the model is trained on the tokens it will be
given. Each line with tokens is one sentence unit followed by ``<eos>``, as a WikiText line is;
lines and documents without tokens are skipped.

Splits of raw text are by document, so no document is in two of them: the documents are put in
a seeded random order, the first ``round(valid_fraction * n)`` (at least one) go to valid, as
many to test and the rest to train, and each split keeps its documents in corpus order. A
corpus of fewer than 3 documents cannot be split. The whole corpus is read into memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_export.data import SPLITS, Corpus, DataError, corpus_from_units, read_wikitext
from model_export.vocab import MIN_VOCAB, Units
from service.text import tokenize

FORMATS = ("auto", "wikitext", "text", "text-dir", "jsonl")
WIKITEXT_FILES = tuple(f"{split}.txt" for split in SPLITS)
DEFAULT_VALID_FRACTION = 0.05
HINTS = {
    "text": "documents are separated by blank lines",
    "text-dir": "each .txt file is one document",
    "jsonl": "each line is one document",
}
"""How each raw format makes documents, for the error of a corpus with too few."""

Document = list[list[str]]
"""A document as sentence units (the tokens of each line that has any)."""


@dataclass(frozen=True)
class CorpusOptions:
    """How to read a corpus; checked on construction (the messages name the CLI flags)."""

    format: str = "auto"
    text_field: str = "text"
    valid_fraction: float = DEFAULT_VALID_FRACTION
    """Of the documents, for valid and again for test; in (0, 0.5) so train keeps some."""
    seed: int = 0
    max_vocab: int | None = None
    min_count: int = 1
    max_tokens: int | None = None
    """Keep only the first units of each split, up to this many tokens (smoke runs)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            choices = ", ".join(FORMATS)
            raise DataError(f"unknown corpus format {self.format!r} (choose from {choices})")
        if not 0 < self.valid_fraction < 0.5:
            raise DataError(f"--valid-fraction must be in (0, 0.5), got {self.valid_fraction}")
        if self.max_vocab is not None and self.max_vocab < MIN_VOCAB:
            raise DataError(
                f"--max-vocab must be at least {MIN_VOCAB} (<eos> and <unk>), got {self.max_vocab}"
            )
        if self.min_count < 1:
            raise DataError(f"--min-count must be at least 1, got {self.min_count}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise DataError(f"--data-tokens must be positive, got {self.max_tokens}")


@dataclass(frozen=True)
class SourcedCorpus:
    """A corpus and where it came from."""

    corpus: Corpus
    format: str
    """The format it was read as (never ``auto``)."""
    documents: dict[str, int] | None
    """Documents per split; None for a ``wikitext`` directory, whose splits are given."""
    options: CorpusOptions

    def summary(self) -> dict[str, Any]:
        """What the bundle manifest records about the corpus (``metrics.corpus``)."""
        corpus, options = self.corpus, self.options
        summary: dict[str, Any] = {
            "format": self.format,
            "tokens": {split: len(corpus.split(split)) for split in SPLITS},
            "vocab_size": len(corpus.vocab),
            "max_vocab": options.max_vocab,
            "min_count": options.min_count,
        }
        if self.documents is not None:
            summary |= {
                "documents": self.documents,
                "valid_fraction": options.valid_fraction,
                "seed": options.seed,
            }
        return summary

    def describe(self) -> str:
        """One line for the build's output."""
        corpus = self.corpus
        sizes = "/".join(f"{len(corpus.split(split)):,}" for split in SPLITS)
        docs = "" if self.documents is None else f" in {sum(self.documents.values()):,} documents"
        return (
            f"corpus ({self.format}): train/valid/test {sizes} tokens{docs}, vocabulary "
            f"{len(corpus.vocab):,}, out of vocabulary: valid {corpus.oov_rate('valid'):.2%}, "
            f"test {corpus.oov_rate('test'):.2%}"
        )


def read_corpus(
    path: Path, options: CorpusOptions | None = None, vocabulary: Sequence[str] | None = None
) -> SourcedCorpus:
    """Read ``path`` (any of :data:`FORMATS`) into token ids; every bad input is a DataError.
    ``vocabulary``: read it in a model's vocabulary (fine-tuning) instead of building one."""
    options = options or CorpusOptions()
    kind = detect_format(path) if options.format == "auto" else options.format
    if kind == "wikitext":
        units, documents = read_wikitext(path), None
        train = str(path / "train.txt")
    else:
        units, documents = read_raw(path, kind, options)
        train = f"the train split of {path}"
    corpus = corpus_from_units(
        units,
        train,
        max_tokens=options.max_tokens,
        max_vocab=options.max_vocab,
        min_count=options.min_count,
        vocabulary=vocabulary,
    )
    return SourcedCorpus(corpus, kind, documents, options)


def read_raw(
    path: Path, kind: str, options: CorpusOptions
) -> tuple[dict[str, Units], dict[str, int]]:
    """Raw text as sentence units split by document, and the documents in each split."""
    documents = read_documents(path, kind, options.text_field)
    if not documents:
        raise DataError(f"corpus {path} has no text (no line with a word in it)")
    splits = split_documents(documents, options.valid_fraction, options.seed, hint=HINTS[kind])
    units: dict[str, Units] = {s: [u for doc in docs for u in doc] for s, docs in splits.items()}
    return units, {split: len(docs) for split, docs in splits.items()}


def detect_format(path: Path) -> str:
    """What ``auto`` reads ``path`` as (see the module docstring)."""
    if path.is_dir():
        present = [name for name in WIKITEXT_FILES if (path / name).is_file()]
        if len(present) == len(WIKITEXT_FILES):
            return "wikitext"
        if "train.txt" in present:
            # Half a WikiText directory is far likelier a mistake than documents named so.
            missing = ", ".join(sorted(set(WIKITEXT_FILES) - set(present)))
            raise DataError(
                f"corpus {path} has train.txt but no {missing}: a wikitext directory needs all "
                "three (pass --corpus-format text-dir to read its files as documents)"
            )
        return "text-dir"
    if path.is_file():
        return "jsonl" if path.suffix == ".jsonl" else "text"
    raise DataError(f"corpus {path} does not exist")


# -- documents -----------------------------------------------------------------------------------


def read_documents(path: Path, kind: str, text_field: str = "text") -> list[Document]:
    """The documents of a raw-text corpus, in corpus order, those without tokens left out."""
    if kind not in HINTS:
        raise DataError(f"{kind!r} is not a raw-text corpus format")
    if not path.exists():
        raise DataError(f"corpus {path} does not exist")
    if path.is_dir() != (kind == "text-dir"):
        what = "directory" if kind == "text-dir" else "file"
        raise DataError(f"corpus {path} is not a {what}, as --corpus-format {kind} needs")
    if kind == "text":
        return text_documents(read_text(path))
    if kind == "jsonl":
        return jsonl_documents(read_text(path), path, text_field)
    documents = (units_of(read_text(file)) for file in _text_files(path))
    return [document for document in documents if document]


def read_text(path: Path) -> str:
    """The file as text; a NUL byte or bytes that are not UTF-8 mean it is not a text file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror})") from None
    nul = data.find(b"\0")
    if nul >= 0:  # UTF-8 text never holds one; binary files and UTF-16 text do
        raise DataError(f"{path} is not UTF-8 text (NUL byte at {nul}: a binary file?)")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def units_of(text: str) -> list[list[str]]:
    """Sentence units of raw text: the tokens of each line that has any."""
    # Split on "\n" only, as WikiText is read: U+2028 and friends are whitespace in a line.
    return [tokens for tokens in map(tokenize, text.split("\n")) if tokens]


def text_documents(text: str) -> list[Document]:
    """Blocks of lines between blank lines; one line per document when there is one block."""
    blocks: list[Document] = [[]]
    for line in text.split("\n"):
        tokens = tokenize(line)
        if tokens:
            blocks[-1].append(tokens)
        elif blocks[-1]:
            blocks.append([])  # a blank line (or one of spaces, controls) ends the block
    blocks = [block for block in blocks if block]
    if len(blocks) == 1:
        return [[unit] for unit in blocks[0]]
    return blocks


def _text_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise DataError(f"corpus {path} has no .txt files")
    return files


def jsonl_documents(text: str, path: Path, field: str) -> list[Document]:
    """The ``field`` of each line's JSON object, as a document (blank lines skipped)."""
    documents: list[Document] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise DataError(f"{path} line {number} has no {field!r} field (see --text-field)")
        value = record[field]
        if not isinstance(value, str):
            kind = type(value).__name__
            raise DataError(f"{path} line {number}: {field!r} is a {kind}, not a string")
        if document := units_of(value):
            documents.append(document)
    return documents


# -- splits --------------------------------------------------------------------------------------


def split_documents(
    documents: Sequence[Document], fraction: float, seed: int, *, hint: str = ""
) -> dict[str, list[Document]]:
    """``{split: documents}``: a seeded random ``fraction`` (at least one) each for valid and
    test, the rest for train, each in corpus order. ``hint`` ends the too-few error."""
    n = len(documents)
    if n < len(SPLITS):
        why = f"; {hint}" if hint else ""
        raise DataError(
            f"the corpus has {n} document(s), too few for train, valid and test (at least 3){why}"
        )
    held = min(max(1, round(fraction * n)), (n - 1) // 2)  # train keeps at least one
    order = sorted(range(n), key=lambda i: _shuffle_key(seed, i))
    chosen = {
        "valid": sorted(order[:held]),
        "test": sorted(order[held : 2 * held]),
        "train": sorted(order[2 * held :]),
    }
    return {split: [documents[i] for i in chosen[split]] for split in SPLITS}


def _shuffle_key(seed: int, i: int) -> bytes:
    # A hash, not a library RNG, so that a seed gives the same split under every numpy and
    # Python version: a resumed run must see the vocabulary it started with.
    return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
