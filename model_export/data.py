"""The word-level corpus: how to fetch WikiText-2 and how a corpus becomes token ids (where it
lives: :mod:`model_export.datadir`; other sources of text: :mod:`model_export.corpus`).

Layout: a directory with ``train.txt``, ``valid.txt`` and ``test.txt`` (WikiText-2 as renamed
by pytorch/examples). Every line, blank lines included, becomes its whitespace-split tokens
followed by one ``<eos>``; that is the convention of the published WikiText-2 figures (train
2,088,628 tokens, vocabulary 33,278 with ``<eos>``). The vocabulary and its counts come from
train only (:mod:`model_export.vocab`); words of valid/test outside it become ``<unk>``.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_export.vocab import (
    IdArray,
    Units,
    Vocabulary,
    build_vocabulary,
    count_words,
    encode,
    word_types,
)
from service.bundle import EOS, UNK

WIKITEXT2_INFO = {"name": "WikiText-2", "licence": "CC BY-SA 3.0"}
"""What :func:`load_corpus` reads unless told otherwise (:attr:`Corpus.about`)."""

DATA_ENV = "NEXTWORD_DATA"
SPLITS = ("train", "valid", "test")

WIKITEXT2_URL = "https://wikitext.smerity.com/wikitext-2-v1.zip"
"""The official wikitext-2-v1 archive (its first home, a Salesforce S3 bucket, is gone)."""
WIKITEXT2_MEMBERS = {
    "train": "wikitext-2/wiki.train.tokens",
    "valid": "wikitext-2/wiki.valid.tokens",
    "test": "wikitext-2/wiki.test.tokens",
}
DOWNLOAD_HINT = "python -m model_export download --to DIR"


class DataError(Exception):
    """The corpus is missing, unreadable or unusable. The message is one line."""


@dataclass
class Corpus:
    """A corpus as token ids. ``vocab[i]`` is word id ``i``; ids are ordered by train count."""

    vocab: list[str]
    counts: IdArray
    """Train count of every word id, ``(V,)`` int64 (``<eos>`` counts once per line)."""
    train: IdArray
    valid: IdArray
    test: IdArray
    index: dict[str, int]
    oov: dict[str, int] = field(default_factory=dict)
    """Tokens of each split that are ``<unk>`` because their word has no id (not literal ones)."""
    about: dict[str, str] = field(default_factory=lambda: dict(WIKITEXT2_INFO))
    """What the text is (``name``, ``licence``): checkpoints and manifests record it."""

    @property
    def eos_id(self) -> int:
        return self.index[EOS]

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    def split(self, name: str) -> IdArray:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r} (choose from {', '.join(SPLITS)})")
        ids: IdArray = getattr(self, name)
        return ids

    def oov_rate(self, name: str) -> float:
        """The fraction of the split's tokens (``<eos>`` included) that are out of vocabulary."""
        return self.oov.get(name, 0) / max(len(self.split(name)), 1)


# -- fetching ------------------------------------------------------------------------------------


def download_wikitext2(dest: Path, *, url: str = WIKITEXT2_URL, timeout: float = 60.0) -> Path:
    """Fetch the official wikitext-2-v1 archive and unpack it as ``dest/{train,valid,test}.txt``.

    The files are written to a temporary sibling directory and renamed into place, so ``dest``
    is either complete or absent.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} already exists and is not empty; choose another --to directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        archive = staged / "wikitext-2-v1.zip"
        _fetch(url, archive, timeout)
        _unpack(archive, staged, url)
        archive.unlink()
        if dest.exists():
            dest.rmdir()
        staged.rename(dest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return dest


def _fetch(url: str, target: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url} ({reason}); are you offline? Fetch the archive by hand and "
            "unzip wiki.{train,valid,test}.tokens as train.txt, valid.txt, test.txt"
        ) from None


def _unpack(archive: Path, into: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for split, member in WIKITEXT2_MEMBERS.items():
                with bundle.open(member) as source, (into / f"{split}.txt").open("wb") as out:
                    shutil.copyfileobj(source, out, length=1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{url} is not the wikitext-2-v1 archive ({exc})") from None


# -- reading -------------------------------------------------------------------------------------


def load_corpus(
    data_dir: Path,
    *,
    max_tokens: int | None = None,
    max_vocab: int | None = None,
    min_count: int = 1,
) -> Corpus:
    """Read ``train/valid/test.txt`` from ``data_dir`` into token ids.

    ``max_tokens`` (for tests and smoke runs) keeps only the first lines of each split, up to
    that many tokens including ``<eos>``; the vocabulary then comes from that slice of train.
    ``max_vocab`` and ``min_count`` limit the vocabulary (:mod:`model_export.vocab`).
    """
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"max_tokens must be positive, got {max_tokens}")
    train = str(Path(data_dir) / "train.txt")
    return corpus_from_units(
        read_wikitext(data_dir),
        train,
        max_tokens=max_tokens,
        max_vocab=max_vocab,
        min_count=min_count,
    )


def read_wikitext(data_dir: Path) -> dict[str, Units]:
    """The whitespace-split lines of each split (WikiText is tokenized already)."""
    return {split: _read_lines(split_path(Path(data_dir), split)) for split in SPLITS}


def corpus_from_units(
    units: Mapping[str, Units],
    train_name: str,
    *,
    max_tokens: int | None = None,
    max_vocab: int | None = None,
    min_count: int = 1,
    vocabulary: Sequence[str] | None = None,
) -> Corpus:
    """The corpus of sentence units already split three ways; ``train_name`` names the train
    text in errors. ``max_tokens`` cuts each split as :func:`load_corpus` says. A given
    ``vocabulary`` (a model's, to fine-tune it) is used as it is: the limits do not apply, and
    the counts are those of this train split in it."""
    cut = {split: _first_units(units[split], max_tokens) for split in SPLITS}
    if not cut["train"]:
        raise DataError(f"{train_name} is empty")
    types = word_types(count_words(cut["train"]))
    if types < 2:
        raise DataError(f"{train_name} has {types} word type(s); a language model needs at least 2")
    if vocabulary is None:
        vocab = build_vocabulary(cut["train"], max_vocab=max_vocab, min_count=min_count)
    else:
        vocab = Vocabulary(list(vocabulary), np.zeros(len(vocabulary), dtype=np.int64))
    words, index = vocab.words, vocab.index()
    encoded = {split: encode(cut[split], index, max_tokens) for split in SPLITS}
    counts = vocab.counts
    if vocabulary is not None:
        counts = np.bincount(encoded["train"][0], minlength=len(words)).astype(np.int64)
    return Corpus(
        vocab=words,
        counts=counts,
        train=encoded["train"][0],
        valid=encoded["valid"][0],
        test=encoded["test"][0],
        index=index,
        oov={split: oov for split, (_, oov) in encoded.items()},
    )


def split_path(data_dir: Path, split: str) -> Path:
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist ({DOWNLOAD_HINT} fetches it)")
    path = data_dir / f"{split}.txt"
    if not path.is_file():
        present = sorted(p.name for p in data_dir.iterdir())
        what = "is empty" if not present else f"has no {split}.txt"
        raise DataError(f"data directory {data_dir} {what} (need train.txt, valid.txt, test.txt)")
    return path


def _read_lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror})") from None
    # Split on "\n" only: str.splitlines would also break at U+2028, U+0085 and friends.
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    return [line.split() for line in raw]


def _first_units(units: Units, max_tokens: int | None) -> Units:
    """The units read before ``max_tokens`` tokens (each unit also costs one ``<eos>``)."""
    if max_tokens is None:
        return units
    total = 0
    for i, tokens in enumerate(units):
        if total >= max_tokens:
            return units[:i]
        total += len(tokens) + 1
    return units
