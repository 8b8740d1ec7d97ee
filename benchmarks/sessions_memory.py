"""Memory under many sessions and many distinct texts: the server's resident size stays within
the documented bounds of ``SESSION_CACHE_SIZE`` and ``CONTEXT_CACHE_SIZE``.

One server (``python -m service serve``, default settings unless overridden), its RSS sampled
every 5 s (psutil), through four phases of requests from ``--clients`` processes with
``--connections`` keep-alive connections each (closed loop, :mod:`benchmarks.loadclient`):

1. ``sessions``: ``--sessions`` (1,000,000) distinct ``session_id``s, one keystroke each: the
   first 4-9 words of a held-out sentence and two letters of the next (a full encode, the
   session's state and a continuous cache with a few states);
2. ``contexts``: ``--contexts`` (1,000,000) distinct texts without ``session_id`` (10-word
   windows of the training text, detokenized): one shared context-cache entry each;
3. ``full sessions``: 3 x SESSION_CACHE_SIZE sessions that each read ~9,000 characters of
   validation text: a full continuous cache (990 states) per session, the documented worst
   case; RSS after the first SESSION_CACHE_SIZE and at the end shows the plateau;
4. ``long contexts``: 2 x CONTEXT_CACHE_SIZE distinct ~2,000-character texts without session.

Then, in this process, the bytes each kind of entry takes are measured exactly (tracemalloc: the
growth of live allocations while the same texts are read again under new sessions, with the
tokenizer's caches already warm), and the RSS growth of each phase is checked against
``size x bytes per entry``. Writes ``benchmarks/results/sessions_memory.json`` (date, machine,
commit, bundle, settings, per-phase RSS and rates) and ``sessions_memory.png`` (RSS over time).

    python benchmarks/sessions_memory.py --bundle bundles/default --data $NEXTWORD_DATA
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.loadclient import (  # noqa: E402  (a script: the repo is not installed)
    Connection,
    RssSampler,
    add_bundle_args,
    install_uvloop,
    request_bytes,
    rss_mib,
    save_figure,
    serve,
)
from benchmarks.runinfo import RESULTS, run_info, write_result  # noqa: E402

FULL_SESSION_CHARS = 9000  # ~1,700 tokens: more than the 990 states of a full cache
LONG_CONTEXT_CHARS = 2000


# -- texts (built the same way in every process from the index) ---------------------------------


class Texts:
    """The texts of each phase by index, from the WikiText-2 files in ``data``."""

    def __init__(self, data: Path) -> None:
        from service.text import detokenize

        self.detokenize = detokenize
        self.sentences = _sentences(data)
        self.train = _words(data / "train.txt")
        self.valid = _words(data / "valid.txt")

    def session(self, i: int) -> str:
        words = self.sentences[i % len(self.sentences)].split()
        keep = min(len(words) - 1, 4 + (i // len(self.sentences) + i) % 6)
        return " ".join(words[:keep]) + " " + words[keep][:2]

    def context(self, i: int) -> str:
        at = (2 * i) % (len(self.train) - 10)
        return self.detokenize(self.train[at : at + 10]) + " "

    def long(self, words: list[str], i: int, chars: int, step: int) -> str:
        at = (step * i) % (len(words) - chars // 2)
        text = self.detokenize(words[at : at + chars // 2])[:chars]
        return text.rsplit(" ", 1)[0] + " "

    def full_session(self, i: int) -> str:
        return self.long(self.valid, i, FULL_SESSION_CHARS, 61)

    def long_context(self, i: int) -> str:
        return self.long(self.train, i, LONG_CONTEXT_CHARS, 211)


def _sentences(data: Path) -> list[str]:
    os.environ.setdefault("NEXTWORD_DATA", str(data))
    from loadtest.workload import load_sentences

    return list(load_sentences(str(data / "test.txt")))


def _words(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [w for line in lines if not line.lstrip().startswith("=") for w in line.split()]


def request_for(texts: Texts, phase: str, i: int, port: int) -> bytes:
    if phase == "sessions":
        body: dict[str, Any] = {"text": texts.session(i), "session_id": f"s{i:07d}"}
    elif phase == "contexts":
        body = {"text": texts.context(i)}
    elif phase == "full sessions":
        body = {"text": texts.full_session(i), "session_id": f"f{i:07d}"}
    else:
        body = {"text": texts.long_context(i)}
    return request_bytes("/v1/suggest", body, port)


# -- client processes ------------------------------------------------------------------------


def client_process(
    port: int, data: str, phase: str, indexes: range, connections: int, done: Any, errors: Any
) -> None:
    """Send one request per index of ``indexes`` over ``connections`` keep-alive connections."""
    install_uvloop()
    texts = Texts(Path(data))
    asyncio.run(_client(port, texts, phase, indexes, connections, done, errors))


async def _client(
    port: int, texts: Texts, phase: str, indexes: range, connections: int, done: Any, errors: Any
) -> None:
    todo = iter(indexes)

    async def worker() -> None:
        connection = await Connection.open(port)
        counted = failed = 0
        for i in todo:
            status, _ = await connection.send(request_for(texts, phase, i, port))
            if status != 200:
                failed += 1
                if connection.closed:
                    connection = await Connection.open(port)
            counted += 1
            if counted == 200:
                with done.get_lock():
                    done.value += counted
                counted = 0
        with done.get_lock():
            done.value += counted
        with errors.get_lock():
            errors.value += failed
        connection.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


def run_phase(
    args: argparse.Namespace, port: int, pid: int, phase: str, count: int, rss: RssSampler,
    marks: dict[int, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``count`` requests of ``phase`` split over the client processes; RSS at ``marks``
    (requests done -> MiB) besides the sampler's."""
    context = multiprocessing.get_context("spawn")
    done, errors = context.Value("q", 0), context.Value("q", 0)
    clients = 1 if phase.startswith(("full", "long")) else args.clients
    connections = 4 if phase.startswith(("full", "long")) else args.connections
    parts = [range(c, count, clients) for c in range(clients)]
    processes = [
        context.Process(
            target=client_process,
            args=(port, str(args.data), phase, part, connections, done, errors),
        )
        for part in parts
    ]
    start, rss_start = time.monotonic(), rss.sample()
    start_s = start - rss.start
    print(f"{phase}: {count:,} requests, RSS {rss_start:.0f} MiB", flush=True)
    for process in processes:
        process.start()
    pending = sorted(marks or {})
    at_marks: dict[str, float] = {}
    last_print = start
    while any(p.is_alive() for p in processes):
        time.sleep(0.2)
        while pending and done.value >= pending[0]:
            at_marks[str(pending.pop(0))] = rss.sample()
        if time.monotonic() - last_print > 30:
            last_print = time.monotonic()
            rate = done.value / (last_print - start)
            print(
                f"  {done.value:,} done, {rate:,.0f} req/s, RSS {rss_mib(pid):.0f} MiB", flush=True
            )
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a client process of {phase} exited with {process.exitcode}")
    seconds = time.monotonic() - start
    rss_end = rss.sample()
    window = [mib for t, mib in rss.samples if t >= start - rss.start]
    row = {
        "requests": done.value,
        "errors": errors.value,
        "start_s": start_s,
        "seconds": seconds,
        "requests_per_s": done.value / seconds,
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "rss_max_mib": max(window),
        "rss_at_requests_mib": at_marks,
        "client_processes": clients,
        "connections_per_process": connections,
    }
    print(
        f"  {done.value:,} in {seconds:.0f} s ({row['requests_per_s']:,.0f} req/s), "
        f"{errors.value} errors; RSS {rss_start:.0f} -> {rss_end:.0f} MiB "
        f"(max {row['rss_max_mib']:.0f})",
        flush=True,
    )
    return row


# -- exact accounting, in process ----------------------------------------------------------------


def entry_bytes(bundle: Path, data: Path, count: int = 100) -> dict[str, dict[str, float]]:
    """Bytes per cache entry of each kind, and what a new text adds to the tokenizer's caches
    (their 1,024 heads: the text before its last word), from live allocations (tracemalloc):
    each text is read once under a session that is then forgotten (what stays is the
    tokenizer's), then again under a new session, or without one (what stays is the entry)."""
    from service.metrics import Metrics
    from service.runtime import build_runtime
    from service.settings import Settings

    runtime = build_runtime(Settings(bundle=bundle), Metrics())
    predictor = runtime.predictor
    texts = Texts(data)

    def live() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    def measure(make: Callable[[int], str], n: int, sessions: bool) -> dict[str, float]:
        tracemalloc.start()
        try:
            start = live()
            for i in range(n):  # a session does not touch the shared context cache
                predictor.suggest(make(i), session_id=f"warm-{i}")
                predictor.sessions.forget(f"warm-{i}")
            warm = live()
            for i in range(n):
                predictor.suggest(make(i), session_id=f"m-{i}" if sessions else None)
            entries = live()
        finally:
            tracemalloc.stop()
        for i in range(n):
            predictor.sessions.forget(f"m-{i}")
        return {"entry": (entries - warm) / n, "tokenizer": (warm - start) / n}

    try:
        return {
            "session, keystroke": measure(texts.session, count, True),
            "session, full cache": measure(texts.full_session, count // 4, True),
            "context, 10 words": measure(texts.context, count, False),
            "context, long": measure(texts.long_context, count // 4, False),
            "tokenizer word": {"entry": word_bytes(), "tokenizer": 0.0},
        }
    finally:
        runtime.executor.shutdown(wait=True)
        runtime.batcher.stop()


def word_bytes(count: int = 20_000) -> float:
    """Bytes one word adds to the tokenizer's word cache (``service.text._tokenize_word``)."""
    from service import text

    cache = text._tokenize_word
    gc.collect()
    tracemalloc.start()
    try:
        size, start = cache.cache_info().currsize, tracemalloc.get_traced_memory()[0]
        for i in range(count):
            text.tokenize(f"w{i:05d}x")  # a new 7-letter word each
        gc.collect()
        grew = tracemalloc.get_traced_memory()[0] - start
        added = cache.cache_info().currsize - size
    finally:
        tracemalloc.stop()
    return grew / max(1, added)


# -- report ----------------------------------------------------------------------------------


def plot(samples: list[tuple[float, float]], phases: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([t / 60 for t, _ in samples], [m for _, m in samples], color="black")
    top = max(m for _, m in samples) * 1.05
    ax.set_ylim(0, top)
    for i, (name, row) in enumerate(phases.items()):
        start = row["start_s"]
        ax.axvspan(start / 60, (start + row["seconds"]) / 60, alpha=0.08, color=f"C{i}")
        ax.text(start / 60, top * (0.97 - 0.06 * i), f" {name}", va="top", fontsize=8)
    ax.set(
        xlabel="time (min)",
        ylabel="server RSS (MiB)",
        title="nextword RSS under distinct sessions and texts",
    )
    save_figure(fig, out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_bundle_args(parser)
    parser.add_argument("--sessions", type=int, default=1_000_000, help="distinct session ids")
    parser.add_argument(
        "--contexts", type=int, default=1_000_000, help="distinct texts, no session"
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=16, help="connections per process")
    parser.add_argument(
        "--session-cache-size", type=int, default=1024, help="the server's session LRU"
    )
    parser.add_argument(
        "--context-cache-size", type=int, default=4096, help="the server's context LRU"
    )
    parser.add_argument("--skip-full", action="store_true", help="no full-cache phases")
    parser.add_argument("--name", default="sessions_memory", help="results file name")
    parser.add_argument(
        "--recheck", action="store_true", help="the last run's checks again, bytes re-measured"
    )
    args = parser.parse_args()
    if not args.bundle or not args.data:
        parser.error("pass --bundle and --data (or set NEXTWORD_BUNDLE / NEXTWORD_DATA)")
    return args


def recheck(args: argparse.Namespace) -> int:
    """The last run's phases against bytes per entry measured again (no load)."""
    path = RESULTS / f"{args.name}.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    phases, samples = report["phases"], [tuple(pair) for pair in report["rss_samples"]]
    offset = samples[-1][0] - sum(row["seconds"] for row in phases.values())
    for row in phases.values():  # runs before start_s was recorded: phases back to back
        row.setdefault("start_s", offset)
        offset = row["start_s"] + row["seconds"]
    report["bytes_per_entry"] = per_entry = entry_bytes(args.bundle, args.data)
    report["checks"] = checks = bounds(args, report["rss_idle_mib"], phases, per_entry)
    for line in checks["lines"]:
        print(line)
    write_result(args.name, report)
    plot(samples, phases, RESULTS / f"{args.name}.png")  # type: ignore[arg-type]
    return 0 if checks["met"] else 1


def main() -> int:
    args = parse_args()
    if args.recheck:
        return recheck(args)
    info = run_info()
    settings = {
        "session_cache_size": args.session_cache_size,
        "context_cache_size": args.context_cache_size,
    }
    log = ROOT / "loadtest" / "reports" / args.name / "server.log"
    phases: dict[str, dict[str, Any]] = {}
    with serve(args.bundle, log, **settings) as server, RssSampler(server.pid) as rss:
        texts = Texts(args.data)
        warm = [request_bytes("/v1/suggest", {"text": "The game "}, server.port)] * 200
        # Long texts too: the encoder's working memory for them is kept by the process
        # whatever the number of sessions (onnxruntime's arena, the request threads' heaps).
        for j in range(4):
            long = {"text": texts.full_session(999_999 - j), "session_id": f"warm-{j}"}
            warm += [request_bytes("/v1/suggest", long, server.port)]
            long = {"text": texts.long_context(999_999 - j)}
            warm += [request_bytes("/v1/suggest", long, server.port)]

        async def warm_up() -> None:
            connection = await Connection.open(server.port)
            for raw in warm:
                await connection.send(raw)
            connection.close()

        asyncio.run(warm_up())
        idle = rss.sample()
        print(f"server ready, RSS {idle:.0f} MiB after warm-up (long texts included)", flush=True)
        plan = [("sessions", args.sessions, None), ("contexts", args.contexts, None)]
        if not args.skip_full:
            full, long = 3 * args.session_cache_size, 2 * args.context_cache_size
            plan += [
                ("full sessions", full, {args.session_cache_size: 0.0, full: 0.0}),
                ("long contexts", long, {args.context_cache_size: 0.0, long: 0.0}),
            ]
        for name, count, marks in plan:
            phases[name] = run_phase(args, server.port, server.pid, name, count, rss, marks)
        samples = list(rss.samples)
    print("measuring bytes per entry in process (tracemalloc) ...", flush=True)
    per_entry = entry_bytes(args.bundle, args.data)
    for name, value in per_entry.items():
        print(f"  {name}: {value['entry']:,.0f} bytes, tokenizer {value['tokenizer']:,.0f}")
    checks = bounds(args, idle, phases, per_entry)
    for line in checks["lines"]:
        print(line)
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    report = {
        "benchmark": "sessions_memory",
        **info,
        "bundle": {"path": str(args.bundle), "name": manifest["name"],
                   "hidden_size": manifest["hidden_size"], "vocab_size": manifest["vocab_size"]},
        "server_settings": settings,
        "client": f"{args.clients} processes x {args.connections} keep-alive connections "
        "(closed loop, raw HTTP/1.1 on asyncio; the full phases 1 x 4), same 2 cores",
        "rss_idle_mib": idle,
        "phases": phases,
        "bytes_per_entry": per_entry,
        "checks": checks,
        "rss_samples": [[round(t, 1), round(m, 1)] for t, m in samples],
    }  # fmt: skip
    path = write_result(args.name, report)
    plot(samples, phases, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")
    return 0 if checks["met"] else 1


HEADS = 1024
"""The tokenizer's cache of heads (``service.text._tokenize_words``): one per distinct text."""
WORDS = 1 << 16
"""The tokenizer's cache of words (``service.text._tokenize_word``)."""
FINAL_SLACK = 1.1
"""The final RSS growth may exceed the sum of the bounds by 10 %: glibc's heap after two
million entries came and went (fragmentation, arenas of the request threads)."""


def bounds(
    args: argparse.Namespace, idle: float, phases: dict[str, dict[str, Any]],
    per_entry: dict[str, dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    """Each phase's RSS growth against what its entries may hold: ``cache size x bytes per
    entry``, plus the tokenizer's caches (1,024 heads x what a text adds; 65,536 words, were
    the phase to fill them) and 16 MiB of slack (the allocator); the plateaus; and the final
    RSS against the idle RSS plus every cache full of the largest entries measured."""
    mib = 2**20
    lines, met, rows = [], True, {}
    kinds = {
        "sessions": ("session, keystroke", args.session_cache_size),
        "contexts": ("context, 10 words", args.context_cache_size),
        "full sessions": ("session, full cache", args.session_cache_size),
        "long contexts": ("context, long", args.context_cache_size),
    }
    for name, row in phases.items():
        kind, size = kinds[name]
        entries = size * per_entry[kind]["entry"] / mib
        heads = min(HEADS, row["requests"]) * max(0.0, per_entry[kind]["tokenizer"]) / mib
        words = WORDS * per_entry["tokenizer word"]["entry"] / mib  # if the phase fills it
        bound = entries + heads + words + 16.0
        grew = row["rss_end_mib"] - row["rss_start_mib"]
        ok = grew <= bound
        met &= ok
        rows[name] = {
            "rss_growth_mib": grew, "entries_bound_mib": entries, "tokenizer_heads_mib": heads,
            "tokenizer_words_mib": words, "bound_mib": bound, "met": ok,
        }  # fmt: skip
        lines.append(
            f"{name}: RSS grew {grew:.1f} MiB over {row['requests']:,} requests; bound "
            f"{size:,} x {per_entry[kind]['entry']:,.0f} B = {entries:.1f} MiB + heads "
            f"{heads:.1f} + words {words:.1f} + 16 MiB slack = {bound:.1f} MiB: "
            f"{'met' if ok else 'NOT met'}"
        )
        marks = row.get("rss_at_requests_mib") or {}
        if len(marks) == 2:
            first, last = (marks[key] for key in sorted(marks, key=int))
            rows[name]["plateau_mib"] = last - first
            lines.append(
                f"  plateau: RSS at {min(map(int, marks)):,} entries {first:.0f} MiB, at "
                f"{max(map(int, marks)):,} {last:.0f} MiB ({last - first:+.1f})"
            )
    final = list(phases.values())[-1]["rss_end_mib"]
    largest = {"session": 0.0, "context": 0.0, "tokenizer": 0.0}
    for kind, value in per_entry.items():
        group = kind.split(",")[0]
        if group in largest:
            largest[group] = max(largest[group], value["entry"])
        largest["tokenizer"] = max(largest["tokenizer"], value["tokenizer"])
    total = (
        idle
        + (
            args.session_cache_size * largest["session"]
            + args.context_cache_size * largest["context"]
            + HEADS * largest["tokenizer"]
            + WORDS * per_entry["tokenizer word"]["entry"]
        )
        / mib
    )
    ratio = (final - idle) / (total - idle)
    lines.append(
        f"final RSS {final:.0f} MiB: {final - idle:.0f} MiB over idle against {total - idle:.0f} "
        f"MiB with every cache full ({ratio:.2f}x; <= {FINAL_SLACK}x for the allocator): "
        f"{'met' if ratio <= FINAL_SLACK else 'NOT met'}"
    )
    met &= ratio <= FINAL_SLACK
    return {"phases": rows, "lines": lines, "met": met, "rss_idle_mib": idle,
            "rss_final_mib": final, "all_caches_full_bound_mib": total,
            "final_growth_over_bound": ratio}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
