"""Pure ASGI middleware: request id, ``Server-Timing`` and latency metrics; the body size limit.

FastAPI's ``@app.middleware("http")`` wraps every request in extra tasks and streams; these only
wrap ``send`` or ``receive``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Collection, Iterator

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics
from service.responses import error_response

REQUEST_ID = b"x-request-id"
SERVER_TIMING = b"server-timing"
_MAX_ID_LENGTH = 128


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        # Label unknown paths alike, so a scanner cannot blow up the metrics' cardinality.
        self.routes = frozenset(routes)
        self._next_id = _request_ids().__next__

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _client_request_id(scope) or self._next_id()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The routes write their whole body before the start is sent, so this is the
                # server's time for the request (W3C Server-Timing: browsers and load
                # generators read it per request; the histogram only has bucket bounds).
                spent = f"app;dur={(time.perf_counter() - start) * 1000.0:.3f}".encode()
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (REQUEST_ID, request_id),
                        (SERVER_TIMING, spent),
                    ],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            route = path if path in self.routes else "unmatched"
            self.metrics.observe_request(route, status, time.perf_counter() - start)


def _client_request_id(scope: Scope) -> bytes | None:
    """The client's ``x-request-id`` when it is a sane token."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID:
            if (
                0 < len(value) <= _MAX_ID_LENGTH
                and value.isascii()
                and value.decode().isprintable()
            ):
                return bytes(value)
            break
    return None


def _request_ids() -> Iterator[bytes]:
    """Unique ids at a counter's cost (uuid4 takes ~5 µs): a random prefix and a number."""
    prefix = uuid.uuid4().hex[:12]
    for number in itertools.count():
        yield f"{prefix}-{number:x}".encode()


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                error = self._too_large()
                await error_response(413, "too_large", error.detail)(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> HTTPException:
        # Raised inside the app, so the app's error handler writes the JSON body.
        return HTTPException(413, f"the request body is larger than {self.max_bytes} bytes")
