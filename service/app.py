"""The HTTP app: ``create_app(settings)``, a lifespan that loads and warms the bundle, thin routes.

Routes only translate between HTTP and :class:`service.predictor.Predictor`; the work runs through
:meth:`service.runtime.Runtime.call` (bounded queue, request threads off the event loop).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar, cast

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response

from service.collector import IdleCollector
from service.metrics import CONTENT_TYPE, Metrics
from service.middleware import BodyLimitMiddleware, RequestMiddleware
from service.playground import add_playground
from service.predictor import Score, Suggested
from service.responses import ApiError, error_response, json_response
from service.runtime import Runtime, build_runtime
from service.schemas import (
    ErrorBody,
    ModelInfo,
    ScoreRequest,
    ScoreResponse,
    Status,
    SuggestRequest,
    SuggestResponse,
)
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI would run a plain def dependency on a worker thread, a hop per request.
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        raise ApiError(503, "not_ready", "the model is still loading", {"Retry-After": "1"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
_ERROR_CAUSES = {
    400: "The body is not valid JSON (or not UTF-8).",
    413: "The text or the request body is too large.",
    422: "A field is missing, of the wrong type, out of range or unknown.",
    429: "The request queue is full; retry after Retry-After seconds.",
    503: "The model is still loading; retry after Retry-After seconds.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` for the errors a route can answer (tests/test_fuzz.py checks)."""
    return {s: {"model": ErrorBody, "description": _ERROR_CAUSES[s]} for s in statuses}


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the bundle is loaded when the app starts (lifespan), not here."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings, metrics)
        # Everything loaded so far (the web stack, numba, the vocabulary's indexes) lives as
        # long as the process. Moving it out of the collector's reach keeps full collections,
        # which otherwise walk all of it, from stalling a request for milliseconds.
        gc.collect()
        gc.freeze()
        collector = IdleCollector(
            lambda: runtime.admission.depth == 0, on_collect=metrics.observe_collection
        )
        if settings.gc_when_idle:
            collector.start()
        app.state.runtime = runtime
        log.info(
            "nextword ready: %s on %s", runtime.bundle.name, ", ".join(runtime.encoder.providers)
        )
        try:
            yield
        finally:
            app.state.runtime = None
            await collector.stop()
            gc.unfreeze()
            runtime.executor.shutdown(wait=True)
            runtime.batcher.stop()

    app = FastAPI(
        title="nextword",
        summary="Next-word suggestions from a hierarchical-softmax language model",
        lifespan=lifespan,
        strict_content_type=False,  # a JSON body without a content-type header is still JSON
        # OpenTelemetry hooks cost a few µs per request; /metrics serves Prometheus instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = None
    app.state.metrics = metrics
    _add_routes(app, settings, metrics)
    add_playground(app)
    app.router.routes.sort(key=lambda route: getattr(route, "path", "") not in HOT_PATHS)
    _add_error_handlers(app)
    routes = {route.path for route in app.routes if hasattr(route, "path")}
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMiddleware, metrics=metrics, routes=routes)
    return app


LIGHT_TEXT_CHARS = 512
LIGHT_MAX_WORDS = 3
LIGHT_CANDIDATES = 50
"""Requests within these limits are *light*: a full encode of up to ~130 tokens plus a search
or a 3-word beam, about a millisecond (a few at most). They run on the event loop itself
(``NEXTWORD_INLINE_LIGHT``), which at 200 requests/s cut the load test's p99 from 11.7 to 8.7 ms:
on request threads, phrases and scores kept waiting for the GIL between their many short
native calls. Longer work still goes to the request threads, so the loop keeps reading."""


class _DirectRoute(APIRoute):
    """A route whose endpoint takes the :class:`Request` and returns the :class:`Response`.

    FastAPI's request handler (dependency solving, body reading, response validation) cost
    ~60 µs a request here; these endpoints need none of it, so it is skipped. Starlette still
    wraps the endpoint (exception handlers apply), and the route's arguments still document
    the body and response in the OpenAPI schema.
    """

    def get_route_handler(self) -> Callable[[Request], Any]:
        return cast(Callable[[Request], Any], self.endpoint)


HOT_PATHS = ("/v1/suggest", "/v1/score")
"""Checked first when routing: each route tried before the matching one costs ~4 µs."""


def _add_routes(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    # The two hot routes parse their body themselves: FastAPI's body parameter plus a dependency
    # cost ~0.1 ms per request here, against ~0.03 ms for one model_validate_json call.
    Endpoint = Callable[[Request], Awaitable[Response]]

    def direct(
        path: str, response_model: type[BaseModel], body: type[BaseModel], **bounds: dict[str, int]
    ) -> Callable[[Endpoint], Endpoint]:
        def add(endpoint: Endpoint) -> Endpoint:
            app.router.add_api_route(
                path, endpoint, methods=["POST"], response_model=response_model,
                responses=_errors(400, 413, 422, 429, 503), openapi_extra=_body(body, bounds),
                route_class_override=_DirectRoute,
            )  # fmt: skip
            return endpoint

        return add

    text = {"maxLength": settings.max_text_chars}  # longer texts get 413

    @direct(
        "/v1/suggest", SuggestResponse, SuggestRequest, text=text,
        k={"maximum": settings.max_k}, max_words={"maximum": settings.max_words},
    )  # fmt: skip
    async def suggest(request: Request) -> Response:
        """Complete the partly typed word, or suggest the next words."""
        body = await _parse(request, SuggestRequest)
        _check_limits(settings, body.text, k=body.k, max_words=body.max_words)
        runtime = await get_runtime(request)
        options = body.model_dump(exclude={"text"})  # the fields are suggest()'s keywords
        light = body.max_words <= LIGHT_MAX_WORDS and len(body.text) <= LIGHT_TEXT_CHARS
        result = await runtime.call(runtime.predictor.suggest, body.text, light=light, **options)
        metrics.observe_suggest(
            result.expansions,
            exact=result.exact,
            with_session=body.session_id is not None,
            state_reused=result.state_reused,
        )
        return json_response(suggest_body(result, runtime.model_ref))

    @direct(
        "/v1/score", ScoreResponse, ScoreRequest, text=text,
        candidates={"maxItems": settings.max_candidates},
    )  # fmt: skip
    async def score(request: Request) -> Response:
        """Score candidate next words or phrases: log P(candidate | text)."""
        body = await _parse(request, ScoreRequest)
        _check_limits(settings, body.text, candidates=len(body.candidates))
        runtime = await get_runtime(request)
        light = len(body.candidates) <= LIGHT_CANDIDATES and len(body.text) <= LIGHT_TEXT_CHARS
        scores, seconds = await runtime.call(
            _timed, runtime.predictor.score, body.text, body.candidates, body.session_id,
            light=light,
        )  # fmt: skip
        return json_response(score_body(scores, seconds, runtime.model_ref))

    @app.get("/v1/model", response_model=ModelInfo, responses=_errors(503))
    async def model(runtime: RuntimeDep) -> Response:
        """The bundle's manifest: model, tree and evaluation metrics."""
        info = {**runtime.model_ref, "manifest": runtime.bundle.manifest}
        return json_response({**info, "providers": runtime.encoder.providers})

    @app.get("/healthz", response_model=Status)
    async def healthz() -> Response:
        """The process is alive."""
        return json_response({"status": "ok"})

    @app.get("/readyz", response_model=Status, responses=_errors(503))
    async def readyz(runtime: RuntimeDep) -> Response:
        """The bundle is loaded and warm."""
        return json_response({"status": "ready"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)


Model = TypeVar("Model", bound=BaseModel)


async def _parse(request: Request, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _body(model: type[BaseModel], bounds: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses ``model`` itself, with the bounds that
    settings put on its fields (``{"text": {"maxLength": 2000}}``) over the model's own."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, keywords in bounds.items():
        schema["properties"][name].update(keywords)
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _check_limits(
    settings: Settings, text: str, *, k: int = 1, max_words: int = 1, candidates: int = 0
) -> None:
    if len(text) > settings.max_text_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"text has {len(text)} characters; the limit is {settings.max_text_chars}",
        )
    for name, value, limit in (
        ("k", k, settings.max_k),
        ("max_words", max_words, settings.max_words),
        ("candidates", candidates, settings.max_candidates),
    ):
        if value > limit:
            raise ApiError(
                422, "invalid_request", f"{name} is {value}; this server allows at most {limit}"
            )


def suggest_body(result: Suggested, model_ref: dict[str, str]) -> dict[str, Any]:
    timing = result.timing
    return {
        "suggestions": [
            {"text": s.text, "prob": s.prob, "logprob": s.logprob} for s in result.suggestions
        ],
        "partial_word": result.partial_word,
        "exact": result.exact,
        "expansions": result.expansions,
        "unexplored_mass": result.unexplored_mass,
        "timing_ms": {
            "tokenize": timing.tokenize,
            "encode": timing.encode,
            "decode": timing.decode,
            "total": timing.total,
        },
        "model": model_ref,
    }


def score_body(scores: list[Score], seconds: float, model_ref: dict[str, str]) -> dict[str, Any]:
    rows = [
        {
            "candidate": s.candidate,
            "logprob": s.logprob,
            "prob": math.exp(s.logprob),
            "in_vocab": s.in_vocab,
        }
        for s in scores
    ]
    return {"scores": rows, "timing_ms": seconds * 1000.0, "model": model_ref}


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


# -- errors ------------------------------------------------------------------------------------

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        for error in errors:
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error") or error.get("msg", "")
                message = f"the request body is not valid JSON ({reason})"
                return error_response(400, "invalid_json", message)
        return error_response(422, "invalid_request", _describe(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 400:
            # FastAPI's only 400: a body its JSON parser could not decode (e.g. invalid UTF-8).
            return error_response(400, "invalid_json", "the request body is not valid UTF-8 JSON")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left, or was timed out (service/protocol.py), before its body came: the
        # answer goes nowhere, and it is no server error to log.
        return error_response(400, "disconnected", "the client disconnected")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal", "internal error")


def _describe(errors: Any) -> str:
    parts = []
    for error in list(errors)[:3]:
        if tuple(error.get("loc", ())) in ((), ("body",)):
            return "the request body must be a JSON object"
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
