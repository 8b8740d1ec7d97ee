"""service.middleware on a bare Starlette app: request ids, Server-Timing, route labels, body
limits."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestMiddleware
from service.responses import error_response


async def echo(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, "too_large", exc.detail)


def _client() -> tuple[TestClient, Metrics]:
    metrics = Metrics()
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=100)
    app.add_middleware(RequestMiddleware, metrics=metrics, routes={"/echo"})
    return TestClient(app), metrics


def test_fresh_request_ids_are_unique_and_clients_ids_are_kept() -> None:
    client, _ = _client()
    ids = {client.post("/echo", content=b"x").headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50
    kept = client.post("/echo", content=b"x", headers={"x-request-id": "req-7"})
    assert kept.headers["x-request-id"] == "req-7"
    odd = client.post("/echo", content=b"x", headers={"x-request-id": "a\x01b"})
    assert odd.headers["x-request-id"] != "a\x01b"


def test_server_timing_gives_the_apps_time() -> None:
    client, _ = _client()
    response = client.post("/echo", content=b"x")
    name, duration = response.headers["server-timing"].split(";")
    assert name == "app"
    assert duration.startswith("dur=")
    assert 0.0 < float(duration[4:]) < 1000.0  # ms


def test_routes_and_statuses_are_counted() -> None:
    client, metrics = _client()
    client.post("/echo", content=b"x")
    client.get("/scanner/probe")
    text = metrics.render().decode()
    assert 'nextword_requests_total{route="/echo",status="200"} 1.0' in text
    assert 'nextword_requests_total{route="unmatched",status="404"} 1.0' in text


def test_declared_and_streamed_bodies_over_the_limit_get_413() -> None:
    client, _ = _client()
    assert client.post("/echo", content=b"x" * 100).json() == {"bytes": 100}
    declared = client.post("/echo", content=b"x" * 101)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"x" * 30

    streamed = client.post("/echo", content=chunks())  # chunked: no content-length
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "too_large"
