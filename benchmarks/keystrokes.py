"""Keystroke savings: how many key presses suggestions save a person typing a text.

One simulator drives every backend (nextword in-process on a bundle, and Presage, Debian's
n-gram predictive-text engine, through its C API: benchmarks/presage_backend.py), so the
figures compare like with like. The typing model, exactly:

* **Reference text.** Each entry (a sentence or a short text) is split on spaces into units;
  a unit is ``lead + word + tail``: ``lead`` the punctuation before the word (``"`` ``(``),
  ``word`` letters and digits with inner ``' - . ,`` (``don't``, ``well-known``, ``1,000``,
  ``U.S``), ``tail`` the punctuation after it (``,`` ``.`` ``'``). WikiText-2 test sentences
  are shown as a person would type them (:func:`service.text.detokenize` of the corpus tokens).
* **Keys.** Every character of the entry and one space after every unit (the last one stands
  for the key that sends the text) is a key a person without suggestions presses.
* **Typing a unit.** Its lead is typed. Then, before each letter of the word (the first one
  included), the backend is asked for ``k`` suggestions given the entry typed so far; if the
  word is among them (equal, case included), picking it costs one key and inserts the word and
  a space; else the next letter is typed (one key). The tail is typed; the space costs a key
  unless a pick inserted it and there is no tail (a keyboard drops its auto-space before
  punctuation, so a tail costs its own characters and the space).
* **KSR** = 1 - keys pressed / keys without suggestions. ``--case-insensitive`` (a diagnostic
  for Presage, which returns lowercase words) accepts a suggestion equal up to case.

Reported per backend: KSR, next-word top-1/top-k at word starts (before the first letter),
completion hit rate by letters typed, the share of wasted slots (punctuation, clitic
fragments such as ``'s``, a word already shown for the same word, empty slots) and per-call
latency (in-process for nextword: no HTTP). Entries are sampled with ``--seed``.

    python benchmarks/keystrokes.py --bundle bundles/default --data $NEXTWORD_DATA \\
        --presage --text /usr/share/games/fortunes/fortunes --text-format fortune
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.runinfo import run_info, write_result  # noqa: E402  (a script)
from service.text import detokenize, normalise  # noqa: E402

_UNIT = re.compile(r"(?P<lead>[^\w]*)(?P<word>\w+(?:['\-.,]\w+)*)?(?P<tail>.*)", re.DOTALL)
_SENTENCE_END = frozenset({".", "!", "?"})
LETTER_BUCKETS = 5
"""Completion hit rates are reported for 0, 1, ..., 4 and 5+ letters typed."""


# -- the reference texts ---------------------------------------------------------------------


def wikitext_sentences(data: Path, split: str = "test") -> list[str]:
    """Sentences of a WikiText-2 split as typed text: headings dropped, and sentences with
    ``<unk>`` (a word nobody can type) or under 4 tokens skipped."""
    sentences: list[str] = []
    for line in (data / f"{split}.txt").read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if not tokens or tokens[0] == "=":
            continue
        start = 0
        for i, token in enumerate(tokens):
            if token in _SENTENCE_END or i == len(tokens) - 1:
                sentence = tokens[start : i + 1]
                start = i + 1
                if len(sentence) >= 4 and "<unk>" not in sentence:
                    sentences.append(detokenize(sentence))
    return sentences


def text_entries(path: Path, text_format: str, max_chars: int = 300) -> list[str]:
    """Entries of a plain-text file: one per line (``lines``), per blank-line paragraph
    (``paragraphs``) or per ``%``-separated fortune cookie (``fortune``); whitespace collapsed,
    entries longer than ``max_chars`` or with attribution lines (``-- Name``) skipped."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if text_format == "lines":
        pieces = raw.splitlines()
    elif text_format == "paragraphs":
        pieces = re.split(r"\n\s*\n", raw)
    elif text_format == "fortune":
        pieces = re.split(r"^%$", raw, flags=re.MULTILINE)
    else:
        raise ValueError(f"unknown text format {text_format!r}")
    entries = []
    for piece in pieces:
        if re.search(r"^\s*--", piece, flags=re.MULTILINE):
            continue
        entry = normalise(piece)
        if entry and len(entry) <= max_chars and any(c.isalpha() for c in entry):
            entries.append(entry)
    return entries


def sample(entries: Sequence[str], n: int, seed: int) -> list[str]:
    if n <= 0 or n >= len(entries):
        return list(entries)
    return random.Random(seed).sample(list(entries), n)


@dataclass(frozen=True)
class Unit:
    lead: str
    word: str
    tail: str

    @property
    def keys(self) -> int:
        """Keys without suggestions: its characters and the space after it."""
        return len(self.lead) + len(self.word) + len(self.tail) + 1


def units(entry: str) -> list[Unit]:
    found = []
    for piece in entry.split(" "):
        match = _UNIT.fullmatch(piece)
        assert match is not None  # the pattern matches any string
        found.append(Unit(match["lead"], match["word"] or "", match["tail"]))
    return found


# -- backends --------------------------------------------------------------------------------


class Backend(Protocol):
    name: str

    def start_entry(self) -> None:
        """A new text begins (what the backend learnt from earlier texts of the run stays)."""

    def suggest(self, typed: str, k: int) -> list[str]:
        """Up to ``k`` whole words for the word being typed at the end of ``typed`` (the next
        word when ``typed`` is empty or ends in a space)."""


class NextwordBackend:
    """The serving predictor in-process (no HTTP). One ``session_id`` per run over a corpus, as
    Presage keeps one engine (and what it learns) per run: each entry is a new text of the same
    user, so its encoder state starts afresh while the session's memory stays."""

    def __init__(self, bundle: Path, name: str = "nextword", **settings: Any) -> None:
        from service.metrics import Metrics
        from service.runtime import build_runtime
        from service.settings import Settings

        self.name = name
        self.runtime = build_runtime(Settings(bundle=bundle, **settings), Metrics())
        self.predictor = self.runtime.predictor
        self.session = uuid.uuid4().hex
        self.options: dict[str, Any] = {}

    def new_session(self) -> None:
        self.session = uuid.uuid4().hex

    def start_entry(self) -> None:
        pass

    def suggest(self, typed: str, k: int) -> list[str]:
        result = self.predictor.suggest(typed, k=k, session_id=self.session, **self.options)
        # A suggestion replaces the partly typed word's last token ("'" of "don'", "kn" of
        # "well-kn"); the whole word is what was typed before that token plus the suggestion.
        word = typed.rsplit(" ", 1)[-1]
        stem = word[: len(word) - len(result.partial_word)] if result.partial_word else ""
        return [stem + s.text for s in result.suggestions]

    def close(self) -> None:
        self.runtime.batcher.stop()
        self.runtime.executor.shutdown()


class PresageBackend:
    """Presage on an n-gram database built from the same training text (a fresh user database
    per run, so its learning starts empty as for a new user)."""

    def __init__(self, db: Path, k: int, user_dir: Path) -> None:
        from benchmarks.presage_backend import Presage

        self.name = "presage"
        self.presage = Presage(db, suggestions=k, user_db_dir=user_dir)

    def start_entry(self) -> None:
        pass

    def suggest(self, typed: str, k: int) -> list[str]:
        return self.presage.predict(typed)[:k]

    def close(self) -> None:
        self.presage.close()


# -- the simulator ---------------------------------------------------------------------------


@dataclass
class Tally:
    """What one backend did over a corpus."""

    keys: int = 0
    keys_without: int = 0
    word_starts: int = 0
    top1: int = 0
    topk: int = 0
    calls_by_letters: list[int] = field(default_factory=lambda: [0] * (LETTER_BUCKETS + 1))
    hits_by_letters: list[int] = field(default_factory=lambda: [0] * (LETTER_BUCKETS + 1))
    slots: int = 0
    punctuation: int = 0
    fragments: int = 0
    repeats: int = 0
    empty: int = 0
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ms = np.array(self.seconds) * 1e3
        rates = zip(self.hits_by_letters, self.calls_by_letters, strict=True)
        share = (lambda n: round(n / self.slots, 4)) if self.slots else (lambda n: 0.0)
        return {
            "ksr": round(1 - self.keys / self.keys_without, 4),
            "keys": self.keys,
            "keys_without_suggestions": self.keys_without,
            "next_word_top1": round(self.top1 / max(self.word_starts, 1), 4),
            "next_word_topk": round(self.topk / max(self.word_starts, 1), 4),
            "completion_hit_rate_by_letters": {
                (f"{i}+" if i == LETTER_BUCKETS else str(i)): round(h / c, 4) if c else None
                for i, (h, c) in enumerate(rates)
            },
            "wasted_slots": {
                "punctuation": share(self.punctuation),
                "fragments": share(self.fragments),
                "repeats": share(self.repeats),
                "empty": share(self.empty),
            },
            "calls": len(self.seconds),
            "latency_ms": {
                "p50": round(float(np.percentile(ms, 50)), 4),
                "p99": round(float(np.percentile(ms, 99)), 4),
            },
        }


def type_entry(
    backend: Backend, entry: str, k: int, tally: Tally, same: Callable[[str, str], bool]
) -> None:
    """Type one entry under the typing model of the module docstring, counting into ``tally``."""
    backend.start_entry()
    typed = ""
    for unit in units(entry):
        tally.keys_without += unit.keys
        tally.keys += len(unit.lead)
        typed += unit.lead
        picked = False
        shown: set[str] = set()
        for i in range(len(unit.word)):
            started = time.perf_counter()
            offered = backend.suggest(typed + unit.word[:i], k)
            tally.seconds.append(time.perf_counter() - started)
            hit = any(same(s, unit.word) for s in offered)
            count_slots(tally, offered, shown, k)
            bucket = min(i, LETTER_BUCKETS)
            tally.calls_by_letters[bucket] += 1
            tally.hits_by_letters[bucket] += hit
            if i == 0:
                tally.word_starts += 1
                tally.top1 += bool(offered) and same(offered[0], unit.word)
                tally.topk += hit
            tally.keys += 1  # the pick, or the letter
            if hit:
                picked = True
                break
        tally.keys += len(unit.tail) + (0 if picked and not unit.tail else 1)
        typed += unit.word + unit.tail + " "


def count_slots(tally: Tally, offered: Sequence[str], shown: set[str], k: int) -> None:
    tally.slots += k
    tally.empty += k - len(offered)
    for word in offered:
        tally.punctuation += not any(c.isalnum() for c in word)
        tally.fragments += word[:1] == "'" and word[1:2].isalpha()
        tally.repeats += word in shown
    shown.update(offered)


def simulate(
    backend: Backend, entries: Sequence[str], k: int, case_insensitive: bool = False
) -> dict[str, Any]:
    tally = Tally()
    same = (lambda a, b: a.casefold() == b.casefold()) if case_insensitive else str.__eq__
    for entry in entries:
        type_entry(backend, entry, k, tally, same)
    return tally.summary()


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A nextword configuration measured beside the default (an ablation row)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("nextword"),
    Variant("reoffer passed-over words", options={"reoffer": True}),
    Variant("no capital penalty", settings={"capital_penalty": 1.0}),
    Variant("capital penalty 16", settings={"capital_penalty": 16.0}),
    Variant("punctuation in word slots", options={"include_punctuation": True}),
    Variant("no contractions", settings={"contractions": False}),
    Variant("no session words", settings={"session_words": False}),
    Variant("no session cache", settings={"cache_size": 0}),
    Variant(
        "policy off (fragments still banned)",
        settings={
            "capital_penalty": 1.0,
            "contractions": False,
            "session_words": False,
            "cache_size": 0,
        },
        options={"reoffer": True, "include_punctuation": True},
    ),
)


def corpora(args: argparse.Namespace) -> Iterator[tuple[str, list[str]]]:
    data = Path(args.data) if args.data else None
    if data is not None:
        yield "wikitext-2 test", sample(wikitext_sentences(data), args.sentences, args.seed)
    for path in args.text:
        entries = text_entries(Path(path), args.text_format)
        yield str(path), sample(entries, args.entries, args.seed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    variants = VARIANTS if args.ablations else VARIANTS[:1]
    texts = list(corpora(args))
    for variant in variants:
        backend = NextwordBackend(args.bundle, variant.name, **variant.settings)
        backend.options = variant.options
        try:
            for corpus, entries in texts:
                print(f"{variant.name} on {corpus} ({len(entries)} entries)", flush=True)
                row = results.setdefault(corpus, {"entries": len(entries)})
                backend.new_session()
                row[variant.name] = simulate(backend, entries, args.k)
                if args.case_insensitive and variant is variants[0]:
                    backend.new_session()
                    row[f"{variant.name} (case-insensitive)"] = simulate(
                        backend, entries, args.k, case_insensitive=True
                    )
        finally:
            backend.close()
    if args.presage:
        results = run_presage(args, texts, results)
    return results


def run_presage(
    args: argparse.Namespace, texts: list[tuple[str, list[str]]], results: dict[str, Any]
) -> dict[str, Any]:
    from benchmarks.presage_backend import build_database

    with tempfile.TemporaryDirectory() as scratch:
        db = args.presage_db or Path(scratch) / "wikitext2_train.db"
        if not db.exists():
            print(f"building Presage's n-gram database {db} ...", flush=True)
            build_database(presage_training_lines(Path(args.data)), db)
        for case_insensitive in (False, True) if args.case_insensitive else (False,):
            for corpus, entries in texts:
                user_dir = Path(tempfile.mkdtemp(dir=scratch))
                presage = PresageBackend(db, args.k, user_dir)
                try:
                    print(f"presage on {corpus}", flush=True)
                    name = "presage (case-insensitive)" if case_insensitive else "presage"
                    results[corpus][name] = simulate(presage, entries, args.k, case_insensitive)
                finally:
                    presage.close()
    return results


def presage_training_lines(data: Path) -> Iterator[str]:
    """WikiText-2 train as typed text (what nextword was trained on; ``<unk>`` dropped)."""
    for line in (data / "train.txt").read_text(encoding="utf-8").splitlines():
        tokens = [t for t in line.split() if t != "<unk>"]
        if tokens:
            yield detokenize(tokens)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=ROOT / "bundles/default", help="the nextword bundle measured"
    )
    parser.add_argument("--data", default=None, help="WikiText-2 dir (else $NEXTWORD_DATA)")
    parser.add_argument("--sentences", type=int, default=300, help="WikiText-2 test sentences")
    parser.add_argument(
        "--text", action="append", default=[], help="an out-of-domain text file (repeatable)"
    )
    parser.add_argument(
        "--text-format",
        choices=("lines", "paragraphs", "fortune"),
        default="lines",
        help="how --text splits into entries",
    )
    parser.add_argument("--entries", type=int, default=300, help="entries sampled per --text")
    parser.add_argument("-k", type=int, default=3, help="suggestions shown per keystroke")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--presage", action="store_true", help="run Presage side by side")
    parser.add_argument("--presage-db", type=Path, default=None, help="reuse this n-gram db")
    parser.add_argument(
        "--case-insensitive", action="store_true", help="also report case-insensitive KSR"
    )
    parser.add_argument("--ablations", action="store_true", help="also run VARIANTS")
    parser.add_argument("--name", default="keystrokes", help="benchmarks/results/NAME.json")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = os.environ.get("NEXTWORD_DATA")
    if args.data is None and not args.text:
        parser.error("nothing to type: pass --data (or set NEXTWORD_DATA) and/or --text")
    if args.presage and args.data is None:
        parser.error("--presage trains Presage on WikiText-2 train: pass --data")
    return args


def main() -> None:
    args = parse_args()
    info = run_info()
    results = run(args)
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    payload = {
        **info,
        "bundle": {
            "path": str(args.bundle),
            "name": manifest["name"],
            "created": manifest.get("created"),
            "test_ppl": manifest.get("metrics", {}).get("test", {}).get("perplexity"),
        },
        "presage": "Debian presage 0.9.1, default profile, n-gram db by text2ngram (n = 1..3) "
        "from WikiText-2 train as typed text"
        if args.presage
        else None,
        "k": args.k,
        "seed": args.seed,
        "typing_model": __doc__.split("\n\n")[1],
        "results": results,
    }
    path = write_result(args.name, payload)
    for corpus, row in results.items():
        print(f"\n{corpus} ({row['entries']} entries)")
        for name, summary in row.items():
            if isinstance(summary, dict):
                print(
                    f"  {name:40s} KSR {summary['ksr']:.3f}  top1 {summary['next_word_top1']:.3f}"
                    f"  top{args.k} {summary['next_word_topk']:.3f}"
                    f"  p99 {summary['latency_ms']['p99']:.2f} ms"
                )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
