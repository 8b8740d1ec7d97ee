"""The serving runtime: everything a request needs, loaded and warmed once per process.

:func:`build_runtime` loads and verifies the bundle, opens the encoder session, prepares the tree
for decoding, compiles the decode kernels and takes every request path once (warm-up), so the
first real request pays nothing extra.  :meth:`Runtime.call` runs request work behind the bounded
admission queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from service import adaptation, decode
from service.adaptation import CacheConfig
from service.admission import Admission
from service.batcher import Batcher
from service.bundle import Bundle, load_bundle
from service.encoder import Encoder
from service.metrics import Metrics
from service.policy import PolicyConfig
from service.predictor import Predictor, PredictorOptions
from service.responses import ApiError
from service.sessions import ContextCache, SessionCache
from service.settings import Settings

T = TypeVar("T")

RETRY_AFTER_S = 1


@dataclass
class Runtime:
    """What the routes use; built in the lifespan from the settings and the bundle."""

    settings: Settings
    bundle: Bundle
    encoder: Encoder
    batcher: Batcher
    predictor: Predictor
    executor: ThreadPoolExecutor
    admission: Admission
    model_ref: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        files = self.bundle.manifest.get("files", {})
        version = self.bundle.manifest.get("version") or str(files.get("encoder.onnx", "?"))[:12]
        self.model_ref = {"name": self.bundle.name, "version": str(version)}

    async def call(
        self, fn: Callable[..., T], /, *args: Any, light: bool = False, **kwargs: Any
    ) -> T:
        """Run ``fn`` on a request thread, if the queue has room; else refuse with 429.

        ``light`` marks work short enough (about a millisecond, a few at most) to run on the
        event loop itself, as ``settings.inline_light`` allows. A thread hop costs two context
        switches and, under load, waits for the GIL, which the loop thread holds while it parses
        other requests (up to the switch interval). Heavy work never runs inline: while it runs
        the loop reads no sockets, so requests arriving meanwhile would wait unseen (and, at
        shutdown, be dropped as idle connections).
        """
        if not self.admission.try_enter():
            raise ApiError(
                429, "overloaded", "too many requests in flight; retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        policy = self.settings.inline_light
        if light and (policy == "always" or (policy == "when_idle" and self.admission.depth == 1)):
            try:
                return fn(*args, **kwargs)
            finally:
                self.admission.leave()
        future = asyncio.get_running_loop().run_in_executor(
            self.executor, partial(fn, *args, **kwargs)
        )
        # Leave when the work is done, not when the client gives up: the thread is busy till then.
        future.add_done_callback(lambda _: self.admission.leave())
        return await future


def cache_config(settings: Settings, bundle: Bundle) -> CacheConfig:
    """The session cache's settings: each one from the environment if set, else as tuned for
    the bundle (its manifest's ``adaptation``, written by ``benchmarks/cache_ppl.py --record``),
    else :class:`CacheConfig`'s defaults."""
    tuned = bundle.manifest.get("adaptation", {})
    chosen = {
        "size": settings.cache_size if settings.cache_size is not None else tuned.get("size"),
        "theta": settings.cache_theta if settings.cache_theta is not None else tuned.get("theta"),
        "lam": settings.cache_lambda if settings.cache_lambda is not None else tuned.get("lam"),
        "dtype": tuned.get("dtype"),
    }
    return CacheConfig(**{name: value for name, value in chosen.items() if value is not None})


def build_runtime(settings: Settings, metrics: Metrics) -> Runtime:
    """Load, verify and warm everything a request needs (seconds; before /readyz says ready)."""
    bundle = load_bundle(settings.bundle)
    encoder = Encoder.from_bundle(
        bundle, providers=settings.providers, intra_op_threads=settings.intra_op_threads
    )
    encoder.warm_up(bundle.eos_id)
    decode_tree = decode.DecodeTree.from_bundle(bundle)
    decode.warm_up(decode_tree)
    adaptation.warm_up(decode_tree.hidden_size)
    batcher = Batcher(
        encoder,
        max_batch_size=settings.max_batch_size,
        max_wait_us=settings.max_wait_us,
        on_batch=metrics.batch_size.observe,
    )
    batcher.start()
    options = PredictorOptions(
        beam_width=settings.beam_width,
        max_expansions=settings.max_expansions,
        default_budget_ms=settings.default_budget_ms,
        block_list=tuple(settings.block_list),
        policy=PolicyConfig(
            capital_penalty=settings.capital_penalty,
            reoffer=settings.reoffer,
            contractions=settings.contractions,
            session_words=settings.session_words,
        ),
        cache=cache_config(settings, bundle),
    )
    sessions = SessionCache(settings.session_cache_size, settings.session_ttl_s)
    contexts = ContextCache(settings.context_cache_size)
    predictor = Predictor(
        bundle, decode_tree, batcher, sessions, encoder.zero_state(1), options, contexts
    )
    predictor.warm_up()
    admission = Admission(settings.queue_limit, on_reject=metrics.rejected.inc)
    # Read at scrape time: setting a gauge on every request would cost more than it tells.
    metrics.queue_depth.set_function(lambda: admission.depth)
    return Runtime(
        settings=settings,
        bundle=bundle,
        encoder=encoder,
        batcher=batcher,
        predictor=predictor,
        executor=ThreadPoolExecutor(
            settings.request_threads, thread_name_prefix="nextword-request"
        ),
        admission=admission,
    )
