"""A light HTTP/1.1 load client and server handling for the reliability benchmarks
(``soak.py``, ``sessions_memory.py``, ``overload.py``).

* :class:`Connection`: one keep-alive connection on asyncio (uvloop) speaking just enough
  HTTP/1.1 (one request at a time; the server's answers always carry a ``Content-Length``);
  ~30 µs of client CPU a request, against locust's ~400, so one client process on the second
  core can offer the server several times what it can serve.
* :class:`Keystrokes`: the load test's typing traffic (``loadtest/workload.py``'s held-out
  sentences typed key by key with a ``session_id`` each, 20 keystrokes : 2 three-word phrases :
  1 re-ranking of 5 candidates) as request bytes.
* :func:`serve`: ``python -m service serve`` on a free loopback port, with settings overrides,
  stopped with SIGTERM; :class:`RssSampler` samples its resident memory (psutil).

Requests go to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(bundle: Path, log: Path, **settings: Any) -> Iterator[Server]:
    """``python -m service serve`` on ``bundle`` with ``NEXTWORD_<NAME>`` overrides from
    ``settings``; yields once ``/readyz`` answers, then SIGTERM."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEXTWORD_BUNDLE": str(bundle.resolve()),
        "NEXTWORD_HOST": HOST,
        "NEXTWORD_PORT": str(port),
        **{f"NEXTWORD_{name.upper()}": str(value) for name, value in settings.items()},
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = Server(f"http://{HOST}:{port}", port, process)
        try:
            wait_ready(server)
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(server: Server, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"the server exited with status {server.process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"the server at {server.url} was not ready in {timeout_s:.0f} s")


class RssSampler:
    """Resident memory of a process every ``every_s`` seconds, on a thread: ``(t, MiB)``."""

    def __init__(self, pid: int, every_s: float = 5.0) -> None:
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self.start = time.monotonic()
        self.wall_start = time.time()  # time.time() at self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.start = time.monotonic()
        self.wall_start = time.time()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> float:
        rss = self.process.memory_info().rss / 2**20
        self.samples.append((time.monotonic() - self.start, rss))
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 2**20)


# -- the client ----------------------------------------------------------------------------------


def request_bytes(path: str, body: dict[str, Any], port: int) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`send` returns ``(status, body)`` (status 0: the
    connection was lost before an answer)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.requests = 0  # sent on this connection
        self.head = b""  # the last response's status line and headers, lowercased

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, HOST, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((0, b""))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:") + 15
        stop = head.find(b"\r\n", at)
        length = int(head[at : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        status = int(head[9:12])
        self.head = head
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))
        if b"connection: close" in head and self.transport is not None:
            self.transport.close()

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.closed or self.transport is None:
            return 0, b""
        self.waiter = asyncio.get_running_loop().create_future()
        self.requests += 1
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- the workload --------------------------------------------------------------------------------

PHRASE_WORDS = 3
SCORE_CANDIDATES = 5


def typing_sentences() -> tuple[str, ...]:
    sys.path.insert(0, str(ROOT))
    from loadtest.workload import default_text, load_sentences

    return load_sentences(default_text())


@dataclass
class Typist:
    """One simulated person: a sentence, how much of it is typed, its session id."""

    sentence: str
    session_id: str
    typed: int = 0


@dataclass
class Keystrokes:
    """The load test's typing traffic (``loadtest/locustfile.py``), as request bytes: each call
    of :meth:`next_request` is a request of one of ``typists`` people typing held-out text."""

    port: int
    sentences: tuple[str, ...]
    typists: int = 100
    seed: int = 0
    rng: random.Random = field(init=False)
    people: list[Typist] = field(init=False)
    _sessions: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.people = [self._new() for _ in range(self.typists)]

    def _new(self) -> Typist:
        self._sessions += 1
        return Typist(self.rng.choice(self.sentences), f"typist-{self.seed}-{self._sessions}")

    def next_request(self) -> tuple[str, bytes]:
        """``(name, raw request)``: a keystroke, a phrase or a re-ranking, 20 : 2 : 1."""
        index = self.rng.randrange(len(self.people))
        person = self.people[index]
        kind = self.rng.choices(("key", "phrase", "score"), weights=(20, 2, 1))[0]
        if kind == "key":
            if person.typed >= len(person.sentence):
                person = self.people[index] = self._new()
            person.typed += 1
            body = {
                "text": person.sentence[: person.typed],
                "k": 3,
                "session_id": person.session_id,
            }
            return "key", request_bytes("/v1/suggest", body, self.port)
        typed = person.sentence[: person.typed]
        context = typed[: typed.rfind(" ") + 1]
        if kind == "phrase":
            body = {
                "text": context,
                "k": 3,
                "max_words": PHRASE_WORDS,
                "session_id": person.session_id,
            }
            return "phrase", request_bytes("/v1/suggest", body, self.port)
        words = person.sentence.split()
        upcoming = person.sentence[len(context) :].split()
        candidates = list(dict.fromkeys(upcoming[:1] + self.rng.sample(words, min(4, len(words)))))
        body = {"text": context, "candidates": candidates[:SCORE_CANDIDATES]}
        return "score", request_bytes("/v1/score", body, self.port)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))]


# -- what the scripts share --------------------------------------------------------------------


def add_bundle_args(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    """``--bundle`` (and ``--data``), defaulting to ``$NEXTWORD_BUNDLE`` / ``$NEXTWORD_DATA``."""
    parser.add_argument(
        "--bundle", type=Path, default=os.environ.get("NEXTWORD_BUNDLE"),
        help="bundle directory to serve (default: $NEXTWORD_BUNDLE)",
    )  # fmt: skip
    if data:
        parser.add_argument(
            "--data", type=Path, default=os.environ.get("NEXTWORD_DATA"),
            help="WikiText-2 directory to type from (default: $NEXTWORD_DATA)",
        )  # fmt: skip


def save_figure(fig: Any, out: Path) -> None:
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
