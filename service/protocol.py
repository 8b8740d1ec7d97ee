"""The HTTP/1.1 protocol every connection runs: uvicorn's httptools protocol, with limits on
what one client can hold.

uvicorn alone times a connection out only *between* requests (``timeout_keep_alive``): a new
connection that never completes a request, a request head sent a byte at a time (slowloris) or
a body that never ends is held forever; a head is read whatever its size; a client that
pipelines requests and never reads the answers makes it read and queue everything it sends; a
response the client never reads keeps its task waiting for ever; and ``limit_concurrency``
counts idle keep-alive connections as load, so once that many are open *every* request gets
503. Here, per process (:class:`ConnectionLimits`, from ``NEXTWORD_*`` settings):

* ``request_timeout_s``: a request must arrive whole (head and body) within this long of its
  first byte, and a new connection must send its first request within this long of opening;
  else 408 (nothing for a connection that sent nothing) and the connection is closed. The clock
  waits while the server, not the client, holds things up (a response in progress, reading
  paused for a large body or pipelined requests).
* ``max_header_bytes``: a request head larger than this (request line and headers) gets 431
  and the connection is closed; a head that arrives in pieces is refused as soon as it passes
  the limit, so at most the limit plus one read is buffered.
* ``max_connections``: a connection past this many gets 503 with ``Retry-After`` and is closed
  at once; the open ones are served as before.
* ``max_in_flight``: requests read but not yet answered (those still receiving their body
  excepted). More get 503 with ``Retry-After`` at once, on the same keep-alive connection,
  before their body is read, written here without starting a task (the cheapest answer: under
  overload most requests get it). Light requests run on the event loop
  (:meth:`service.runtime.Runtime.call`), so under overload they wait as event-loop tasks, not
  in the admission queue: this is what bounds that wait.
* ``write_timeout_s``: a response that cannot be written for this long (the client reads
  nothing and the socket's buffers are full) aborts the connection, which frees its task.
* :data:`MAX_PIPELINED` requests at most wait behind the one being answered on a connection;
  one more and the connection is closed (uvicorn answers it 400).

These refusals are answered here, before the app sees the request: ``/metrics`` does not count
them. uvicorn's keep-alive timeout (``NEXTWORD_KEEP_ALIVE_S``) still closes idle connections.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

ASGIApp = Callable[..., Any]
RETRY_AFTER_S = 1
MAX_PIPELINED = 64
"""Requests a connection may send ahead of its answers (HTTP/1.1 pipelining); a client that
sends more is disconnected. uvicorn resumes reading whenever a request reads its body, so
without a cap one client that pipelines and never reads its answers makes the server parse and
queue everything it sends (1.5 GB of resident memory in 8 s, measured)."""


class TooManyPipelined(Exception):
    """Raised in a parser callback to stop reading a connection that pipelines too much."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What one server process allows its clients (see the module docstring)."""

    request_timeout_s: float = 10.0
    write_timeout_s: float = 10.0
    max_header_bytes: int = 16_384
    max_connections: int = 1024
    max_in_flight: int = 128


def protocol_factory(limits: ConnectionLimits) -> Callable[..., asyncio.Protocol]:
    """What uvicorn's ``http`` option takes to run :class:`GuardedProtocol` with ``limits``:
    a partial of a module-level class, so it pickles for worker processes."""
    return functools.partial(GuardedProtocol, limits=limits, load=Load())


class Load:
    """What the connections of one server process count together."""

    def __init__(self) -> None:
        self.receiving = 0
        """Requests started (their task runs) whose body is still arriving: they wait on the
        client, so they do not count as in flight (a client that sends bodies slowly must not
        fill ``max_in_flight`` for everyone; ``request_timeout_s`` bounds them)."""


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _raw_response(
    status: int, reason: str, body: bytes, *, retry: bool = False, close: bool = True
) -> bytes:
    """A whole response, written to the transport directly."""
    retry_after = f"retry-after: {RETRY_AFTER_S}\r\n" if retry else ""
    connection = "connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{retry_after}{connection}\r\n"
    )
    return head.encode() + body


def _refusal(status: int, body: bytes, *, close: bool) -> ASGIApp:
    """An ASGI app that answers every request with ``status`` and ``body`` (JSON)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers.append((b"connection", b"close") if close else (b"retry-after", b"%d" % RETRY_AFTER_S))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


_OVERLOADED = _error_body("overloaded", "too many requests in flight; retry shortly")
_TOO_MANY_CONNECTIONS = _raw_response(
    503, "Service Unavailable", _error_body("overloaded", "too many connections"), retry=True
)
_TIMEOUT = _raw_response(
    408, "Request Timeout", _error_body("timeout", "the request did not arrive in time")
)
_HEAD_TOO_LARGE_BODY = _error_body("headers_too_large", "the request headers are too large")
_HEAD_TOO_LARGE = _raw_response(431, "Request Header Fields Too Large", _HEAD_TOO_LARGE_BODY)
_SHED = _refusal(503, _OVERLOADED, close=False)
_REFUSE_HEAD = _refusal(431, _HEAD_TOO_LARGE_BODY, close=True)
_SHED_RAW = _raw_response(503, "Service Unavailable", _OVERLOADED, retry=True, close=False)
_SHED_AND_CLOSE = _raw_response(503, "Service Unavailable", _OVERLOADED, retry=True)


class _Answered:
    """In uvicorn's place of the request being answered, for one answered without a task."""

    response_started = response_complete = True
    disconnected = False

    def __init__(self) -> None:
        self.message_event = asyncio.Event()


class GuardedProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with :class:`ConnectionLimits` (one instance a connection)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
        load: Load,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.load = load
        self._receiving = False  # counted in load.receiving
        self.limit_concurrency = None  # uvicorn's check counts idle connections: see above
        self._deadline: asyncio.TimerHandle | None = None  # for the request being read
        self._write_deadline: asyncio.TimerHandle | None = None
        self._reading = False  # between a request's first byte and its last
        self._in_head = False  # between its first byte and the end of its headers
        self._head_bytes = 0  # bytes of the head counted so far (those of whole reads)
        self._begun = 0  # requests begun on this connection
        self._running: RequestResponseCycle | None = None  # the request being answered
        self._answered = cast(RequestResponseCycle, _Answered())

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._close_with(_TOO_MANY_CONNECTIONS)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._received()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)
        running = self._running
        if running is not None and not running.response_complete:
            # uvicorn tells only the last request read (self.cycle); with pipelined requests
            # the one being answered is an earlier one, which would write to a closed socket.
            running.disconnected = True
            running.message_event.set()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._arm()  # any byte starts the clock, even bytes that begin no request
        # A read is all head when the head began before it and is still open after it.
        head, begun = self._in_head, self._begun
        super().data_received(data)
        if head and self._in_head and self._begun == begun:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._close_with(_HEAD_TOO_LARGE)

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = self._in_head = True
        self._head_bytes = 0
        self._begun += 1
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.pipeline) >= MAX_PIPELINED:
            # Stops the parser; uvicorn answers 400 and closes the connection.
            raise TooManyPipelined(f"over {MAX_PIPELINED} pipelined requests")
        refusal = None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            refusal = _REFUSE_HEAD
        elif len(self.tasks) - self.load.receiving >= self.limits.max_in_flight:
            if (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
                self._shed()
                return
            refusal = _SHED  # behind a request being answered: in turn, as a task
        if refusal is None:
            super().on_headers_complete()
            if self._running is self.cycle:  # started now (not queued behind another)
                self._receiving = True
                self.load.receiving += 1
            return
        app, self.app = self.app, refusal  # uvicorn starts the request's task with self.app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _shed(self) -> None:
        """Answer 503 at once, without a task: under overload most requests are refused, and
        this costs them least. The rest of the request's body is dropped as it arrives, as
        after any answer (uvicorn's body callbacks skip a request whose answer is complete)."""
        self.cycle = self._answered
        if not self.parser.should_keep_alive():
            self._close_with(_SHED_AND_CLOSE)
            return
        self.transport.write(_SHED_RAW)
        self.on_response_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = False
        self._received()
        self._disarm()

    def _received(self) -> None:
        if self._receiving:
            self._receiving = False
            self.load.receiving -= 1

    # -- write flow control ------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(
                self.limits.write_timeout_s, self._write_timed_out
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_timed_out(self) -> None:
        self._write_deadline = None
        self.transport.abort()  # nothing more can be written: the buffers are full

    # -- the request deadline ----------------------------------------------------------------

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.limits.request_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the request being answered: the previous one while a head arrives
        answering = cycle is not None and not cycle.response_complete
        if self.flow.read_paused or (answering and (self._in_head or not self._reading)):
            self._arm()  # the server holds things up, not the client: wait on
        elif not self._reading:
            self.transport.close()  # it sent no request (or only blank lines)
        elif not self._in_head and cycle is not None and cycle.response_started:
            self.transport.close()  # answered (or being answered) before its body came
        else:
            self._close_with(_TIMEOUT)

    def _close_with(self, response: bytes) -> None:
        self._disarm()
        self.transport.write(response)
        self.transport.close()
