"""Serving configuration: one validated object, read from ``NEXTWORD_*`` environment variables.

Nothing here runs at import time: callers build ``Settings()`` (or pass fields explicitly in
tests) and hand the object to :func:`service.app.create_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["cpu", "cuda"]


def _split_words(value: object) -> object:
    """Accept a comma- or whitespace-separated string from the environment as a list."""
    if isinstance(value, str):
        return [word for word in value.replace(",", " ").split() if word]
    return value


class Settings(BaseSettings):
    """Everything the server can be told; field names map to ``NEXTWORD_<NAME>`` variables."""

    model_config = SettingsConfigDict(env_prefix="NEXTWORD_", extra="forbid", frozen=True)

    bundle: Path = Field(
        description="bundle directory (manifest.json, vocab.txt, encoder.onnx, tree.npz)"
    )
    providers: Annotated[list[Provider], NoDecode] = Field(
        default_factory=lambda: list[Provider](["cpu"]),
        description="onnxruntime providers in order of preference; cuda falls back to cpu",
    )
    intra_op_threads: int = Field(
        default=1, ge=1, le=64, description="onnxruntime intra-op threads"
    )
    request_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="threads that run tokenizing and decoding off the event loop",
    )
    # "always": 1,266 vs 882 requests/s at saturation with the same load (loadtest A/B).
    inline_light: Literal["never", "when_idle", "always"] = Field(
        default="always",
        description="run light requests (short texts, up to 3-word phrases, up to 50 candidates) "
        "on the event loop instead of a request thread: never, only when idle, or always",
    )
    gc_when_idle: bool = Field(
        default=True,
        description="run Python's garbage collector between requests instead of inside them "
        "(service/collector.py); false: CPython's automatic collection",
    )
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    max_wait_us: int = Field(
        default=0, ge=0, le=100_000, description="how long a batch waits for more requests (µs)"
    )
    queue_limit: int = Field(
        default=64, ge=1, le=100_000, description="requests admitted at once; more get 429"
    )
    # Memory bounds, measured by benchmarks/sessions_memory.py (README, Reliability). A session
    # holds at most CACHE_SIZE x (d + 32) bytes of continuous cache (int8 vector, scale, next
    # word, sort order, the last p_cache), 8 bytes a token of its text, 4 x (S + d) of encoder
    # state and ~4 KB of objects: 305,859 bytes measured after 9,000 characters at d = 256, so
    # 1024 sessions take ~313 MB; within the k8s deployment's 1 GiB with the model (~300 MB).
    session_cache_size: int = Field(
        default=1024,
        ge=0,
        le=10_000_000,
        description="sessions kept (LRU); each holds its encoder state, its text's token ids "
        "and at most CACHE_SIZE cached states: at most SESSION_CACHE_SIZE x (CACHE_SIZE x "
        "(d + 32) + 8 x tokens + 4 x (S + d) + 4 KiB) bytes (~300 KB a session by default)",
    )
    session_ttl_s: float = Field(default=600.0, gt=0.0)
    context_cache_size: int = Field(
        default=4096,
        ge=0,
        le=10_000_000,
        description="encoder states shared by requests without session_id, by token ids (0: "
        "off): at most CONTEXT_CACHE_SIZE x (8 x tokens + 4 x (S + d) + 1 KiB) bytes (~4 KB for "
        "a sentence, 16 MB in all by default; texts of MAX_TEXT_CHARS could take 84 KB each)",
    )
    default_budget_ms: float = Field(default=20.0, gt=0.0, le=10_000.0)
    max_expansions: int = Field(default=200_000, ge=1)
    max_text_chars: int = Field(default=10_000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(
        default=2 << 20, ge=1024, description="larger request bodies get 413"
    )
    max_candidates: int = Field(default=1000, ge=1, le=1000)
    max_k: int = Field(default=50, ge=1, le=50)
    max_words: int = Field(default=5, ge=1, le=5)
    beam_width: int = Field(default=4, ge=1, le=64)
    block_list: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="tokens never suggested (comma or space separated)"
    )
    capital_penalty: float = Field(
        default=4.0,
        ge=1.0,
        le=1e6,
        description="after a lowercase prefix, a capitalised word ranks as if this many times "
        "less probable (1: no preference; sentence starts and typed capitals are exempt)",
    )
    reoffer: bool = Field(
        default=False,
        description="default for requests with a session: show again words passed over while "
        "typing the same word",
    )
    contractions: bool = Field(
        default=True, description="offer contractions such as don't and it's as one word"
    )
    session_words: bool = Field(
        default=True,
        description="offer back, within a session, words it typed that the vocabulary lacks",
    )
    cache_size: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="continuous-cache states per session (0: off; unset: the bundle's tuned "
        "value, else 990); each costs hidden_size + 8 bytes in int8 (264 at d = 256)",
    )
    cache_theta: float | None = Field(
        default=None, ge=0.0, le=100.0, description="cache flatness (unset: the bundle's)"
    )
    cache_lambda: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="cache weight in the mixture (unset: the bundle's)",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="server processes sharing the port; each loads the bundle and keeps its own "
        "caches (a keep-alive connection stays with one, so its session does too)",
    )
    # Connection limits (service/protocol.py): what one client can hold of a server process.
    request_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=3600.0,
        description="a request must arrive whole (head and body) within this many seconds of "
        "its first byte, and a new connection must send one within this of opening; else 408 "
        "and the connection is closed (slowloris, bodies that never end)",
    )
    keep_alive_s: int = Field(
        default=5, ge=1, le=3600, description="an idle keep-alive connection is closed after this"
    )
    write_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=3600.0,
        description="a response the client does not read for this many seconds (socket buffers "
        "full) aborts the connection",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1 << 20,
        description="a larger request head (request line and headers) gets 431",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="open connections per process; more get 503 with Retry-After and are closed",
    )
    max_in_flight: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="requests read but not yet answered per process, light ones included; more "
        "get 503 with Retry-After at once (bounds the wait under overload)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    graceful_shutdown_s: int = Field(default=10, ge=0, le=3600)
    # 0.5 ms, not Python's 5: with light requests on the event loop and phrases on request
    # threads, a thread waiting for the GIL waits up to this long, and the server's own latency
    # histogram at 200 requests/s showed p95 in the 3-5 ms bucket with 5 ms (loadtest A/B).
    switch_interval_ms: float = Field(
        default=0.5,
        gt=0.0,
        le=100.0,
        description="how long a busy thread may hold the GIL before a waiting one gets it",
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _providers_from_string(cls, value: object) -> object:
        return _split_words(value.lower() if isinstance(value, str) else value)

    @field_validator("block_list", mode="before")
    @classmethod
    def _block_list_from_string(cls, value: object) -> object:
        return _split_words(value)

    @field_validator("providers")
    @classmethod
    def _providers_not_empty(cls, value: list[Provider]) -> list[Provider]:
        if not value:
            raise ValueError("at least one provider is needed")
        return list(dict.fromkeys(value))
