"""Slow and hostile clients against the real server (``python -m service serve``, tiny bundle):
the connection limits of ``service/protocol.py``, set through ``NEXTWORD_*`` variables.

Raw sockets on loopback, bounded in count and time: 200 slowloris connections (a header byte
every 0.1 s, never finished) while a normal keep-alive client keeps asking; a client that
pipelines requests and never reads the answers; heads and bodies over the limits; bodies that
never end. The server runs with short timeouts (2 s to send a request, 1 s to take an answer),
150 connections and 100 requests in flight at most, so each test takes a few seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_shutdown import free_port, wait_ready  # one way to start and await a real server

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[1]
REQUEST_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 150
MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 65_536
MAX_IN_FLIGHT = 100
SLOWLORIS = 200
PIPELINED = 60  # within the protocol's MAX_PIPELINED
NORMAL_LATENCY_BOUND_S = 1.0  # the slowest answer the normal client may get (a loaded machine)


@pytest.fixture(scope="module")
def port(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEXTWORD_BUNDLE": str(tiny_bundle),
        "NEXTWORD_PORT": str(port),
        "NEXTWORD_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "NEXTWORD_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
        "NEXTWORD_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "NEXTWORD_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "NEXTWORD_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "NEXTWORD_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    }
    log_path = tmp_path_factory.mktemp("slow-clients") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(process, port, log_path)
            yield port
        finally:
            process.kill()
            process.wait(timeout=10)
    # Refusals are the protocol's; nothing here is an error of the app.
    assert "Traceback" not in log_path.read_text()


def status_of(sock: socket.socket, timeout_s: float = 5.0) -> int | None:
    """The status of the next response on ``sock`` (None: closed without one)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


def connections_released(port: int, within_s: float = 10.0) -> bool:
    """Whether the server accepts a new connection again within ``within_s``: the sockets a
    test closed count against ``MAX_CONNECTIONS`` until the server has read their end, which
    takes a moment on a slow machine (a connection past the limit gets 503)."""
    stop = time.monotonic() + within_s
    while time.monotonic() < stop:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if status_of(sock) == 200:
                return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def released(port: int) -> Iterator[None]:
    """After each test, the server takes new connections again: its hostile clients are gone."""
    yield
    assert connections_released(port)


class Normal:
    """A keep-alive client that reads each answer whole (http.client), timing each request."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.latencies: list[float] = []

    def ask(self) -> int:
        start = time.perf_counter()
        self.connection.request("POST", "/v1/suggest", json.dumps({"text": "The game was "}))
        response = self.connection.getresponse()
        response.read()
        self.latencies.append(time.perf_counter() - start)
        return response.status


def test_slowloris_does_not_stall_a_normal_client(port: int) -> None:
    normal = Normal(port)  # connected before the flood, so within the connection limit
    assert normal.ask() == 200
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    outcome: dict[socket.socket, tuple[float, int | None]] = {}  # closed at, status
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    for _ in range(SLOWLORIS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.setblocking(False)
        opened[sock] = time.monotonic()
        selector.register(sock, selectors.EVENT_READ)
    sent = 0
    try:
        stop = time.monotonic() + REQUEST_TIMEOUT_S + 1.5
        while time.monotonic() < stop:
            for sock in opened:  # one more byte of a head that never ends
                if sock not in outcome:
                    with contextlib.suppress(OSError):
                        sock.send(head[sent : sent + 1])
            sent += 1
            for key, _ in selector.select(timeout=0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock not in outcome:
                    sock.setblocking(True)
                    outcome[sock] = (time.monotonic(), status_of(sock, 1.0))
            assert normal.ask() == 200
            time.sleep(0.1)
    finally:
        for sock in opened:
            sock.close()
    refused = [s for s, (_, status) in outcome.items() if status == 503]
    timed_out = [s for s, (_, status) in outcome.items() if status == 408]
    # The connections past the limit were refused at once (a refused one frees its slot, so
    # a later one may get in), the others timed out on time.
    assert refused
    assert len(timed_out) < MAX_CONNECTIONS  # the normal client holds one
    assert all(outcome[s][0] - opened[s] < 0.5 for s in refused)
    assert len(refused) + len(timed_out) == SLOWLORIS, {st for _, st in outcome.values()}
    lifetimes = [outcome[s][0] - opened[s] for s in timed_out]
    assert min(lifetimes) > REQUEST_TIMEOUT_S - 0.2
    assert max(lifetimes) < REQUEST_TIMEOUT_S + 1.0
    assert len(normal.latencies) > 10
    assert max(normal.latencies) < NORMAL_LATENCY_BOUND_S, max(normal.latencies)
    # The slots are free again: a new connection is served.
    assert Normal(port).ask() == 200


def test_a_client_that_never_reads_is_cut_off(port: int) -> None:
    normal = Normal(port)
    assert normal.ask() == 200
    # 60 pipelined scores of 1,000 unknown words: ~100 KB an answer, 6 MB in all, more than
    # loopback's socket buffers hold (~3 MB measured), so the server's writes stall until the
    # write timeout aborts the connection.
    words = [f"{'x' * 30}{i:04d}" for i in range(1000)]
    body = json.dumps({"text": "The ", "candidates": words}).encode()
    request = (
        f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    hostile = socket.socket()
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.connect(("127.0.0.1", port))
    try:
        hostile.sendall(request * PIPELINED)
        start = time.monotonic()
        while time.monotonic() - start < WRITE_TIMEOUT_S + 2.0:
            assert normal.ask() == 200
            time.sleep(0.05)
        assert max(normal.latencies) < NORMAL_LATENCY_BOUND_S, max(normal.latencies)
        received, closed = 0, False
        hostile.settimeout(2.0)
        try:
            while chunk := hostile.recv(1 << 16):
                received += len(chunk)
            closed = True
        except ConnectionResetError:
            closed = True
        assert closed
        assert received < PIPELINED * answer_bytes(port, body)  # only part of what it asked
    finally:
        hostile.close()


def answer_bytes(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/v1/score", body)
    return len(connection.getresponse().read())


def test_a_client_that_pipelines_too_much_is_disconnected(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
        sock.settimeout(5)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                received += chunk
    assert received.count(b"HTTP/1.1 200") < 5000


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"X-Big: " + b"a" * 20_000 + b"\r\n", id="one large header"),
        pytest.param(b"".join(b"X-%d: %s\r\n" % (i, b"b" * 100) for i in range(200)), id="many"),
    ],
)
def test_oversized_headers_get_431(port: int, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        assert status_of(sock) == 431


def test_a_head_sent_in_pieces_is_refused_at_the_limit(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # refused before it ends: the server closes
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for i in range(100):  # 100 KB in 1 KB reads, never finished
                sock.sendall(b"X-%03d: %s\r\n" % (i, b"c" * 1000))
                time.sleep(0.002)
        assert status_of(sock) == 431


def test_oversized_bodies_get_413(port: int) -> None:
    body = json.dumps({"text": "a " * MAX_BODY_BYTES}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = f"POST /v1/suggest HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        with contextlib.suppress(OSError):
            sock.sendall(head.encode() + body)
        assert status_of(sock) == 413
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # no length given
        sock.sendall(b"POST /v1/suggest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):
            for start in range(0, len(body), 16_384):
                piece = body[start : start + 16_384]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        assert status_of(sock) == 413


def test_a_body_that_never_ends_gets_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b'POST /v1/suggest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"te')
        start = time.monotonic()
        assert status_of(sock, REQUEST_TIMEOUT_S + 3) == 408
        assert REQUEST_TIMEOUT_S - 0.2 < time.monotonic() - start < REQUEST_TIMEOUT_S + 1.0


def test_slow_bodies_do_not_fill_the_requests_in_flight(port: int) -> None:
    normal = Normal(port)
    assert normal.ask() == 200
    slow = []
    try:
        for _ in range(MAX_IN_FLIGHT + 20):  # each a request whose body never comes
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b'POST /v1/suggest HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{"')
            slow.append(sock)
        time.sleep(0.2)
        assert [normal.ask() for _ in range(10)] == [200] * 10
        assert status_of(slow[0], REQUEST_TIMEOUT_S + 3) == 408
    finally:
        for sock in slow:
            sock.close()


def test_keep_alive_requests_still_work(port: int) -> None:
    normal = Normal(port)
    assert [normal.ask() for _ in range(3)] == [200, 200, 200]
