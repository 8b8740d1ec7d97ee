"""Dynamic micro-batching of encoder calls across concurrent requests (Triton's dynamic batcher).

Callers (request threads) call :meth:`Batcher.encode` with ``tokens (b, T)`` and ``state (L, b, S)``
and block until their rows are encoded.  When the encoder is idle and nobody waits, the caller
runs it itself (no thread hop on an idle server); otherwise its job joins a queue that a worker
thread drains: it takes up to ``max_batch_size`` rows in arrival order, optionally waiting up to
``max_wait_us`` for more, and runs one encoder call per sequence length.  A recurrent state after
padding would be wrong, so rows are only ever batched with rows of the same length: each row's
result is exactly what encoding it alone gives.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]
Encoded = tuple[Floats, Floats]


class EncoderLike(Protocol):
    def run(self, tokens: Tokens, state: Floats) -> Encoded: ...


@dataclass
class _Job:
    tokens: Tokens  # (b, T)
    state: Floats  # (L, b, S)
    result: Future[Encoded] = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return int(self.tokens.shape[0])


class Batcher:
    """Serialises encoder use and merges concurrent same-length calls into one batch."""

    def __init__(
        self,
        encoder: EncoderLike,
        *,
        max_batch_size: int = 32,
        max_wait_us: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_us / 1e6
        self._on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._busy = threading.Lock()  # held while the encoder runs
        self._stopping = False
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        if self._worker is None:
            self._stopping = False
            self._worker = threading.Thread(
                target=self._serve, name="nextword-batcher", daemon=True
            )
            self._worker.start()

    def stop(self) -> None:
        """Finish every queued job, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def encode(self, tokens: Tokens, state: Floats) -> Encoded:
        """Encode ``tokens (b, T)`` from ``state (L, b, S)``; return ``hidden (b, T, d)``, state."""
        if not self._queue and self._busy.acquire(blocking=False):
            try:
                return self._run_inline(tokens, state)
            finally:
                self._busy.release()
        job = _Job(tokens, state)
        with self._cond:
            if self._worker is None:
                raise RuntimeError("the batcher is not running")
            self._queue.append(job)
            self._cond.notify()
        return job.result.result()

    def _run_inline(self, tokens: Tokens, state: Floats) -> Encoded:
        result = self.encoder.run(tokens, state)
        if self._on_batch is not None:
            self._on_batch(int(tokens.shape[0]))
        return result

    # -- the worker --------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
            with self._busy:
                for group in _by_length(self._take_batch()):
                    self._run_group(group)

    def _take_batch(self) -> list[_Job]:
        deadline = time.perf_counter() + self.max_wait_s
        with self._cond:
            while self._queued_rows() < self.max_batch_size and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Job] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_size):
                job = self._queue.popleft()
                batch.append(job)
                rows += job.rows
            return batch

    def _queued_rows(self) -> int:
        return sum(job.rows for job in self._queue)

    def _run_group(self, group: list[_Job]) -> None:
        try:
            tokens = np.concatenate([job.tokens for job in group], axis=0)
            state = np.concatenate([job.state for job in group], axis=1)
            hidden, state_out = self.encoder.run(tokens, state)
        except Exception as exc:  # every waiter must hear about it
            for job in group:
                job.result.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(int(tokens.shape[0]))
        start = 0
        for job in group:
            stop = start + job.rows
            job.result.set_result((hidden[start:stop], state_out[:, start:stop]))
            start = stop


def _by_length(jobs: list[_Job]) -> list[list[_Job]]:
    groups: dict[int, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(int(job.tokens.shape[1]), []).append(job)
    return list(groups.values())
