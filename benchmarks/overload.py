"""Overload: at 3 x saturation the server refuses the excess at once (503/429 with
``Retry-After``) instead of queueing without bound, and recovers within seconds of the load
stopping.

For each server under test (``guarded``: the default settings; ``unguarded``: the same with the
connection limits of ``service/protocol.py`` set out of reach, ``MAX_IN_FLIGHT`` and
``MAX_CONNECTIONS`` 100,000 and 1,000,000, to show what they change), in one run:

1. idle latency: 300 sequential keystrokes on one connection (p50 / p99);
2. saturation: a closed loop of ``--users`` connections (no think time) for ``--saturation-s``
   seconds, the load test's typing traffic (keystrokes with sessions, phrases, re-rankings);
3. overload: open-loop Poisson arrivals at ``--factor`` (3) x the guarded server's saturation
   rate for ``--overload-s`` (30) seconds. An arrival takes an idle keep-alive connection, or
   opens one (up to ``--max-connections``), or waits for one (that wait counts in its latency:
   latency is measured from the arrival's scheduled time, so a slow server cannot slow the
   arrivals down). ``--preopen`` (1,000) connections are open a second before the first
   arrival, as clients already connected (a burst of hundreds of new connections within
   0.2 s met the kernel's SYN-ACK retransmissions on loopback: 1-7 s for their first
   request, whatever the server does); statistics are given for all arrivals and for the
   steady state after the first 2 s;
4. recovery: when the arrivals stop, a probe on a new connection sends a keystroke every 20 ms;
   recovered = the first probe of 10 in a row answered 200 within 3 x the idle p99 (>= 5 ms).

Reports the share refused, latency of the accepted (p50 / p99 / max), of the refusals, goodput
(accepted/s against saturation) and time to recover. Client: one process, raw HTTP/1.1 on
asyncio (:mod:`benchmarks.loadclient`), on the same 2 cores. Writes
``benchmarks/results/overload.json`` (date, machine, commit, bundle) and ``overload.png``.

    python benchmarks/overload.py --bundle bundles/default --data $NEXTWORD_DATA
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.loadclient import (  # noqa: E402  (a script: the repo is not installed)
    Connection,
    Keystrokes,
    add_bundle_args,
    install_uvloop,
    percentile,
    rss_mib,
    save_figure,
    serve,
    typing_sentences,
)
from benchmarks.runinfo import RESULTS, run_info, write_result  # noqa: E402

UNGUARDED = {"max_in_flight": 100_000, "max_connections": 1_000_000}
RECOVERED_IN_A_ROW = 10
STEADY_AFTER_S = 2.0  # "steady": arrivals after the first seconds of overload
PROBE_EVERY_S = 0.02


@dataclass
class Outcome:
    scheduled: float  # loop time the request was due
    sent: float
    done: float
    status: int  # 0: the connection was lost or refused
    name: str
    fresh: bool = False  # the first request on its connection


def summarise(outcomes: list[Outcome], start: float, stop: float) -> dict[str, Any]:
    """Of the requests that arrived in ``[start, stop)``; ``answered_ok_per_s``: 200s
    answered in that window, per second (the goodput)."""
    seconds = stop - start
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status in (429, 503)]
    other = [o for o in outcomes if o.status not in (200, 429, 503)]

    def ms(rows: list[Outcome], since: str = "scheduled") -> list[float]:
        return [(o.done - getattr(o, since)) * 1000.0 for o in rows]

    return {
        "requests": len(outcomes),
        "offered_per_s": len(outcomes) / seconds,
        "accepted": len(ok),
        "answered_ok_per_s": sum(start <= o.done < stop for o in ok) / seconds,
        "refused": len(refused),
        "refused_share": len(refused) / max(1, len(outcomes)),
        "refused_by_status": dict(collections.Counter(o.status for o in refused)),
        "failed_other": len(other),
        "failed_by_status": dict(collections.Counter(o.status for o in other)),
        "accepted_ms": _percentiles(ms(ok)),
        "accepted_service_ms": _percentiles(ms(ok, "sent")),
        "refused_ms": _percentiles(ms(refused)),
        "send_lag_ms": _percentiles([(o.sent - o.scheduled) * 1000.0 for o in outcomes]),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values, default=float("nan")),
    }


class Pool:
    """Keep-alive connections handed to one request at a time; new ones up to ``limit``."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.limit = limit
        self.idle: collections.deque[Connection] = collections.deque()  # oldest used first
        self.count = 0
        self.peak = 0
        self.waiting: collections.deque[asyncio.Future[Connection]] = collections.deque()
        self._opening: set[asyncio.Task[None]] = set()

    async def take(self) -> Connection | None:
        while self.idle:
            connection = self.idle.popleft()
            if not connection.closed:
                return connection
            self.count -= 1
        if self.count < self.limit:
            self.count += 1
            self.peak = max(self.peak, self.count)
            try:
                return await Connection.open(self.port)
            except OSError:
                self.count -= 1
                return None
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def give(self, connection: Connection) -> None:
        if connection.closed:
            self.count -= 1
            if self.waiting:  # a slot is free: the first waiter opens a connection
                task = asyncio.ensure_future(self._open_for(self.waiting.popleft()))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
            return
        if self.waiting:
            self.waiting.popleft().set_result(connection)
        else:
            self.idle.append(connection)

    async def _open_for(self, waiter: asyncio.Future[Connection]) -> None:
        self.count += 1
        try:
            waiter.set_result(await Connection.open(self.port))
        except OSError:
            self.count -= 1
            waiter.set_result(Connection())  # closed: its request fails with status 0

    async def fill(self, count: int) -> None:
        """Open ``count`` connections before the arrivals start, as clients already connected."""
        for _ in range(count):
            self.idle.append(await Connection.open(self.port))
        self.count = self.peak = len(self.idle)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()


async def fire(pool: Pool, raw: bytes, name: str, scheduled: float, out: list[Outcome]) -> None:
    loop = asyncio.get_running_loop()
    connection = await pool.take()
    sent = loop.time()
    if connection is None:
        out.append(Outcome(scheduled, sent, loop.time(), 0, name))
        return
    fresh = connection.requests == 0
    status, _ = await connection.send(raw)
    out.append(Outcome(scheduled, sent, loop.time(), status, name, fresh))
    pool.give(connection)


async def idle_latency(port: int, traffic: Keystrokes, count: int = 300) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    connection = await Connection.open(port)
    times = []
    for _ in range(count):
        _, raw = traffic.next_request()
        start = loop.time()
        status, _ = await connection.send(raw)
        times.append((loop.time() - start) * 1000.0)
        if status != 200:
            raise SystemExit(f"idle request answered {status}")
    connection.close()
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


async def closed_loop(port: int, traffic: Keystrokes, users: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    done = [0]

    async def user() -> None:
        connection = await Connection.open(port)
        while loop.time() < stop:
            _, raw = traffic.next_request()
            status, _ = await connection.send(raw)
            if status != 200:
                raise SystemExit(f"saturation request answered {status}")
            done[0] += 1
        connection.close()

    start = loop.time()
    await asyncio.gather(*(user() for _ in range(users)))
    return done[0] / (loop.time() - start)


async def open_loop(
    port: int,
    traffic: Keystrokes,
    rate: float,
    seconds: float,
    max_connections: int,
    preopen: int,
    seed: int,
) -> tuple[list[Outcome], float, Pool, set[asyncio.Task[None]]]:
    """Arrivals for ``seconds``; returns when the last is due, with the requests outstanding
    (``tasks``) still running."""
    loop = asyncio.get_running_loop()
    pool = Pool(port, max_connections)
    await pool.fill(preopen)
    await asyncio.sleep(1.0)  # the server accepts them all before the first arrival
    rng = random.Random(seed)
    out: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time()
    due = start
    while due < start + seconds:
        now = loop.time()
        while due <= now:
            name, raw = traffic.next_request()
            task = asyncio.ensure_future(fire(pool, raw, name, due, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, due - loop.time()))
    stopped = loop.time()
    return out, stopped, pool, tasks


async def recovery(
    port: int, traffic: Keystrokes, fast_ms: float, limit_s: float
) -> dict[str, Any]:
    """Probe every 20 ms from the moment the arrivals stop (called right then)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    probes: list[tuple[float, int, float]] = []  # (since stop s, status, ms)
    in_a_row = 0
    connection: Connection | None = None
    while loop.time() - start < limit_s:
        sent = loop.time()
        if connection is None or connection.closed:
            try:
                connection = await asyncio.wait_for(Connection.open(port), timeout=limit_s)
            except (OSError, TimeoutError):
                connection = None
        status = 0
        if connection is not None:
            _, raw = traffic.next_request()
            status, _ = await connection.send(raw)
        took = (loop.time() - sent) * 1000.0
        probes.append((sent - start, status, took))
        in_a_row = in_a_row + 1 if status == 200 and took <= fast_ms else 0
        if in_a_row == RECOVERED_IN_A_ROW:
            break
        await asyncio.sleep(max(0.0, sent + PROBE_EVERY_S - loop.time()))
    if connection is not None:
        connection.close()
    recovered = in_a_row == RECOVERED_IN_A_ROW
    first = probes[-RECOVERED_IN_A_ROW][0] if recovered else float("nan")
    return {
        "recovered": recovered,
        "recovery_s": first,
        "fast_ms": fast_ms,
        "probes": len(probes),
        "first_probe_ms": probes[0][2] if probes else float("nan"),
    }


async def measure(
    args: argparse.Namespace, port: int, pid: int, rate: float | None, sentences: tuple[str, ...]
) -> dict[str, Any]:
    traffic = Keystrokes(port, sentences, typists=200, seed=1)
    idle = await idle_latency(port, traffic)
    row: dict[str, Any] = {"idle": idle, "rss_start_mib": rss_mib(pid)}
    if rate is None:  # the guarded server: measure saturation, overload at a multiple of it
        row["saturation_per_s"] = await closed_loop(port, traffic, args.users, args.saturation_s)
        rate = args.factor * row["saturation_per_s"]
        print(
            f"  saturation {row['saturation_per_s']:,.0f} req/s; offering {rate:,.0f}", flush=True
        )
    cpu = {name: psutil.Process(p) for name, p in (("client", os.getpid()), ("server", pid))}
    used = {name: process.cpu_times() for name, process in cpu.items()}
    began = time.monotonic()
    outcomes, stopped, pool, outstanding = await open_loop(
        port, traffic, rate, args.overload_s, args.max_connections, args.preopen, seed=2
    )
    row["cpu_percent_of_a_core"] = {
        name: 100.0 * (sum(p.cpu_times()[:2]) - sum(used[name][:2])) / (time.monotonic() - began)
        for name, p in cpu.items()
    }
    row["outstanding_at_stop"] = len(outstanding)
    fast = max(5.0, 3.0 * idle["p99_ms"])
    # The probe starts as the arrivals stop, while the outstanding requests drain.
    row["recovery"] = await recovery(port, traffic, fast, args.recovery_limit_s)
    if outstanding:
        await asyncio.wait(outstanding, timeout=120)
    pool.close()
    first = min(o.scheduled for o in outcomes)
    row["target_per_s"] = rate
    row["overload"] = summarise(outcomes, first, stopped)
    row["overload"]["peak_connections"] = pool.peak
    steady = [o for o in outcomes if o.scheduled >= first + STEADY_AFTER_S]
    row["overload_steady"] = summarise(steady, first + STEADY_AFTER_S, stopped)
    row["rss_end_mib"] = rss_mib(pid)
    row["timeline"] = timeline(outcomes, first)
    return row


def timeline(outcomes: list[Outcome], start: float) -> dict[str, list[float]]:
    """Per second of arrival: accepted, refused, and the accepted's p99 (ms)."""
    seconds = int(max(o.scheduled for o in outcomes) - start) + 1
    accepted, refused = [0.0] * seconds, [0.0] * seconds
    latencies: list[list[float]] = [[] for _ in range(seconds)]
    for o in outcomes:
        at = int(o.scheduled - start)
        if o.status == 200:
            accepted[at] += 1
            latencies[at].append((o.done - o.scheduled) * 1000.0)
        else:
            refused[at] += 1
    p99 = [percentile(values, 99) for values in latencies]
    return {"accepted": accepted, "refused": refused, "accepted_p99_ms": p99}


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for i, (name, row) in enumerate(results.items()):
        line = row["timeline"]
        top.plot(line["accepted_p99_ms"], color=f"C{i}", label=f"{name}: accepted p99")
        bottom.plot(line["accepted"], color=f"C{i}", label=f"{name}: answered 200, by arrival")
        bottom.plot(
            line["refused"], color=f"C{i}", linestyle="--", label=f"{name}: refused, by arrival"
        )
    top.set(ylabel="latency from arrival (ms)", yscale="log", title="nextword at 3x saturation")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="time (s)", ylabel="requests / s")
    bottom.legend(loc="upper left", fontsize=8)
    save_figure(fig, out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_bundle_args(parser)
    parser.add_argument("--factor", type=float, default=3.0, help="x saturation offered")
    parser.add_argument("--users", type=int, default=32, help="closed-loop users (saturation)")
    parser.add_argument(
        "--saturation-s", type=float, default=20.0, help="seconds measuring saturation"
    )
    parser.add_argument("--overload-s", type=float, default=30.0, help="seconds overloaded")
    parser.add_argument(
        "--recovery-limit-s", type=float, default=120.0, help="give up waiting for recovery after"
    )
    parser.add_argument(
        "--max-connections", type=int, default=1000, help="the client's pool (server: 1,024)"
    )
    parser.add_argument("--preopen", type=int, default=1000, help="connections open at first")
    parser.add_argument(
        "--skip-unguarded", action="store_true", help="only the server with its guards on"
    )
    parser.add_argument("--name", default="overload", help="results file name")
    args = parser.parse_args()
    if not args.bundle or not args.data:
        parser.error("pass --bundle and --data (or set NEXTWORD_BUNDLE / NEXTWORD_DATA)")
    os.environ["NEXTWORD_DATA"] = str(args.data)
    return args


def main() -> int:
    args = parse_args()
    install_uvloop()
    info = run_info()
    sentences = typing_sentences()
    results: dict[str, dict[str, Any]] = {}
    runs = [("guarded", {})] if args.skip_unguarded else [("guarded", {}), ("unguarded", UNGUARDED)]
    rate = None
    for name, overrides in runs:
        log = ROOT / "loadtest" / "reports" / args.name / f"{name}.log"
        with serve(args.bundle, log, **overrides) as server:
            print(f"{name} server {overrides or '(defaults)'}", flush=True)
            row = asyncio.run(measure(args, server.port, server.pid, rate, sentences))
        row["settings_overrides"] = overrides
        rate = row["target_per_s"]
        results[name] = row
        report(name, row)
    guarded = results["guarded"]
    checks = {
        "refuses_quickly": guarded["overload"]["refused_ms"]["p99"] < 100.0,
        "accepted_latency_bounded_ms": guarded["overload"]["accepted_ms"]["max"],
        "recovered_within_s": guarded["recovery"]["recovery_s"],
        "met": bool(
            guarded["recovery"]["recovered"]
            and guarded["recovery"]["recovery_s"] < 5.0
            and guarded["overload"]["failed_other"] == 0
            and guarded["overload"]["accepted_ms"]["p99"] < 500.0
        ),
    }
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    path = write_result(args.name, {
        "benchmark": "overload",
        **info,
        "bundle": {"path": str(args.bundle), "name": manifest["name"]},
        "client": "one process, raw HTTP/1.1 keep-alive connections on asyncio (uvloop), same "
        "2 cores; open-loop Poisson arrivals, latency from each arrival's scheduled time",
        "workload": "the load test's typing traffic: 20 keystrokes (session) : 2 phrases : 1 "
        "re-ranking, 200 simulated typists",
        "factor": args.factor,
        "results": results,
        "checks": checks,
    })  # fmt: skip
    plot(results, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")
    return 0 if checks["met"] else 1


def report(name: str, row: dict[str, Any]) -> None:
    over, rec = row["overload"], row["recovery"]
    acc, ref = over["accepted_ms"], over["refused_ms"]
    recovered = f"{rec['recovery_s']:.2f} s" if rec["recovered"] else "NOT recovered"
    svc, lag = over["accepted_service_ms"], over["send_lag_ms"]
    steady = row["overload_steady"]
    print(
        f"{name}: offered {over['offered_per_s']:,.0f}/s, "
        f"answered 200 {over['answered_ok_per_s']:,.0f}/s, "
        f"refused {100 * over['refused_share']:.1f} % {over['refused_by_status']}, other failures "
        f"{over['failed_other']} {over['failed_by_status']}\n"
        f"  accepted ms p50/p99/max {acc['p50']:.1f}/{acc['p99']:.1f}/{acc['max']:.1f}; refused "
        f"p50/p99/max {ref['p50']:.1f}/{ref['p99']:.1f}/{ref['max']:.1f}; peak connections "
        f"{over['peak_connections']}\n"
        f"  accepted service ms (from send) p50/p99/max {svc['p50']:.1f}/{svc['p99']:.1f}/"
        f"{svc['max']:.1f}; send lag p50/p99 {lag['p50']:.1f}/{lag['p99']:.1f}; CPU "
        f"{', '.join(f'{k} {v:.0f} %' for k, v in row['cpu_percent_of_a_core'].items())}\n"
        f"  steady state (after {STEADY_AFTER_S:g} s): accepted ms p50/p99/max "
        f"{steady['accepted_ms']['p50']:.1f}/{steady['accepted_ms']['p99']:.1f}/"
        f"{steady['accepted_ms']['max']:.1f}, 200s {steady['answered_ok_per_s']:,.0f}/s, "
        f"refused {100 * steady['refused_share']:.1f} %; outstanding at stop "
        f"{row['outstanding_at_stop']}\n"
        f"  recovery: {recovered} "
        f"(10 probes in a row <= {rec['fast_ms']:.1f} ms); idle p50/p99 "
        f"{row['idle']['p50_ms']:.2f}/{row['idle']['p99_ms']:.2f} ms; RSS "
        f"{row['rss_start_mib']:.0f} -> {row['rss_end_mib']:.0f} MiB",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
