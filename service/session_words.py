"""Words a session typed that the vocabulary lacks, offered back to it: a name typed once
completes the second time.

The model gives all words outside its vocabulary one shared probability, ``P(<unk> | context)``.
A session's word list shares that mass out: a word seen ``c`` times among the ``n`` unknown-word
occurrences the session typed gets ``P(<unk> | context) * c / (n + 1)``; the ``+ 1`` keeps a
share for unknown words it has not typed yet. So the session words never take more than the
model assigns to unknown words, and vocabulary words keep their own probabilities.

Counts are the most occurrences seen in any one text of the session (a text is re-read on every
keystroke, so counting each read would inflate them); at most :data:`MAX_WORDS` words are kept,
the least recently typed dropped first. They live and expire with the session.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterable

MAX_WORDS = 256
"""Words kept per session (about 20 KiB at most)."""

MAX_WORD_CHARS = 40
"""Longer unknown tokens (pasted URLs, hashes) are not offered back."""


class SessionWords:
    """The unknown words of one session with their counts (not thread-safe: one per session)."""

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._folded: dict[str, str] = {}  # word -> casefold(word), for completion

    def __len__(self) -> int:
        return len(self._counts)

    def update(self, unknown_tokens: Iterable[str]) -> None:
        """Merge the unknown tokens of one text (every occurrence, in order)."""
        for word, count in Counter(unknown_tokens).items():
            if len(word) > MAX_WORD_CHARS or not any(c.isalnum() for c in word):
                continue
            self._counts[word] = max(count, self._counts.get(word, 0))
            self._counts.move_to_end(word)
            self._folded.setdefault(word, word.casefold())
        while len(self._counts) > MAX_WORDS:
            del self._folded[self._counts.popitem(last=False)[0]]

    def matching(self, prefix: str) -> list[tuple[str, float]]:
        """``(word, log share of P(<unk>))`` of the words that complete ``prefix``:
        case-sensitively after a typed capital, else ignoring case (as :mod:`service.policy`)."""
        if not self._counts:
            return []
        total = sum(self._counts.values()) + 1
        if prefix[:1].isupper():
            found = [(w, c) for w, c in self._counts.items() if w.startswith(prefix)]
        else:
            key, folded = prefix.casefold(), self._folded
            found = [(w, c) for w, c in self._counts.items() if folded[w].startswith(key)]
        return [(word, math.log(count / total)) for word, count in found]
