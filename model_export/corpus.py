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
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model_export.data import SPLITS, Corpus, DataError, split_path
from model_export.idfiles import IdFiles
from model_export.vocab import MIN_VOCAB
from service.text import tokenize

FORMATS = ("auto", "wikitext", "text", "text-dir", "jsonl")
WIKITEXT_FILES = tuple(f"{split}.txt" for split in SPLITS)
DEFAULT_VALID_FRACTION = 0.05
DEFAULT_MAX_VOCAB = 50_000
"""The vocabulary cap when none is given, ``<eos>`` and ``<unk>`` included. Measured by
``benchmarks/vocab_cap.py`` (README, *Vocabulary*): the default model trains at 1.00x its
WikiText-2 (V = 33,278) speed there, 0.36x at V = 100,000 and 0.12x at 1,000,000 (Adam updates
every embedding and tree row each step), so the cap sits above WikiText-2's vocabulary and
below the steep part; words past it were seen a handful of times."""
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
    max_vocab: int | None = DEFAULT_MAX_VOCAB
    """None: no cap."""
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
    path: Path,
    options: CorpusOptions | None = None,
    vocabulary: Sequence[str] | None = None,
    *,
    directory: Path | None = None,
) -> SourcedCorpus:
    """Read ``path`` (any of :data:`FORMATS`) into token ids; every bad input is a DataError.
    ``vocabulary``: read it in a model's vocabulary (fine-tuning) instead of building one.
    ``directory``: where the id files go while they are written (:class:`.idfiles.IdFiles`)."""
    options = options or CorpusOptions()
    kind = detect_format(path) if options.format == "auto" else options.format
    documents: dict[str, int] | None = None
    with IdFiles(options.max_tokens, directory) as files:
        if kind == "wikitext":
            add_wikitext(files, path)
            train = str(path / "train.txt")
        else:
            documents = add_raw(files, path, kind, options)
            train = f"the train split of {path}"
        corpus = files.corpus(
            train,
            max_vocab=options.max_vocab,
            min_count=options.min_count,
            vocabulary=vocabulary,
        )
    return SourcedCorpus(corpus, kind, documents, options)


def add_raw(files: IdFiles, path: Path, kind: str, options: CorpusOptions) -> dict[str, int]:
    """Raw text into ``files``, split by document; the documents in each split."""
    count, one_per_line = survey(path, kind, options.text_field)
    if not count:
        raise DataError(f"corpus {path} has no text (no line with a word in it)")
    labels = split_labels(count, options.valid_fraction, options.seed, hint=HINTS[kind])
    documents = iter_documents(path, kind, options.text_field, one_per_line)
    for number, document in enumerate(documents):
        if number >= count:
            raise DataError(f"corpus {path} changed while it was read (it has more documents)")
        for unit in document:
            files.add(int(labels[number]), unit)
        if files.all_full:  # --data-tokens: the rest would be read for nothing
            break
    sizes = np.bincount(labels, minlength=len(SPLITS))
    return {split: int(size) for split, size in zip(SPLITS, sizes, strict=True)}


def add_wikitext(files: IdFiles, path: Path) -> None:
    """A WikiText directory into ``files``: every line of each split, blank ones included, as
    its whitespace-split tokens (:func:`model_export.data.read_wikitext`, streamed)."""
    for split, name in enumerate(SPLITS):
        file = split_path(path, name)
        # Read to the end even past --data-tokens, so a bad byte is found as when read whole.
        for line in decoded_lines(file, "utf-8"):
            for piece in _universal_lines(line):
                files.add(split, piece.split())


def _universal_lines(line: str) -> list[str]:
    """The lines Python's universal newlines make of one line (Path.read_text read WikiText
    so until it was streamed): a lone carriage return ends a line too, CR LF ends one."""
    if "\r" not in line:
        return [line]
    pieces = line.split("\r")
    return pieces[:-1] if line.endswith("\r") else pieces


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
    """The documents of a raw-text corpus, in corpus order, those without tokens left out
    (all in memory: for tests and small corpora; :func:`read_corpus` streams them)."""
    _, one_per_line = survey(path, kind, text_field)
    return list(iter_documents(path, kind, text_field, one_per_line))


def survey(path: Path, kind: str, text_field: str = "text") -> tuple[int, bool]:
    """How many documents a raw-text corpus has, after checking it is one; and, for ``text``,
    whether it is one document per line (one block), which :func:`iter_documents` needs."""
    if kind not in HINTS:
        raise DataError(f"{kind!r} is not a raw-text corpus format")
    if not path.exists():
        raise DataError(f"corpus {path} does not exist")
    if path.is_dir() != (kind == "text-dir"):
        what = "directory" if kind == "text-dir" else "file"
        raise DataError(f"corpus {path} is not a {what}, as --corpus-format {kind} needs")
    if kind == "text-dir":
        return sum(has_tokens(read_text(file)) for file in _text_files(path)), False
    check_text(path)
    if kind == "jsonl":
        return sum(has_tokens(text) for text in jsonl_texts(path, text_field)), False
    blocks = lines = 0
    in_block = False
    for line in decoded_lines(path):
        if has_tokens(line):
            lines += 1
            blocks += not in_block
            in_block = True
        else:
            in_block = False  # a blank line (or one of spaces, controls) ends the block
    return (lines, True) if blocks == 1 else (blocks, False)


def iter_documents(
    path: Path, kind: str, text_field: str, one_per_line: bool
) -> Iterator[Document]:
    """The documents of a raw-text corpus that :func:`survey` has checked, one at a time."""
    documents: Iterator[Document]
    if kind == "text-dir":
        documents = (units_of(read_text(file)) for file in _text_files(path))
    elif kind == "jsonl":
        documents = (units_of(text) for text in jsonl_texts(path, text_field))
    else:
        documents = text_documents(decoded_lines(path), one_per_line)
    return (document for document in documents if document)


_ASCII_WORD = re.compile("[A-Za-z0-9]")


def has_tokens(text: str) -> bool:
    """Whether :func:`units_of` would find a unit in ``text``, mostly without tokenizing it:
    tokenize never drops an ASCII letter or digit, and nearly every line has one."""
    if _ASCII_WORD.search(text):
        return True
    return any(tokenize(line) for line in text.split("\n"))


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


def check_text(path: Path) -> None:
    """Refuse the file as :func:`read_text` would, reading one line at a time: a NUL byte
    anywhere is reported first, else the first byte that is not UTF-8."""
    undecodable: int | None = None
    offset = 0  # of the line, in bytes of the file
    mark = 0  # the length of a leading byte-order mark, which utf-8-sig's positions leave out
    for number, line in enumerate(_byte_lines(path)):
        nul = line.find(b"\0")
        if nul >= 0:  # UTF-8 text never holds one; binary files and UTF-16 text do
            at = offset + nul
            raise DataError(f"{path} is not UTF-8 text (NUL byte at {at}: a binary file?)")
        if number == 0 and line.startswith(BOM):
            mark = len(BOM)
        start = mark if number == 0 else 0  # the mark is not decoded
        if undecodable is None:
            try:
                line[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                undecodable = offset + start + exc.start - mark
        offset += len(line)
    if undecodable is not None:
        raise DataError(f"{path} is not UTF-8 text (byte {undecodable})")


BOM = b"\xef\xbb\xbf"


def decoded_lines(path: Path, encoding: str = "utf-8-sig") -> Iterator[str]:
    """The file's lines without their ``"\\n"``, as ``text.split("\\n")`` gives them (but for a
    last empty one): a byte 0x0A is a newline in UTF-8 and nothing else. ``utf-8-sig``: a
    leading byte-order mark is dropped. A byte that is not UTF-8 is a DataError."""
    offset = 0
    for number, line in enumerate(_byte_lines(path)):
        if number == 0 and encoding == "utf-8-sig" and line.startswith(BOM):
            line = line[len(BOM) :]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text (byte {offset + exc.start})") from None
        offset += len(line)
        yield text[:-1] if text.endswith("\n") else text


def _byte_lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as file:
            yield from file
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror})") from None


def units_of(text: str) -> list[list[str]]:
    """Sentence units of raw text: the tokens of each line that has any."""
    # Split on "\n" only, as WikiText is read: U+2028 and friends are whitespace in a line.
    return [tokens for tokens in map(tokenize, text.split("\n")) if tokens]


def text_documents(lines: Iterator[str], one_per_line: bool) -> Iterator[Document]:
    """Blocks of lines between blank lines, or each line alone (a file of one block)."""
    block: Document = []
    for line in lines:
        tokens = tokenize(line)
        if tokens and one_per_line:
            yield [tokens]
        elif tokens:
            block.append(tokens)
        elif block:
            yield block  # a blank line (or one of spaces, controls) ends the block
            block = []
    if block:
        yield block


def _text_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise DataError(f"corpus {path} has no .txt files")
    return files


def jsonl_texts(path: Path, field: str) -> Iterator[str]:
    """The ``field`` of each line's JSON object (blank lines skipped), of a checked file."""
    for number, line in enumerate(decoded_lines(path), start=1):
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
        yield value


# -- splits --------------------------------------------------------------------------------------


def split_labels(n: int, fraction: float, seed: int, *, hint: str = "") -> npt.NDArray[np.int8]:
    """The split of each of ``n`` documents, as an index into SPLITS: a seeded random
    ``fraction`` (at least one) each for valid and test, the rest for train. ``hint`` ends the
    too-few error."""
    if n < len(SPLITS):
        why = f"; {hint}" if hint else ""
        raise DataError(
            f"the corpus has {n} document(s), too few for train, valid and test (at least 3){why}"
        )
    held = min(max(1, round(fraction * n)), (n - 1) // 2)  # train keeps at least one
    # The keys as big-endian integers sort as the digests do; a stable sort keeps ties in index
    # order, as sorted() did when this was a list (8 bytes a document, not a Python object).
    keys = (int.from_bytes(_shuffle_key(seed, i), "big") for i in range(n))
    order = np.argsort(np.fromiter(keys, dtype=np.uint64, count=n), kind="stable")
    labels = np.zeros(n, dtype=np.int8)
    labels[order[:held]] = SPLITS.index("valid")
    labels[order[held : 2 * held]] = SPLITS.index("test")
    return labels


def split_documents(
    documents: Sequence[Document], fraction: float, seed: int, *, hint: str = ""
) -> dict[str, list[Document]]:
    """``{split: documents}`` by :func:`split_labels`, each split in corpus order."""
    labels = split_labels(len(documents), fraction, seed, hint=hint).tolist()
    return {
        split: [doc for doc, label in zip(documents, labels, strict=True) if label == code]
        for code, split in enumerate(SPLITS)
    }


def _shuffle_key(seed: int, i: int) -> bytes:
    # A hash, not a library RNG, so that a seed gives the same split under every numpy and
    # Python version: a resumed run must see the vocabulary it started with.
    return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
