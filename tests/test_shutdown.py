"""Graceful shutdown: SIGTERM under load loses no request the server had already received.

The real server (``python -m service serve``) runs on the tiny bundle; client threads keep
requests in flight on keep-alive connections (long texts, no session and no context cache, so
each request encodes the whole text; 50 five-word phrases: each takes a while, and the server's
one request thread queues them for a few hundred ms). SIGTERM is sent only once enough
requests have been outstanding for longer than ``MARGIN_S`` (observed by the clients), so the
precondition below does not depend on how fast this machine happens to serve them.

Every request sent before the signal (by ``MARGIN_S``, time for the event loop to have
read it) must get a 200 with a full body; requests sent around or after it may be refused, since
the server stops accepting, but never answered with an error status. The queue is longer than
uvicorn's fixed 0.1 s pause before its graceful timeout, so a server that did not wait for
in-flight requests fails this test (checked by setting the grace period to 0). The process then
exits cleanly: uvicorn finishes the lifespan shutdown and, since 0.29, re-raises the captured
SIGTERM, so "cleanly" is status 0 or death by that SIGTERM after the shutdown completed (logged).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 32
MARGIN_S = 0.02
LOAD_BEFORE_SIGNAL_S = 1.0
# Signal when at least this many clients have had a request outstanding for > MARGIN_S: enough
# margin over the WORKERS // 2 the test requires for a few to finish between check and signal.
READY_IN_FLIGHT = WORKERS * 3 // 4
READY_TIMEOUT_S = 30.0
GRACE_S = 10.0
TEXT = "The game was played at the stadium in front of a large crowd , and " * 120


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() when the request was written
    done: float
    status: int | None  # None: the connection failed (refused, reset or closed)
    complete: bool  # a JSON body with suggestions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tiny_bundle: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {
        **os.environ,
        "NEXTWORD_BUNDLE": str(tiny_bundle),
        "NEXTWORD_HOST": "127.0.0.1",
        "NEXTWORD_PORT": str(port),
        "NEXTWORD_GRACEFUL_SHUTDOWN_S": str(GRACE_S),
        # One request thread: the in-flight requests queue for longer than uvicorn's fixed 0.1 s
        # pause before its graceful timeout starts, so a server that did not wait would fail.
        "NEXTWORD_REQUEST_THREADS": "1",
        # Every request encodes its whole text: a cached context would make them so fast that
        # few stay in flight for MARGIN_S (the cause of this test's former flakiness).
        "NEXTWORD_CONTEXT_CACHE_SIZE": "0",
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--log-level", "info"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(process, port, tmp_path / "server.log")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log.close()


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the server was not ready in 120 s: {log.read_text()}")


def client(
    port: int, stop: threading.Event, outcomes: list[Outcome], pending: list[float | None], me: int
) -> None:
    """Send requests back to back on one keep-alive connection until the server goes away;
    ``pending[me]`` holds when the outstanding request was sent (None between requests)."""
    # The heaviest request the API takes (k 50, five-word phrases: a beam of 50 through four
    # encoder steps) keeps each one in flight far longer than MARGIN_S.
    body = json.dumps({"text": TEXT, "k": 50, "max_words": 5})
    headers = {"content-type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        sent = time.monotonic()
        pending[me] = sent
        try:
            connection.request("POST", "/v1/suggest", body, headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            pending[me] = None
            outcomes.append(Outcome(sent, time.monotonic(), None, False))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            time.sleep(0.01)
            continue
        pending[me] = None
        complete = response.status == 200 and bool(json.loads(payload)["suggestions"])
        outcomes.append(Outcome(sent, time.monotonic(), response.status, complete))
    connection.close()


def wait_in_flight(pending: list[float | None]) -> None:
    """Return once READY_IN_FLIGHT clients have had a request outstanding for over MARGIN_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        aged = time.monotonic() - MARGIN_S
        if sum(1 for sent in list(pending) if sent is not None and sent < aged) >= READY_IN_FLIGHT:
            return
        time.sleep(0.001)
    pytest.fail(f"fewer than {READY_IN_FLIGHT} requests were ever in flight for {MARGIN_S} s")


def test_sigterm_under_load_finishes_in_flight_requests(
    server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    process, port = server
    stop = threading.Event()
    outcomes: list[Outcome] = []
    pending: list[float | None] = [None] * WORKERS
    threads = [
        threading.Thread(target=client, args=(port, stop, outcomes, pending, i), daemon=True)
        for i in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_BEFORE_SIGNAL_S)
    wait_in_flight(pending)

    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    exit_status = process.wait(timeout=GRACE_S + 20)
    stop.set()
    for thread in threads:
        thread.join(timeout=35)

    received = [o for o in outcomes if o.sent < signalled - MARGIN_S]
    in_flight = [o for o in received if o.done > signalled]
    # The test means something only if requests were actually in flight at the signal.
    assert len(in_flight) >= WORKERS // 2, f"only {len(in_flight)} requests were in flight"
    assert all(o.complete for o in received), [o for o in received if not o.complete]
    assert all(o.status in (None, 200) for o in outcomes), {o.status for o in outcomes}
    assert exit_status in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
