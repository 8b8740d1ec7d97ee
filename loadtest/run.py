"""Run the locust load test headless and gate on the latency SLO: ``make loadtest``.

    python loadtest/run.py [--host URL | --serve BUNDLE] [--users N] [--rate R] [--duration S] ...

Locust runs as a child process with ``locustfile.py``; its ``quitting`` listener judges the run
(p99 within budget, no errors, the target rate achieved) and sets the exit status, which this
script passes on. With ``--serve BUNDLE`` it first starts ``python -m service serve`` on a free
loopback port and stops it (SIGTERM) afterwards; otherwise the server at ``--host`` must be up.
Around the run it samples the load generator's CPU use (and the server's, when known), writes
locust's CSV and HTML reports, every request's sample, the verdict, a summary JSON and a PNG of
latency percentiles and request rate over time to ``--report-dir``, and says how the users were
paced. Requests go to ``--host`` only (loopback by default).

``--pin`` (with ``--serve``, on a machine of two CPUs or more) keeps the two apart: the server
on the last CPU, locust on the others (``sched_setaffinity`` before each child starts, so every
thread it makes inherits it), as when the load comes from other machines. Unpinned, the
scheduler now and then runs the load generator on the server's core in the middle of a
request, and that wait counts in the server's own time (on the 2-core VM of the README,
keystroke p99 by Server-Timing 1.75-1.77 ms unpinned against 1.48-1.66 ms pinned).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="the only target")
    parser.add_argument("--serve", type=Path, help="start a local server on this bundle first")
    parser.add_argument("--users", type=int, default=50, help="simulated typists")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s in all; 0: max")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--spawn-rate", type=float, default=0.0, help="users/s (default: users)")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="SLO: p99 latency budget, ms")
    parser.add_argument(
        "--max-error-ratio", type=float, default=0.0, help="SLO: failed requests allowed, 0-1"
    )
    parser.add_argument(
        "--rate-tolerance",
        type=float,
        default=0.05,
        help="SLO: the fraction of --rate the achieved rate may miss by",
    )
    parser.add_argument("--text", default="", help="text to type (default: WikiText-2 test)")
    parser.add_argument(
        "--report-dir", type=Path, default=HERE / "reports" / "latest", help="locust reports"
    )
    parser.add_argument("--server-pid", type=int, help="also report this process's CPU use")
    parser.add_argument("--results", type=Path, help="copy the summary JSON (and PNG) here")
    parser.add_argument("--note", default="", help="recorded in the summary (bundle, conditions)")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --serve: server on the last CPU, locust on the rest",
    )
    args = parser.parse_args(argv)
    if args.pin and (not args.serve or len(os.sched_getaffinity(0)) < 2):
        parser.error("--pin needs --serve and at least two CPUs")
    args.server_cpus, args.load_cpus = split_cpus() if args.pin else (None, None)
    if urlsplit(args.host).scheme not in ("http", "https") or not urlsplit(args.host).hostname:
        parser.error(f"--host must be an http(s) URL, not {args.host!r}")
    if args.users < 1 or args.duration < 1 or args.rate < 0:
        parser.error("--users and --duration must be positive and --rate not negative")
    # locust runs in this directory, so paths given relative to the caller's are made absolute
    args.text = str(Path(args.text).resolve()) if args.text else ""
    args.report_dir = args.report_dir.resolve()
    return args


def split_cpus() -> tuple[set[int], set[int]]:
    """``--pin``'s CPUs: (the server's, the load generator's), from those this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[-1]}, set(cpus[:-1])


def on_cpus(cpus: set[int] | None) -> Any:
    """A ``preexec_fn`` that restricts the child to ``cpus`` before it runs (None: no limit)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


@contextmanager
def local_server(
    bundle: Path, log: Path, cpus: set[int] | None = None
) -> Iterator[tuple[str, int]]:
    """``python -m service serve`` on a free loopback port (on ``cpus`` if given): yields
    (URL, PID), then SIGTERM."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "service", "serve", "--bundle", str(bundle.resolve())]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEXTWORD_HOST": "127.0.0.1"}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out,
            preexec_fn=on_cpus(cpus),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, server)
            yield url, server.pid
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"the server exited with status {server.returncode} before it was ready"
            )
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready in {timeout_s:.0f} s")


def locust_command(args: argparse.Namespace) -> list[str]:
    out = args.report_dir
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"),
        "--headless", "--host", args.host, "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate or args.users), "--run-time", f"{args.duration}s",
        "--stop-timeout", "2", "--only-summary", "--loglevel", "WARNING",
        "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
        "--rate", str(args.rate), "--p99-ms", str(args.p99_ms),
        "--max-error-ratio", str(args.max_error_ratio),
        "--rate-tolerance", str(args.rate_tolerance),
        "--samples-out", str(out / "samples.csv"), "--verdict-out", str(out / "verdict.json"),
    ]  # fmt: skip
    return [*command, "--text", args.text] if args.text else command


def pacing(args: argparse.Namespace) -> str:
    if args.rate == 0:
        return f"closed loop: {args.users} users, no think time (saturation)"
    gap = args.users / args.rate
    return (
        f"open loop: {args.users} users, each on its own Poisson schedule (exponential think time, "
        f"mean {gap * 1000:.0f} ms between keys), {args.rate:g} requests/s in all; "
        "sends are not held back by slow responses"
    )


class ProcessMonitor:
    """Samples CPU use (100 % = one core) and resident memory of process trees once a second.

    A tree is a process and its descendants (a server's worker processes, locust's workers), so
    a multi-process server is measured whole.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.roots = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.known: dict[str, dict[int, psutil.Process]] = defaultdict(dict)
        self.cpu: dict[str, list[float]] = defaultdict(list)
        self.rss_mb: dict[str, float] = defaultdict(float)
        for name in self.roots:
            self._members(name)

    def _members(self, name: str) -> list[psutil.Process]:
        root = self.roots[name]
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        known = self.known[name]
        for process in tree:
            if process.pid not in known:
                known[process.pid] = process
                process.cpu_percent(None)  # the first reading only starts the interval
        return [known[process.pid] for process in tree]

    def sample(self) -> None:
        for name in self.roots:
            cpu = rss = 0.0
            members = self._members(name)
            for process in members:
                try:
                    with process.oneshot():
                        cpu += process.cpu_percent(None)
                        rss += process.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    continue
            if members:
                self.cpu[name].append(cpu)
                self.rss_mb[name] = max(self.rss_mb[name], rss)

    def summary(self, skip: int = 2) -> dict[str, dict[str, float]]:
        """Mean and max CPU after the first ``skip`` seconds (start-up), and peak memory."""
        out = {}
        for name, values in self.cpu.items():
            steady = values[skip:-1] or values
            out[name] = {
                "cpu_mean": sum(steady) / len(steady),
                "cpu_max": max(steady),
                "rss_max_mb": self.rss_mb[name],
            }
        return out


def run_locust(args: argparse.Namespace) -> tuple[int, dict[str, dict[str, float]]]:
    # The locustfile imports loadtest.* from the repository root.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        locust_command(args), cwd=HERE, env=env, preexec_fn=on_cpus(args.load_cpus)
    )
    pids = {"load_generator": process.pid}
    if args.server_pid:
        pids["server"] = args.server_pid
    monitor = ProcessMonitor(pids)
    while process.poll() is None:
        time.sleep(1.0)
        monitor.sample()
    return process.returncode, monitor.summary()


def read_samples(path: Path) -> list[tuple[float, float]]:
    with path.open(encoding="utf-8") as handle:
        return [(float(row["start"]), float(row["latency_ms"])) for row in csv.DictReader(handle)]


def plot(samples: list[tuple[float, float]], args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    start = min(s for s, _ in samples)
    second = np.array([int(s - start) for s, _ in samples])
    latency = np.array([ms for _, ms in samples])
    bins = np.arange(max(1, second.max()))  # the last second is cut short by the stop
    rate = np.bincount(second, minlength=len(bins))[: len(bins)]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for q in (50, 95, 99):
        per_bin = [np.percentile(latency[second == b], q) if rate[b] else np.nan for b in bins]
        top.plot(bins, per_bin, label=f"p{q}")
    top.axhline(args.p99_ms, color="red", linestyle="--", label=f"p99 budget {args.p99_ms:g} ms")
    top.set(ylabel="latency (ms)", yscale="log", title=f"nextword load test against {args.host}")
    top.legend(loc="upper right")
    bottom.plot(bins, rate, color="black", label="achieved")
    if args.rate:
        bottom.axhline(args.rate, color="red", linestyle="--", label=f"target {args.rate:g}")
    bottom.set(xlabel="time (s)", ylabel="requests / s")
    bottom.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def summarise(
    args: argparse.Namespace, verdict: dict[str, Any], cpu: dict[str, Any]
) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "host": args.host,
        "users": args.users,
        "target_rps": args.rate,
        "duration_s": args.duration,
        "pacing": pacing(args),
        "note": args.note,
        "pinned": args.pin,
        # Other work on the machine inflates latency: its 1-minute load average at the end.
        "load_average_1m": os.getloadavg()[0],
        "processes": cpu,  # CPU in % of one core, memory in MiB
        **verdict,
        "server_side": getattr(args, "server_view", None),
    }


PERCENTILES = ("p50", "p95", "p99", "max")


def report(summary: dict[str, Any]) -> None:
    print(f"pacing: {summary['pacing']}")
    for name, use in summary["processes"].items():
        who = name.replace("_", " ")
        print(
            f"{who}: CPU mean {use['cpu_mean']:.0f} %, max {use['cpu_max']:.0f} % of one core; "
            f"peak RSS {use['rss_max_mb']:.0f} MiB"
        )
    print(
        f"{'requests':<24}{'n':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"   server (Server-Timing) p50 / p95 / p99 / max ms"
    )
    for name, row in sorted(summary["by_name"].items()):
        server = "/".join(f"{row.get(f'server_{q}_ms', math.nan):.2f}" for q in PERCENTILES)
        print(
            f"{name:<24}{row['requests']:>8.0f}{row['p50_ms']:>9.2f}"
            f"{row['p95_ms']:>9.2f}{row['p99_ms']:>9.2f}   {server}"
        )
    print(
        f"{'all':<24}{summary['requests']:>8}{summary['p50_ms']:>9.2f}{summary['p95_ms']:>9.2f}"
        f"{summary['p99_ms']:>9.2f}  {summary['achieved_rps']:.1f} req/s, "
        f"{summary['failures']} failed, {summary['late_sends']} sends > 10 ms late"
    )
    server = summary.get("server_side")
    if server:
        bounds = [f"<={server[f'p{q}_at_most_ms']:g}" for q in (50, 95, 99)]
        print(
            f"{'server side':<24}{server['requests']:>8}{bounds[0]:>9}{bounds[1]:>9}"
            f"{bounds[2]:>9}  (its own histogram)"
        )
    verdict = "PASS" if summary["passed"] else "FAIL: " + "; ".join(summary["reasons"])
    print(f"SLO {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("verdict.json", "samples.csv"):
        (args.report_dir / stale).unlink(missing_ok=True)
    if args.serve:
        log = args.report_dir / "server.log"
        with local_server(args.serve, log, args.server_cpus) as (args.host, pid):
            args.server_pid = pid
            return finish(args, *measure(args))
    return finish(args, *measure(args))


def measure(args: argparse.Namespace) -> tuple[int, dict[str, dict[str, float]]]:
    print(f"load test: {args.host}, {args.duration} s; {pacing(args)}", flush=True)
    before = scrape_latency(args.host)
    code, cpu = run_locust(args)
    after = scrape_latency(args.host)
    args.server_view = server_view(before, after)
    return code, cpu


# -- the server's own view ------------------------------------------------------------------------

LATENCY_METRIC = "nextword_request_seconds_bucket"


def scrape_latency(host: str) -> dict[float, float] | None:
    """Cumulative counts by bucket bound (s) of the server's latency histogram for answered
    (200) requests to ``/v1/*``, from its ``/metrics``; None when it has none (another server)."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    buckets: dict[float, float] = defaultdict(float)
    for line in text.splitlines():
        if not line.startswith(LATENCY_METRIC + "{"):
            continue
        labels, _, value = line[len(LATENCY_METRIC) + 1 :].rpartition("} ")
        fields = dict(part.split("=", 1) for part in labels.split(","))
        if fields.get("route", "").startswith('"/v1/') and fields.get("status") == '"200"':
            buckets[float(fields["le"].strip('"'))] += float(value)
    return dict(buckets) or None


def server_view(
    before: dict[float, float] | None, after: dict[float, float] | None
) -> dict[str, Any] | None:
    """The run's latency as the server measured it (request in to response out, no network or
    load generator): the histogram's bucket bound at or above p50 / p95 / p99."""
    if after is None:
        return None
    counts = {bound: after[bound] - (before or {}).get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(math.inf, 0.0)
    if total <= 0:
        return None

    def at_most(q: float) -> float:
        return next(bound for bound, count in counts.items() if count >= q * total) * 1000.0

    return {
        "requests": int(total),
        "p50_at_most_ms": at_most(0.50),
        "p95_at_most_ms": at_most(0.95),
        "p99_at_most_ms": at_most(0.99),
        "note": "from the server's Prometheus histogram (bucket bounds), warm-up included",
    }


def finish(args: argparse.Namespace, code: int, cpu: dict[str, dict[str, float]]) -> int:
    """Summary JSON, plot, table; the exit status is locust's (the SLO verdict)."""
    verdict_path = args.report_dir / "verdict.json"
    if not verdict_path.is_file():
        print(f"locust exited with status {code} and no verdict", file=sys.stderr)
        return code or 1
    summary = summarise(args, json.loads(verdict_path.read_text()), cpu)
    (args.report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    samples = read_samples(args.report_dir / "samples.csv")
    if samples:
        plot(samples, args, args.report_dir / "latency.png")
    report(summary)
    print(f"reports: {args.report_dir}")
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.report_dir / "summary.json", args.results)
        if samples:
            shutil.copy(args.report_dir / "latency.png", args.results.with_suffix(".png"))
    return code


if __name__ == "__main__":
    sys.exit(main())
