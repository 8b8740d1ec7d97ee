"""Small stand-ins for the serving unit tests: a numpy recurrent encoder with the ONNX encoder's
interface, and an in-memory bundle over a toy vocabulary.  End-to-end tests use the real bundle."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.batcher import Batcher
from service.bundle import Bundle
from service.decode import DecodeTree
from service.predictor import Predictor, PredictorOptions
from service.sessions import ContextCache, SessionCache
from service.tree import Tree

VOCAB = [
    "<eos>", "the", ",", ".", "of", "<unk>", "and", "in", "The", "to", "a", "was", "weather",
    "weak", "wealth", "weapon", "New", "York", "he", "she", "it", "'s", "@-@", "well", "known",
    "Valkyria", "game", "games", "gamer", "bad", "worse", "1", "@,@", "000", "Wealth", "x",
]  # fmt: skip


class FakeEncoder:
    """``h_t = tanh(E[x_t] + h_{t-1} R)``, ``hidden_t = h_t O``; rows never interact."""

    def __init__(
        self, vocab_size: int, *, state_size: int = 8, hidden_size: int = 6, seed: int = 0
    ) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.standard_normal((vocab_size, state_size))
        self.recur = rng.standard_normal((state_size, state_size)) * 0.5
        self.out = rng.standard_normal((state_size, hidden_size))
        self.layers, self.state_size, self.hidden_size = 1, state_size, hidden_size
        self.delay_s = 0.0
        self.calls: list[tuple[int, int]] = []  # (batch, time) of every run
        self._lock = threading.Lock()

    def zero_state(self, batch: int = 1) -> npt.NDArray[np.float32]:
        return np.zeros((1, batch, self.state_size), dtype=np.float32)

    def run(
        self, tokens: npt.NDArray[np.int64], state: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        with self._lock:
            self.calls.append((int(tokens.shape[0]), int(tokens.shape[1])))
        if self.delay_s:
            time.sleep(self.delay_s)
        h = state[0].astype(np.float64)  # (B, S)
        hidden = np.zeros((tokens.shape[0], tokens.shape[1], self.hidden_size))
        for t in range(tokens.shape[1]):
            h = np.tanh(self.embed[tokens[:, t]] + h @ self.recur)
            hidden[:, t] = h @ self.out
        return hidden.astype(np.float32), h[None].astype(np.float32)


def balanced_tree(num_leaves: int) -> Tree:
    """Pairs nodes level by level (leaves first, root last)."""
    child_ptr, children = [0], []
    level, next_id = list(range(num_leaves)), num_leaves
    while len(level) > 1:
        merged = []
        for i in range(0, len(level) - 1, 2):
            children += [level[i], level[i + 1]]
            child_ptr.append(len(children))
            merged.append(next_id)
            next_id += 1
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    return Tree(num_leaves, child_ptr, children)


def make_bundle(vocab: list[str] = VOCAB, hidden_size: int = 6, seed: int = 1) -> Bundle:
    rng = np.random.default_rng(seed)
    tree = balanced_tree(len(vocab))
    weight = rng.standard_normal((len(vocab) - 1, hidden_size)).astype(np.float32)
    bias = rng.standard_normal(len(vocab) - 1).astype(np.float32)
    manifest = {"name": "fake", "special_tokens": {"eos": "<eos>", "unk": "<unk>"}}
    return Bundle(Path("/nonexistent"), manifest, list(vocab), tree, weight, bias)


def make_predictor(
    options: PredictorOptions | None = None, *, cache_size: int = 16, context_cache_size: int = 0
) -> tuple[Predictor, FakeEncoder, Batcher]:
    """A predictor over :data:`VOCAB` with a fake encoder; the caller stops the batcher."""
    bundle = make_bundle()
    encoder = FakeEncoder(len(bundle.vocab))
    batcher = Batcher(encoder)
    batcher.start()
    predictor = Predictor(
        bundle,
        DecodeTree.from_bundle(bundle),
        batcher,
        SessionCache(cache_size, ttl_s=60.0),
        encoder.zero_state(1),
        options or PredictorOptions(),
        ContextCache(context_cache_size),
    )
    return predictor, encoder, batcher
