"""The workload: what simulated typists type, and what a correct answer to them looks like.

Held-out WikiText-2 text is turned back into text as a person types it (``well @-@ known`` ->
``well-known``, punctuation attached); sentences with ``<unk>`` are skipped, so every word typed
is a vocabulary word and every prefix of it has at least one completion. So are sentences with
a word the corpus starts with an apostrophe other than a clitic (``P 'ohang``, ``O 'Brien``):
typed after a space, that apostrophe reads as an opening quote, and the letters after it are a
prefix of no vocabulary word. The checks return what
is wrong with a response body, or None. Kept apart from the locustfile so it can be tested
without importing locust (which monkey-patches the standard library).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MIN_WORDS, MAX_WORDS = 4, 30
CLITICS = frozenset({"'s", "'t", "n't", "'re", "'ve", "'ll", "'d", "'m"})

_MARKER = re.compile(r" @([-,.])@ ")
_SPACE_BEFORE = re.compile(r" (?=[,.;:!?)\]%]|'s\b|'t\b|n't\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)")
_SPACE_AFTER = re.compile(r"(?<=[(\[$]) ")
_QUOTED = re.compile(r'" (.*?) "')


def detokenize(line: str) -> str:
    """WikiText tokens back to typed text (``well @-@ known`` -> ``well-known``)."""
    text = _SPACE_AFTER.sub("", _SPACE_BEFORE.sub("", _MARKER.sub(r"\1", f" {line.strip()} ")))
    return _QUOTED.sub(r'"\1"', text).strip()


def sentences(lines: Iterable[str]) -> Iterator[str]:
    """Typable sentences: headings, ``<unk>`` and very short or long sentences are skipped."""
    for line in lines:
        if not line.strip() or line.lstrip().startswith("="):
            continue
        for sentence in re.split(r"(?<= \.) ", line.strip()):
            words = sentence.split()
            typable = "<unk>" not in words and not any(map(_apostrophe_word, words))
            if MIN_WORDS <= len(words) <= MAX_WORDS and typable:
                yield detokenize(sentence)


def _apostrophe_word(token: str) -> bool:
    return token.startswith("'") and token[1:2].isalpha() and token.lower() not in CLITICS


@functools.cache
def load_sentences(path: str) -> tuple[str, ...]:
    """The sentences of a text file, read once per process."""
    with open(path, encoding="utf-8") as handle:
        found = tuple(sentences(handle))
    if not found:
        raise SystemExit(f"loadtest: no usable sentences in {path}")
    return found


def default_text() -> str:
    """The WikiText-2 test split, from ``$NEXTWORD_DATA``."""
    data = os.environ.get("NEXTWORD_DATA")
    if not data:
        raise SystemExit("loadtest: give --text FILE or set NEXTWORD_DATA (WikiText-2 directory)")
    return str(Path(data) / "test.txt")


def check_suggestions(body: dict[str, Any], k: int, max_words: int) -> str | None:
    """What is wrong with a /v1/suggest body, or None."""
    items = body.get("suggestions")
    if not isinstance(items, list) or not items:
        return "no suggestions"
    if len(items) > k:
        return f"{len(items)} suggestions for k={k}"
    partial = str(body.get("partial_word", "")).casefold()
    probs = [item.get("prob", -1.0) for item in items]
    # Phrases come by probability; single words by the keyboard ranking (service/policy.py),
    # which may put a lowercase word before a more probable capitalised one.
    ranked = max_words == 1 or probs == sorted(probs, reverse=True)
    if any(not 0.0 < p <= 1.0 for p in probs) or not ranked:
        return f"probabilities {probs}"
    for item in items:
        text = str(item.get("text", ""))
        if not text.strip() or len(text.split()) > max_words:
            return f"suggestion {text!r}"
        if partial and not text.casefold().startswith(partial):
            return f"suggestion {text!r} does not complete {partial!r}"
    return None


def check_scores(body: dict[str, Any], candidates: list[str]) -> str | None:
    """What is wrong with a /v1/score body, or None."""
    rows = body.get("scores")
    if not isinstance(rows, list) or [r.get("candidate") for r in rows] != candidates:
        return "scores do not match the candidates"
    for row in rows:
        logprob = row.get("logprob")
        if not isinstance(logprob, float | int) or not math.isfinite(logprob) or logprob > 1e-6:
            return f"logprob {logprob!r} for {row.get('candidate')!r}"
    return None


def server_timing_ms(header: str | None) -> float:
    """The server's own time for a request, from its ``Server-Timing: app;dur=MS`` header
    (``service/middleware.py``); NaN without one."""
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "app" and params.startswith("dur="):
            try:
                return float(params[4:])
            except ValueError:
                return math.nan
    return math.nan
