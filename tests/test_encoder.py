"""service.encoder on the real tiny bundle: shapes, state carry, batch rows, session options."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from service.bundle import load_bundle
from service.encoder import Encoder, choose_providers


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    return Encoder.from_bundle(load_bundle(tiny_bundle), intra_op_threads=1)


def _tokens(encoder: Encoder, batch: int, steps: int, seed: int = 0) -> np.ndarray:
    # Ids below 20 exist in any vocabulary the tiny bundle can have.
    return np.random.default_rng(seed).integers(0, 20, size=(batch, steps)).astype(np.int64)


def test_shapes_and_zero_state(encoder: Encoder) -> None:
    state = encoder.zero_state(3)
    assert state.shape == (encoder.layers, 3, encoder.state_size)
    assert not state.any()
    hidden, state_out = encoder.run(_tokens(encoder, 3, 4), state)
    assert hidden.shape == (3, 4, encoder.hidden_size)
    assert hidden.dtype == np.float32
    assert state_out.shape == state.shape


def test_state_carries_a_text_across_calls(encoder: Encoder) -> None:
    tokens = _tokens(encoder, 1, 9, seed=1)
    whole, whole_state = encoder.run(tokens, encoder.zero_state(1))
    first, state = encoder.run(tokens[:, :5], encoder.zero_state(1))
    rest, rest_state = encoder.run(tokens[:, 5:], state)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), whole, atol=1e-5)
    np.testing.assert_allclose(rest_state, whole_state, atol=1e-5)


def test_batch_rows_are_independent(encoder: Encoder) -> None:
    tokens = _tokens(encoder, 4, 3, seed=2)
    rng = np.random.default_rng(3)
    state = rng.standard_normal((encoder.layers, 4, encoder.state_size)).astype(np.float32) * 0.1
    hidden, state_out = encoder.run(tokens, state)
    for row in range(4):
        alone, alone_state = encoder.run(tokens[row : row + 1], state[:, row : row + 1])
        np.testing.assert_allclose(hidden[row : row + 1], alone, atol=1e-5)
        np.testing.assert_allclose(state_out[:, row : row + 1], alone_state, atol=1e-5)


def test_threads_are_explicit_and_do_not_spin(tiny_bundle: Path) -> None:
    encoder = Encoder.from_bundle(load_bundle(tiny_bundle), intra_op_threads=2)
    options = encoder.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert encoder.providers == ["CPUExecutionProvider"]
    encoder.warm_up()


def test_unavailable_cuda_falls_back_to_cpu_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.encoder"):
        chosen = choose_providers(["cuda", "cpu"], ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["cuda"], both) == both
