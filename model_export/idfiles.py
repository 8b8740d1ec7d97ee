"""Token ids on disk: how a corpus larger than memory becomes a :class:`.data.Corpus`.

Sentence units arrive one at a time with the split they belong to (:meth:`IdFiles.add`). Each
token gets a *provisional* id, assigned on first sight in any split, written as ``uint32`` to
one file per split; only the train counts (:func:`.vocab.count_words`, in order of first
appearance) and one provisional id per word type stay in memory. Once every unit is in, the
vocabulary is built from those counts under the usual rules (:mod:`model_export.vocab`), and
each file is rewritten in chunks as final ``int64`` ids, which the corpus maps back with
:class:`numpy.memmap`: only the pages training touches are ever in memory.

The files live in a fresh directory under ``directory`` (default: the system's temporary
directory, ``$TMPDIR`` else ``/tmp``), which is deleted when :class:`IdFiles` is closed, on
error or not. The mapped arrays stay readable after that: on POSIX an unlinked file lives on
until its last mapping goes, so the disk space is returned when the corpus is garbage-collected
or the process ends, however it ends, and a failed read leaves nothing behind.

The ids and counts are those :func:`.data.corpus_from_units` gives for the same units, cut to
``max_tokens`` the same way (whole units are counted, each split's ids end at ``max_tokens``).
"""

from __future__ import annotations

import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from model_export.data import SPLITS, Corpus, DataError
from model_export.vocab import IdArray, Vocabulary, vocabulary_of_counts, word_types
from service.bundle import EOS, UNK

EOS_MARK = 0
"""The provisional id of the ``<eos>`` ending each unit; words get 1, 2, ... (a literal
``<eos>`` token is a word like any other here and is mapped to the same final id)."""
FLUSH = 1 << 16
"""Provisional ids buffered per split before they are written (256 KiB of ``uint32``)."""
CHUNK = 1 << 16
"""Ids remapped at a time (512 KiB of ``int64`` out)."""


class IdFiles:
    """Provisional ids of three splits on disk; use as a context manager, then :meth:`corpus`."""

    def __init__(self, max_tokens: int | None = None, directory: Path | None = None) -> None:
        self.max_tokens = max_tokens
        self.root = Path(tempfile.mkdtemp(prefix="nextword-corpus-", dir=directory))
        self._files: list[BinaryIO] = []
        try:
            self._files = [(self.root / f"{split}.u32").open("wb") for split in SPLITS]
        except BaseException:
            self.close()
            raise
        self._buffers = [array("I") for _ in SPLITS]  # C unsigned int: uint32, as read back
        self._ids: dict[str, int] = {}
        self.tokens = [0] * len(SPLITS)
        """Tokens written per split, ``<eos>`` included (whole units: may pass max_tokens)."""
        self.train_words: Counter[str] = Counter()
        self.train_units = 0

    def __enter__(self) -> IdFiles:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for file in self._files:
            file.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def full(self, split: int) -> bool:
        """Whether ``split`` (an index into SPLITS) takes no more units."""
        return self.max_tokens is not None and self.tokens[split] >= self.max_tokens

    @property
    def all_full(self) -> bool:
        return all(self.full(split) for split in range(len(SPLITS)))

    def add(self, split: int, tokens: Sequence[str]) -> None:
        """One sentence unit of ``split``; ignored once the split has ``max_tokens``."""
        if self.full(split):
            return
        ids, buffer = self._ids, self._buffers[split]
        for token in tokens:
            pid = ids.get(token)
            if pid is None:
                pid = ids[token] = len(ids) + 1
            buffer.append(pid)
        buffer.append(EOS_MARK)
        self.tokens[split] += len(tokens) + 1
        if split == 0:
            self.train_words.update(tokens)
            self.train_units += 1
        if len(buffer) >= FLUSH:
            self._flush(split)

    def _flush(self, split: int) -> None:
        self._buffers[split].tofile(self._files[split])
        self._buffers[split] = array("I")

    def corpus(
        self,
        train_name: str,
        *,
        max_vocab: int | None = None,
        min_count: int = 1,
        vocabulary: Sequence[str] | None = None,
    ) -> Corpus:
        """The corpus of the units added, as :func:`.data.corpus_from_units` makes it."""
        for split in range(len(SPLITS)):
            self._flush(split)
            self._files[split].close()
        if not self.train_units:
            raise DataError(f"{train_name} is empty")
        types = word_types(self.train_words)
        if types < 2:
            raise DataError(
                f"{train_name} has {types} word type(s); a language model needs at least 2"
            )
        if vocabulary is None:
            vocab = vocabulary_of_counts(
                self.train_words, self.train_units, max_vocab=max_vocab, min_count=min_count
            )
        else:
            vocab = Vocabulary(list(vocabulary), np.zeros(len(vocabulary), dtype=np.int64))
        index = vocab.index()
        final = self._final_ids(index)
        mapped = [self._remap(split, final, index[UNK]) for split in range(len(SPLITS))]
        ids = [split_ids for split_ids, _ in mapped]
        counts = vocab.counts
        if vocabulary is not None:
            counts = np.bincount(ids[0], minlength=len(vocab.words)).astype(np.int64)
        return Corpus(
            vocab=vocab.words,
            counts=counts,
            train=ids[0],
            valid=ids[1],
            test=ids[2],
            index=index,
            oov={name: oov for name, (_, oov) in zip(SPLITS, mapped, strict=True)},
        )

    def _final_ids(self, index: dict[str, int]) -> IdArray:
        """Final id of each provisional id; -1 where the word has none (out of vocabulary)."""
        final = np.full(len(self._ids) + 1, -1, dtype=np.int64)
        final[EOS_MARK] = index[EOS]
        for word, pid in self._ids.items():
            final[pid] = index.get(word, -1)
        return final

    def _remap(self, split: int, final: IdArray, unk: int) -> tuple[IdArray, int]:
        """The split's final ids, mapped from their file, and how many are out of vocabulary."""
        name = SPLITS[split]
        length = self.tokens[split]
        if self.max_tokens is not None:
            length = min(length, self.max_tokens)
        if length == 0:
            return np.zeros(0, dtype=np.int64), 0  # an empty file cannot be mapped
        source, target = self.root / f"{name}.u32", self.root / f"{name}.i64"
        oov = 0
        # Plain reads and writes, not a writable memmap: pages written through a mapping stay in
        # the process's resident memory until it is unmapped, and would count as its own.
        with source.open("rb") as src, target.open("wb") as out:
            for start in range(0, length, CHUNK):
                chunk = final[np.fromfile(src, dtype=np.uint32, count=min(CHUNK, length - start))]
                missing = chunk < 0
                oov += int(missing.sum())
                chunk[missing] = unk
                chunk.tofile(out)
        source.unlink()  # the disk holds one copy of the split at a time
        # Copy-on-write: torch wants writable arrays, and nothing may change the file.
        ids: IdArray = np.memmap(target, dtype=np.int64, mode="c", shape=(length,))
        return ids, oov
