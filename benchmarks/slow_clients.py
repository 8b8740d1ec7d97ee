"""Slow and hostile clients against the server with its default limits: what each gets, and the
latency of a normal client meanwhile (``tests/test_slow_clients.py`` checks the same on the
tiny bundle with short timeouts).

On one server (``python -m service serve``, default settings: ``REQUEST_TIMEOUT_S`` 10,
``MAX_CONNECTIONS`` 1,024, ``WRITE_TIMEOUT_S`` 10, ``MAX_HEADER_BYTES`` 16,384,
``MAX_BODY_BYTES`` 2 MiB), a normal client types keystrokes on one keep-alive connection (a
request every 20 ms, its latency recorded) through these phases:

1. ``quiet``: nothing else, 5 s;
2. ``slowloris``: ``--slowloris`` (1,100) connections opened at once, each sending one more
   byte of a request head every 0.5 s and never finishing it, for request timeout + 3 s;
3. ``never reads``: ``--pipelined`` (60) pipelined /v1/score requests of 1,000 candidates each
   (~6 MB of answers) on one connection whose client reads nothing, for write timeout + 3 s;
4. ``pipelines too much``: 5,000 pipelined GET /healthz at once;
5. oversized: a 64 KB header, 200 headers of 100 bytes, a 3 MB body (declared and chunked).

Writes ``benchmarks/results/slow_clients.json`` (date, machine, commit, bundle, per phase the
normal client's p50 / p99 / max and what the hostile connections got).

    python benchmarks/slow_clients.py --bundle bundles/default
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import selectors
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.loadclient import (  # noqa: E402  (a script: the repo is not installed)
    HOST,
    add_bundle_args,
    percentile,
    rss_mib,
    serve,
)
from benchmarks.runinfo import run_info, write_result  # noqa: E402

REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0


class Normal(threading.Thread):
    """A keystroke every 20 ms on one keep-alive connection; latencies by phase."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.phase = "quiet"
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.failures: dict[str, int] = collections.defaultdict(int)
        self.stop = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        text = "The game was played in front of a large crowd at the stadium"
        typed = 1
        while not self.stop.is_set():
            body = json.dumps({"text": text[:typed], "session_id": "normal"})
            start = time.perf_counter()
            try:
                connection.request("POST", "/v1/suggest", body)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
            elapsed = (time.perf_counter() - start) * 1000.0
            if ok:
                self.latencies[self.phase].append(elapsed)
            else:
                self.failures[self.phase] += 1
            typed = typed % len(text) + 1
            time.sleep(0.02)


def status_of(sock: socket.socket, timeout_s: float = 5.0) -> int | None:
    sock.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


def slowloris(port: int, count: int, seconds: float) -> dict[str, Any]:
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    outcome: dict[socket.socket, tuple[float, int | None]] = {}
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.setblocking(False)
        opened[sock] = time.monotonic()
        selector.register(sock, selectors.EVENT_READ)
    sent, next_byte = 0, time.monotonic()
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if time.monotonic() >= next_byte:
            for sock in opened:
                if sock not in outcome:
                    with contextlib.suppress(OSError):
                        sock.send(head[sent : sent + 1])
            sent += 1
            next_byte += 0.5
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock not in outcome:
                sock.setblocking(True)
                outcome[sock] = (time.monotonic(), status_of(sock, 1.0))
                selector.unregister(sock)
    lifetimes: dict[str, list[float]] = collections.defaultdict(list)
    for sock, (at, status) in outcome.items():
        lifetimes[str(status)].append(at - opened[sock])
    for sock in opened:
        sock.close()
    return {
        "connections": count,
        "bytes_sent_each": sent,
        "still_open_at_end": count - len(outcome),
        "answers": {
            status: {"count": len(v), "after_s_min": min(v), "after_s_max": max(v)}
            for status, v in sorted(lifetimes.items())
        },
    }


def never_reads(port: int, pipelined: int, seconds: float) -> dict[str, Any]:
    words = [f"{'x' * 30}{i:04d}" for i in range(1000)]
    body = json.dumps({"text": "The ", "candidates": words}).encode()
    head = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    start = time.monotonic()
    sock.sendall((head.encode() + body) * pipelined)
    time.sleep(seconds)
    received, ended = 0, "open"
    sock.settimeout(2.0)
    try:
        while chunk := sock.recv(1 << 16):
            received += len(chunk)
        ended = "closed by the server"
    except ConnectionResetError:
        ended = "reset by the server"
    except TimeoutError:
        ended = "still open"
    sock.close()
    return {"requests": pipelined, "bytes_received": received, "ended": ended,
            "after_s": time.monotonic() - start}  # fmt: skip


def pipelines_too_much(port: int, count: int = 5000) -> dict[str, Any]:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                received += chunk
    return {"requests": count, "answered_200": received.count(b"HTTP/1.1 200"),
            "answered_400": received.count(b"HTTP/1.1 400")}  # fmt: skip


def oversized(port: int) -> dict[str, int | None]:
    def send(raw: bytes) -> int | None:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(raw)
            return status_of(sock)

    big = json.dumps({"text": "a " * (3 << 19)}).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(big[i : i + 65536]), big[i : i + 65536])
        for i in range(0, len(big), 65536)
    )
    return {
        "one 64 KB header": send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"),
        "200 headers of 100 bytes": send(
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 100) for i in range(200))
            + b"\r\n"
        ),
        "3 MB body, Content-Length": send(
            b"POST /v1/suggest HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(big) + big
        ),
        "3 MB body, chunked": send(
            b"POST /v1/suggest HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_bundle_args(parser, data=False)
    parser.add_argument("--slowloris", type=int, default=1100, help="slow connections")
    parser.add_argument("--pipelined", type=int, default=60, help="unread pipelined scores")
    args = parser.parse_args()
    if not args.bundle:
        parser.error("pass --bundle (or set NEXTWORD_BUNDLE)")
    info = run_info()
    results: dict[str, Any] = {}
    log = ROOT / "loadtest" / "reports" / "slow_clients" / "server.log"
    with serve(args.bundle, log) as server:
        normal = Normal(server.port)
        normal.start()
        time.sleep(5.0)
        rss = {"quiet": rss_mib(server.pid)}
        for phase, run in (
            ("slowloris", lambda: slowloris(server.port, args.slowloris, REQUEST_TIMEOUT_S + 3)),
            ("never reads", lambda: never_reads(server.port, args.pipelined, WRITE_TIMEOUT_S + 3)),
            ("pipelines too much", lambda: pipelines_too_much(server.port)),
            ("oversized", lambda: oversized(server.port)),
        ):
            normal.phase = phase
            results[phase] = run()
            rss[phase] = rss_mib(server.pid)
            print(f"{phase}: {results[phase]}", flush=True)
        normal.stop.set()
        normal.join()
    table = {
        phase: {"requests": len(v), "failures": normal.failures[phase],
                "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "max_ms": max(v)}
        for phase, v in normal.latencies.items()
    }  # fmt: skip
    print(f"{'normal client during':<20} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for phase, row in table.items():
        print(
            f"{phase:<20} {row['requests']:>5} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{row['max_ms']:>8.2f}  failures {row['failures']}"
        )
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    path = write_result("slow_clients", {
        "benchmark": "slow_clients",
        **info,
        "bundle": {"path": str(args.bundle), "name": manifest["name"]},
        "server_settings": "defaults",
        "hostile": results,
        "normal_client": table,
        "server_rss_mib_after": rss,
    })  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
