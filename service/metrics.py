"""Prometheus metrics of one app, in its own registry (no process-global state, so tests and
several apps in one process never collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Fine below 5 ms, where keystrokes are: a p99 read from bucket bounds is within 0.1-0.5 ms.
_LATENCY_BUCKETS = (
    0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001, 0.00125, 0.0015, 0.00175,
    0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
)  # fmt: skip
_EXPANSION_BUCKETS = (1, 10, 30, 100, 300, 1000, 3000, 10_000, 100_000, 1_000_000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class Metrics:
    """The service's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nextword_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nextword_request_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.expansions = Histogram(
            "nextword_decode_expansions",
            "tree nodes expanded per suggest request",
            buckets=_EXPANSION_BUCKETS,
            registry=self.registry,
        )
        self.inexact = Counter(
            "nextword_decode_inexact",
            "suggest requests stopped by the budget or the expansion cap",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "nextword_queue_depth", "requests admitted and not yet answered", registry=self.registry
        )
        self.rejected = Counter(
            "nextword_rejected",
            "requests refused because the queue was full",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "nextword_encoder_batch_size",
            "rows per encoder call",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.sessions = Counter(
            "nextword_session_lookups",
            "suggest requests with a session_id, by whether its state was reused",
            ["result"],
            registry=self.registry,
        )
        self.contexts = Counter(
            "nextword_context_cache_lookups",
            "suggest requests without a session_id, by whether a cached context state was reused",
            ["result"],
            registry=self.registry,
        )
        self.collections = Counter(
            "nextword_gc_collections",
            "garbage collections by the idle collector, by generation and whether a request "
            "was in flight (overdue under load)",
            ["generation", "when"],
            registry=self.registry,
        )
        self._by_label: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._state_lookups = {
            (True, True): self.sessions.labels("reused"),
            (True, False): self.sessions.labels("full_encode"),
            (False, True): self.contexts.labels("reused"),
            (False, False): self.contexts.labels("full_encode"),
        }

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        children = self._by_label.get((route, status))
        if children is None:  # labels() costs a few µs, so each pair is looked up once
            code = str(status)
            children = (self.requests.labels(route, code), self.latency.labels(route, code))
            self._by_label[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_suggest(
        self, expansions: int, *, exact: bool, with_session: bool, state_reused: bool
    ) -> None:
        """One /v1/suggest result: did it resume from a session's or a cached context's state?"""
        self.expansions.observe(expansions)
        if not exact:
            self.inexact.inc()
        self._state_lookups[(with_session, state_reused)].inc()

    def observe_collection(self, generation: int, idle: bool) -> None:
        self.collections.labels(str(generation), "idle" if idle else "overdue").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
