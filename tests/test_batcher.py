"""service.batcher: batched results equal unbatched ones; concurrency, grouping, errors, stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
from service_fakes import FakeEncoder

from service.batcher import Batcher


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder(50, state_size=4, hidden_size=3)


@pytest.fixture
def batcher(encoder: FakeEncoder) -> Iterator[Batcher]:
    b = Batcher(encoder, max_batch_size=8)
    b.start()
    yield b
    b.stop()


def _inputs(
    encoder: FakeEncoder, rng: np.random.Generator, length: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    tokens = rng.integers(0, 50, size=(1, length)).astype(np.int64)
    state = rng.standard_normal((1, 1, encoder.state_size)).astype(np.float32)
    return tokens, state


def test_idle_call_runs_inline_with_the_encoders_result(
    batcher: Batcher, encoder: FakeEncoder
) -> None:
    tokens, state = _inputs(encoder, np.random.default_rng(0), 5)
    hidden, state_out = batcher.encode(tokens, state)
    want_hidden, want_state = encoder.run(tokens, state)
    np.testing.assert_array_equal(hidden, want_hidden)
    np.testing.assert_array_equal(state_out, want_state)
    assert encoder.calls == [(1, 5), (1, 5)]


def test_concurrent_calls_of_mixed_lengths_equal_unbatched_results(
    batcher: Batcher, encoder: FakeEncoder
) -> None:
    rng = np.random.default_rng(1)
    inputs = [_inputs(encoder, rng, int(rng.integers(1, 4))) for _ in range(64)]
    encoder.delay_s = 0.002  # keep the encoder busy so that callers queue up and get batched
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda args: batcher.encode(*args), inputs))
    encoder.delay_s = 0.0
    for (tokens, state), (hidden, state_out) in zip(inputs, results, strict=True):
        want_hidden, want_state = encoder.run(tokens, state)
        np.testing.assert_allclose(hidden, want_hidden, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(state_out, want_state, rtol=1e-6, atol=1e-6)
    batched = [batch for batch, _ in encoder.calls[:-64]]
    assert max(batched) > 1, "concurrent callers were never batched"
    assert max(batched) <= 8


def test_multi_row_jobs_keep_their_rows(batcher: Batcher, encoder: FakeEncoder) -> None:
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 50, size=(3, 2)).astype(np.int64)
    state = rng.standard_normal((1, 3, encoder.state_size)).astype(np.float32)
    hidden, state_out = batcher.encode(tokens, state)
    assert hidden.shape == (3, 2, 3)
    assert state_out.shape == (1, 3, encoder.state_size)
    for row in range(3):
        want_hidden, want_state = encoder.run(tokens[row : row + 1], state[:, row : row + 1])
        np.testing.assert_allclose(hidden[row : row + 1], want_hidden, rtol=1e-6)
        np.testing.assert_allclose(state_out[:, row : row + 1], want_state, rtol=1e-6)


def test_max_wait_gathers_a_batch(encoder: FakeEncoder) -> None:
    batcher = Batcher(encoder, max_batch_size=4, max_wait_us=2_000_000)
    batcher.start()
    rng = np.random.default_rng(3)
    inputs = [_inputs(encoder, rng, 1) for _ in range(4)]
    batcher._busy.acquire()  # as if the encoder were running: the first call must queue
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.encode, *inputs[0])]
        while batcher.queued < 1:
            threading.Event().wait(0.001)
        batcher._busy.release()  # the worker now waits up to 2 s for three more rows
        threading.Event().wait(0.02)
        futures += [pool.submit(batcher.encode, *args) for args in inputs[1:]]
        results = [future.result(timeout=5) for future in futures]
    batcher.stop()
    assert encoder.calls[0] == (4, 1)
    for (tokens, state), (hidden, _) in zip(inputs, results, strict=True):
        np.testing.assert_allclose(hidden, encoder.run(tokens, state)[0], rtol=1e-6)


class _Broken:
    def run(
        self, tokens: npt.NDArray[np.int64], state: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        raise RuntimeError("encoder failed")


def test_encoder_errors_reach_every_caller() -> None:
    batcher = Batcher(_Broken())
    batcher.start()
    tokens = np.zeros((1, 1), dtype=np.int64)
    state = np.zeros((1, 1, 2), dtype=np.float32)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.encode, tokens, state) for _ in range(8)]
        for future in futures:
            with pytest.raises(RuntimeError, match="encoder failed"):
                future.result(timeout=5)
    batcher.stop()


def test_stop_finishes_queued_jobs(encoder: FakeEncoder) -> None:
    batcher = Batcher(encoder)
    batcher.start()
    encoder.delay_s = 0.01
    rng = np.random.default_rng(4)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(batcher.encode, *_inputs(encoder, rng, 1)) for _ in range(6)]
        while batcher.queued == 0 and not all(f.done() for f in futures):
            threading.Event().wait(0.001)
        batcher.stop()
        assert all(f.result(timeout=5)[0].shape == (1, 1, 3) for f in futures)
