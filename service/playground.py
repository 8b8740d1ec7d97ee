"""The playground page: ``GET /`` serves a page to type in and watch the suggestions.

One HTML page, its stylesheet and its script, from ``service/static/`` (package data: they are
in the wheel and in the serving image). No CDN, no build step, no framework: the page works
offline, and it is a client of the public API only (``POST /v1/suggest``, URLs relative to the
page, so it also works behind a path prefix). The files are read when the app is built; the
routes stay out of the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {
    "/": ("playground.html", "text/html; charset=utf-8"),
    "/playground.css": ("playground.css", "text/css; charset=utf-8"),
    "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
}
"""Path -> (file in ``STATIC``, content type)."""

HEADERS = {
    # The page loads nothing but its own files and talks to nothing but this server.
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def add_playground(app: FastAPI) -> None:
    """Add ``GET /`` and the page's two files to ``app``."""
    for path, (name, media_type) in PAGES.items():
        content = (STATIC / name).read_bytes()
        app.add_api_route(
            path, _serve(content, media_type), methods=["GET"], include_in_schema=False
        )


def _serve(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve() -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)

    return serve
