"""The vocabulary: which word types of the training text get an id, and text as those ids.

Text arrives as *sentence units*: lists of tokens, each unit followed by one ``<eos>`` (a
WikiText line, a line of raw text). The vocabulary is counted on train only: ``<eos>`` once per
unit, ``<unk>`` always present (count 0 when train has none). Ids are ordered by train count,
ties in order of first appearance.

Two limits keep it small (both off by default, which reproduces WikiText-2's published 33,278):

* ``min_count``: word types seen fewer than this many times in train are dropped;
* ``max_vocab``: at most this many types are kept, ``<eos>`` and ``<unk>`` included: the
  ``max_vocab - 2`` most frequent words besides them.

A dropped word becomes ``<unk>`` everywhere, and its train count is added to ``<unk>``'s: the
counts stay the histogram of the train ids, which the trees and the adaptive head are built
from. A token is *out of vocabulary* (OOV) when it is mapped to ``<unk>`` because its word has
no id; a literal ``<unk>`` in the text (WikiText has many) is not OOV.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.bundle import EOS, UNK

IdArray = npt.NDArray[np.int64]
Units = Sequence[Sequence[str]]
"""Sentence units: the tokens of each, without its ``<eos>``."""
SPECIAL = frozenset({EOS, UNK})
MIN_VOCAB = 2
"""``<eos>`` and ``<unk>``: the smallest vocabulary a model can be given."""


@dataclass(frozen=True)
class Vocabulary:
    words: list[str]
    """``words[i]`` is id ``i``."""
    counts: IdArray
    """Train count of every id, ``(V,)`` int64, with dropped words' counts in ``<unk>``'s."""

    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}


def count_words(units: Iterable[Sequence[str]]) -> Counter[str]:
    """Token counts, in order of first appearance (``<eos>`` not counted)."""
    counter: Counter[str] = Counter()
    for tokens in units:
        counter.update(tokens)
    return counter


def word_types(counter: Counter[str]) -> int:
    """Distinct words besides ``<eos>`` and ``<unk>``: what a model has to tell apart."""
    return len(counter) - sum(word in counter for word in SPECIAL)


def build_vocabulary(
    units: Units, *, max_vocab: int | None = None, min_count: int = 1
) -> Vocabulary:
    """The vocabulary of the training units under the two limits (see the module docstring)."""
    return vocabulary_of_counts(
        count_words(units), len(units), max_vocab=max_vocab, min_count=min_count
    )


def vocabulary_of_counts(
    word_counts: Counter[str], units: int, *, max_vocab: int | None = None, min_count: int = 1
) -> Vocabulary:
    """:func:`build_vocabulary` of train units counted already (a corpus streamed from disk):
    ``word_counts`` as :func:`count_words` counts them, in order of first appearance (the order
    breaks ties), and how many ``units`` there were (one ``<eos>`` each)."""
    if max_vocab is not None and max_vocab < MIN_VOCAB:
        raise ValueError(f"max_vocab must be at least {MIN_VOCAB}, got {max_vocab}")
    # A copy, in the same order: the caller's counts stay as they were.
    counter = Counter(word_counts)
    counter[EOS] += units
    counter[UNK] += 0  # present even when train has no unknown words
    # Counter keeps first-insertion order and sorted() is stable: ties stay in order of appearance.
    ranked = sorted(counter, key=lambda word: -counter[word])
    kept = [word for word in ranked if word in SPECIAL or counter[word] >= min_count]
    if max_vocab is not None:
        top = set([word for word in kept if word not in SPECIAL][: max_vocab - len(SPECIAL)])
        kept = [word for word in kept if word in SPECIAL or word in top]
    dropped = set(ranked).difference(kept)
    counter[UNK] += sum(counter[word] for word in dropped)
    # <unk> may have risen past other words; re-rank, keeping the order of ties.
    words = sorted(kept, key=lambda word: -counter[word])
    return Vocabulary(words, np.array([counter[word] for word in words], dtype=np.int64))


def encode(units: Units, index: dict[str, int], limit: int | None = None) -> tuple[IdArray, int]:
    """Token ids with an ``<eos>`` after each unit, cut to the first ``limit``; and how many of
    them are out of vocabulary."""
    missing = -1  # OOV tokens are marked here and counted afterwards, in numpy
    ids = np.array(
        [index.get(token, missing) for tokens in units for token in (*tokens, EOS)],
        dtype=np.int64,
    )[:limit]
    oov = ids == missing
    ids[oov] = index[UNK]
    return ids, int(oov.sum())
