"""Where the keystroke tail comes from under load: the server's time for each request split into
the predictor's stages and what lies outside them.

Starts ``python -m service serve`` (default settings) and offers it the load test's typing
traffic (:class:`benchmarks.loadclient.Keystrokes`: held-out sentences typed key by key with a
``session_id`` each, 20 keystrokes : 2 three-word phrases : 1 re-ranking) open-loop: ``--users``
keep-alive connections, each on its own Poisson schedule, ``--rate`` requests/s in all. For
every answer it records the client's latency, the server's own time (its ``Server-Timing``
header: from the request's arrival in the app to its response) and, for suggestions, the
predictor's ``timing_ms`` (tokenize / encode / decode / total). For each request kind it reports
percentiles and, for the slowest 1 % by server time, the mean of each stage and of the time
spent outside the predictor (body parsing, validation, the JSON answer, middleware).

``--pin`` puts the server on CPU 1 and this client on CPU 0 (``sched_setaffinity``; every server
thread, including those it starts later), as a deployment with dedicated cores would.

    python benchmarks/keystroke_tail.py --bundle bundles/default --data $NEXTWORD_DATA
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.loadclient import (  # noqa: E402  (a script: the repo is not installed)
    Connection,
    Keystrokes,
    add_bundle_args,
    install_uvloop,
    percentile,
    serve,
    typing_sentences,
)
from benchmarks.runinfo import run_info, write_result  # noqa: E402

STAGES = ("tokenize", "encode", "decode", "total")
SERVER_TIMING = b"server-timing: app;dur="


@dataclass
class Answer:
    start: float  # perf_counter seconds
    kind: str  # key, phrase or score
    status: int
    client_ms: float
    server_ms: float
    stages: dict[str, float]  # the predictor's timing_ms (suggestions only)


def server_ms(head: bytes) -> float:
    at = head.find(SERVER_TIMING)
    if at < 0:
        return float("nan")
    stop = head.find(b"\r\n", at)
    return float(head[at + len(SERVER_TIMING) : stop if stop >= 0 else len(head)])


async def typist(port: int, traffic: Keystrokes, rate: float, until: float, seed: int,
                 answers: list[Answer]) -> None:  # fmt: skip
    """One connection sending on its own Poisson schedule of ``rate`` requests/s until ``until``;
    a late send goes out at once (open loop: the schedule never waits for answers)."""
    rng = random.Random(seed)
    connection = await Connection.open(port)
    due = time.perf_counter() + rng.expovariate(rate)
    try:
        while due < until:
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            kind, raw = traffic.next_request()
            start = time.perf_counter()
            status, body = await connection.send(raw)
            client_ms = (time.perf_counter() - start) * 1000.0
            stages = json.loads(body)["timing_ms"] if kind != "score" and status == 200 else {}
            answers.append(
                Answer(start, kind, status, client_ms, server_ms(connection.head), stages)
            )
            due += rng.expovariate(rate)
    finally:
        connection.close()


async def offer(port: int, args: argparse.Namespace) -> list[Answer]:
    traffic = Keystrokes(port, typing_sentences(), typists=100, seed=args.seed)
    answers: list[Answer] = []
    until = time.perf_counter() + args.duration
    each = args.rate / args.users
    await asyncio.gather(
        *(typist(port, traffic, each, until, args.seed * 1000 + u, answers)
          for u in range(args.users))
    )  # fmt: skip
    return answers


def pin(server_pid: int) -> None:
    for thread in os.listdir(f"/proc/{server_pid}/task"):
        os.sched_setaffinity(int(thread), {1})
    os.sched_setaffinity(0, {0})


def summarise(answers: list[Answer], warmup_s: float) -> dict[str, Any]:
    first = min(a.start for a in answers)
    counted = [a for a in answers if a.start - first >= warmup_s]
    report: dict[str, Any] = {"errors": sum(a.status != 200 for a in counted)}
    for kind in ("key", "phrase", "score"):
        rows = [a for a in counted if a.kind == kind and a.status == 200]
        if not rows:
            continue
        row: dict[str, Any] = {"requests": len(rows)}
        for name, values in (
            ("client", [a.client_ms for a in rows]),
            ("server", [a.server_ms for a in rows]),
            ("predictor", [a.stages["total"] for a in rows if a.stages]),
        ):
            if values:
                row[f"{name}_p50_ms"] = percentile(values, 50)
                row[f"{name}_p99_ms"] = percentile(values, 99)
        slowest = sorted(rows, key=lambda a: -a.server_ms)[: max(1, len(rows) // 100)]
        tail = {"requests": len(slowest), "server_ms": mean([a.server_ms for a in slowest])}
        if kind != "score":
            for stage in STAGES:
                tail[f"{stage}_ms"] = mean([a.stages[stage] for a in slowest])
            tail["outside_predictor_ms"] = tail["server_ms"] - tail["total_ms"]
        row["slowest_1pct_mean"] = tail
        report[kind] = row
    return report


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s in all")
    parser.add_argument("--users", type=int, default=50, help="connections (typists' devices)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=3.0, help="first seconds not counted")
    parser.add_argument("--seed", type=int, default=0, help="traffic and schedule seed")
    parser.add_argument("--pin", action="store_true", help="server on CPU 1, client on CPU 0")
    parser.add_argument("--name", default="keystroke_tail", help="results file name")
    args = parser.parse_args()
    if args.bundle is None or args.data is None:
        parser.error("give --bundle and --data (or set NEXTWORD_BUNDLE and NEXTWORD_DATA)")
    os.environ["NEXTWORD_DATA"] = str(args.data)  # typing_sentences() reads the test split
    info = run_info()
    install_uvloop()
    log = ROOT / "loadtest" / "reports" / f"{args.name}.server.log"
    with serve(args.bundle, log) as server:
        if args.pin:
            pin(server.pid)
        answers = asyncio.run(offer(server.port, args))
    report = summarise(answers, args.warmup)
    settings = {k: getattr(args, k) for k in ("rate", "users", "duration", "warmup", "seed", "pin")}
    path = write_result(
        args.name, {**info, "bundle": str(args.bundle), "settings": settings, **report}
    )
    print(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
