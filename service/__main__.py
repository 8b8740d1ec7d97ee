"""``python -m service serve``: serve a bundle over HTTP with uvicorn.

Settings come from ``NEXTWORD_*`` environment variables; the flags override them.  On SIGTERM
uvicorn stops accepting connections and lets in-flight requests finish (up to
``NEXTWORD_GRACEFUL_SHUTDOWN_S`` seconds) before the lifespan shuts the runtime down.

Each connection runs :class:`service.protocol.GuardedProtocol` (uvicorn's httptools protocol
with request and write timeouts, a header size limit and caps on connections and requests in
flight, from ``NEXTWORD_*`` settings), so slow or hostile clients cannot hold the server.

With ``--workers N`` (``NEXTWORD_WORKERS``) uvicorn's supervisor binds the port and runs ``N``
worker processes that accept from it, each building :func:`worker_app` from the environment
(one process holds the GIL for its requests; more processes use more cores).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from service.app import create_app
from service.bundle import BundleError, read_manifest, verify_checksums
from service.protocol import ConnectionLimits, protocol_factory
from service.settings import Settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the bundle named by NEXTWORD_BUNDLE or --bundle"
    )
    serve.add_argument("--bundle", help="bundle directory (default: $NEXTWORD_BUNDLE)")
    serve.add_argument(
        "--host", help="interface to listen on (default: $NEXTWORD_HOST or 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, help="port (default: $NEXTWORD_PORT or 8000)")
    serve.add_argument(
        "--workers", type=int, help="server processes (default: $NEXTWORD_WORKERS or 1)"
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="server log level (default: %(default)s)",
    )  # fmt: skip
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in ("bundle", "host", "port", "workers")}
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args)
        # Fail before uvicorn starts, with one line instead of a lifespan traceback.
        verify_checksums(settings.bundle, read_manifest(settings.bundle))
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            print(f"error: setting NEXTWORD_{where.upper()}: {error['msg']}", file=sys.stderr)
        return 2
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": args.log_level,
        "access_log": False,  # per-request logging would cost more than a suggestion
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "timeout_keep_alive": settings.keep_alive_s,
        # httptools' protocol with timeouts and limits (service/protocol.py); a partial, which
        # uvicorn calls like a protocol class and pickles for worker processes.
        "http": protocol_factory(connection_limits(settings)),
    }
    if settings.workers == 1:
        set_switch_interval(settings)
        uvicorn.run(create_app(settings), **options)
    else:
        # Worker processes read their settings from the environment: pass the flags on.
        os.environ["NEXTWORD_BUNDLE"] = str(settings.bundle.resolve())
        uvicorn.run(
            "service.__main__:worker_app", factory=True, workers=settings.workers, **options
        )
    return 0


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        request_timeout_s=settings.request_timeout_s,
        write_timeout_s=settings.write_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=settings.max_connections,
        max_in_flight=settings.max_in_flight,
    )


def worker_app() -> FastAPI:
    """The app of one worker process (``--workers`` > 1), configured from the environment."""
    from_environment: dict[str, Any] = {}  # every field, the bundle included, from NEXTWORD_*
    settings = Settings(**from_environment)
    set_switch_interval(settings)
    return create_app(settings)


def set_switch_interval(settings: Settings) -> None:
    # Process-wide, so set here rather than in create_app: a request thread running Python code
    # keeps the event loop waiting for the GIL up to this long.
    sys.setswitchinterval(settings.switch_interval_ms / 1000.0)


if __name__ == "__main__":
    sys.exit(main())
