"""Cached encoder states, so a keystroke only encodes the tokens typed since the last one.

Two caches, both holding :class:`EncodedText` (the state after reading some token ids):

* :class:`SessionCache`, by the client's ``session_id``: its last request's context;
* :class:`ContextCache`, shared, by the token ids themselves, for requests without a session:
  every keystroke inside a word has the same context ids (the partly typed word is not
  encoded), and a new word extends the previous context by a token or two.

An entry keeps the token ids its state was computed from; a lookup only reuses it when the new
ids extend those exactly, so a changed earlier part of the text falls back to a full encode and
a state never meets tokens it was not computed from.  Reuse changes no result: the state after
ids ``a + b`` is the state after ``a`` run on ``b``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.adaptation import SessionAdaptation
from service.session_words import SessionWords

Tokens = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EncodedText:
    """The encoder after reading ``tokens``: its ``state (L, 1, S)`` and last ``hidden (d,)``."""

    tokens: Tokens
    state: Floats
    hidden: Floats
    clitics: dict[int, npt.NDArray[np.float64]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """``log P(clitic | tokens, host)`` by host (:mod:`service.forms`), filled as requests need
    them: every keystroke inside a word reads the same context, so it pays for a host once."""


@dataclass(frozen=True)
class Shown:
    """What a session was shown for the word being typed (see :mod:`service.policy`).

    ``context`` holds the token ids before the word, ``prefix`` its typed letters at the last
    request, ``words`` the words shown then (token ids, or the text of a session word) and
    ``held`` those it held back.
    """

    context: Tokens
    prefix: str
    words: frozenset[tuple[int, ...] | str]
    held: frozenset[tuple[int, ...] | str]


@dataclass
class SessionMemory:
    """What a session keeps besides its encoder state; used by one request at a time (a
    client types in one place), so it is not locked."""

    shown: Shown | None = None
    words: SessionWords = field(default_factory=SessionWords)
    adaptation: SessionAdaptation | None = None
    """The continuous cache (created on the session's first text, when it is on)."""


@dataclass(frozen=True)
class Resume:
    """Where to continue encoding: from ``known`` (or from scratch when None), with ``todo`` ids."""

    known: EncodedText | None
    todo: Tokens


class SessionCache:
    """LRU of :class:`EncodedText` by session id, with a size cap and a time to live; each
    session also has a :class:`SessionMemory`, dropped with it."""

    def __init__(
        self, max_size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_size = max_size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, EncodedText]] = OrderedDict()
        # Same keys as _entries (added and dropped with them), read without renewal.
        self._memory: dict[str, SessionMemory] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def resume(self, session_id: str | None, tokens: Tokens) -> Resume:
        """How to encode ``tokens`` for this session: reuse its state when ``tokens`` extend it."""
        known = self._get(session_id) if session_id is not None else None
        if known is not None and _extends(tokens, known.tokens):
            self.hits += 1
            return Resume(known, tokens[len(known.tokens) :])
        if session_id is not None:
            self.misses += 1
        return Resume(None, tokens)

    def put(self, session_id: str, encoded: EncodedText) -> None:
        if self.max_size == 0:
            return
        now = self._clock()
        with self._lock:
            self._entries[session_id] = (now + self.ttl_s, encoded)
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.max_size:
                self._memory.pop(self._entries.popitem(last=False)[0], None)
            self._drop_expired(now)

    def memory(self, session_id: str) -> SessionMemory | None:
        """The session's memory (None for a session not in the cache: cap 0, or expired)."""
        with self._lock:
            item = self._entries.get(session_id)
            if item is None or item[0] <= self._clock():
                return None
            return self._memory.setdefault(session_id, SessionMemory())

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)
            self._memory.pop(session_id, None)

    def _get(self, session_id: str) -> EncodedText | None:
        now = self._clock()
        with self._lock:
            item = self._entries.get(session_id)
            if item is None:
                return None
            expires, encoded = item
            if expires <= now:
                del self._entries[session_id]
                self._memory.pop(session_id, None)
                return None
            # A use renews the lease, which keeps the order by expiry that _drop_expired needs.
            self._entries[session_id] = (now + self.ttl_s, encoded)
            self._entries.move_to_end(session_id)
            return encoded

    def _drop_expired(self, now: float) -> None:
        # Entries are in last-use order and share one TTL, so expired ones sit at the front.
        while self._entries:
            first = next(iter(self._entries.values()))
            if first[0] > now:
                break
            self._memory.pop(self._entries.popitem(last=False)[0], None)


class ContextCache:
    """LRU of :class:`EncodedText` keyed by the exact token ids, shared by all clients.

    :meth:`resume` finds the longest cached context among the ids themselves and the ids less
    their last :data:`LOOKBACK` tokens (what a typed word or a word plus punctuation adds since
    the previous keystroke), so a client typing without a ``session_id`` encodes only what it
    typed since its last request, like a client with one.
    """

    LOOKBACK = 3

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._entries: OrderedDict[bytes, EncodedText] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def resume(self, tokens: Tokens) -> Resume:
        if self.max_size > 0:
            with self._lock:
                for cut in range(min(self.LOOKBACK, len(tokens) - 1) + 1):
                    key = tokens[: len(tokens) - cut].tobytes()
                    known = self._entries.get(key)
                    if known is not None:
                        self._entries.move_to_end(key)
                        self.hits += 1
                        return Resume(known, tokens[len(tokens) - cut :])
        self.misses += 1
        return Resume(None, tokens)

    def put(self, encoded: EncodedText) -> None:
        if self.max_size == 0:
            return
        with self._lock:
            key = encoded.tokens.tobytes()
            self._entries[key] = encoded
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)


def _extends(tokens: Tokens, prefix: Tokens) -> bool:
    # Bytes, not np.array_equal: both are int64 ids, and this is ~20x cheaper (~0.5 µs).
    n = len(prefix)
    return len(tokens) >= n and tokens[:n].tobytes() == prefix.tobytes()
