"""The recurrent encoder: one onnxruntime session with explicit providers and threads.

``run(tokens (B, T) int64, state (L, B, S)) -> (hidden (B, T, d), state_out (L, B, S))`` with the
IO names of :mod:`service.bundle`.  All zeros is the state at the start of a text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.bundle import INPUT_STATE, INPUT_TOKENS, OUTPUT_HIDDEN, OUTPUT_STATE, Bundle

log = logging.getLogger(__name__)

Tokens = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]

_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def choose_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """Map setting names to onnxruntime providers, dropping (with a warning) what is missing."""
    chosen: list[str] = []
    for name in wanted:
        provider = _PROVIDER_NAMES[name]
        if provider in available:
            chosen.append(provider)
        else:
            log.warning(
                "onnxruntime provider %s is not available here; using CPU instead", provider
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class Encoder:
    """One inference session; ``run`` is safe to call from one thread at a time per batch."""

    def __init__(
        self,
        model_path: Path,
        *,
        layers: int,
        state_size: int,
        hidden_size: int,
        providers: Sequence[str] = ("cpu",),
        intra_op_threads: int = 1,
    ) -> None:
        options = ort.SessionOptions()
        # Request threads and the batcher already occupy cores; spinning ORT threads would steal
        # them while idle, and inter-op parallelism has nothing to overlap in a recurrent graph.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen = choose_providers(providers, ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_path), options, providers=chosen)
        self.providers: list[str] = self.session.get_providers()
        self.layers = layers
        self.state_size = state_size
        self.hidden_size = hidden_size

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, *, providers: Sequence[str] = ("cpu",), intra_op_threads: int = 1
    ) -> Encoder:
        spec = bundle.manifest["encoder"]
        return cls(
            bundle.encoder_path,
            layers=int(spec["layers"]),
            state_size=int(spec["state_size"]),
            hidden_size=int(bundle.manifest["hidden_size"]),
            providers=providers,
            intra_op_threads=intra_op_threads,
        )

    def zero_state(self, batch: int = 1) -> Floats:
        """The state at the start of a text, ``(L, batch, S)``."""
        return np.zeros((self.layers, batch, self.state_size), dtype=np.float32)

    def run(self, tokens: Tokens, state: Floats) -> tuple[Floats, Floats]:
        """Encode ``tokens (B, T)`` from ``state (L, B, S)`` -> ``hidden (B, T, d)``, new state."""
        hidden, state_out = self.session.run(
            [OUTPUT_HIDDEN, OUTPUT_STATE],
            {
                INPUT_TOKENS: np.ascontiguousarray(tokens, dtype=np.int64),
                INPUT_STATE: np.ascontiguousarray(state, dtype=np.float32),
            },
        )
        return hidden, state_out

    def warm_up(self, token: int = 0) -> None:
        """Run the shapes serving uses once, so the first request does not pay for allocation."""
        for batch, steps in ((1, 1), (1, 8), (4, 1)):
            self.run(np.full((batch, steps), token, dtype=np.int64), self.zero_state(batch))
