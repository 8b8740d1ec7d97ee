"""benchmarks/kernel_ab.py: both kernel versions run every search, and must agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.kernel_ab import LETTERS, Bound, base_kernels, summarise, time_versions
from service import decode, decode_kernels
from service.bundle import load_bundle


def test_a_revision_against_the_working_tree_agrees_and_restores_the_kernels(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(tiny_bundle)
    base = base_kernels("HEAD", tmp_path)
    assert base is not decode_kernels
    assert hasattr(base, "start_search")
    versions = {
        "base": Bound(decode.DecodeTree.from_bundle(bundle), base),
        "new": Bound(decode.DecodeTree.from_bundle(bundle), decode_kernels),
    }
    assert decode.kernels is decode_kernels  # swapped back after every call
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((6, bundle.weight.shape[1])).astype(np.float32)
    nexts = ["the", "of", "a", "and", "in", "to"]
    times, expansions = time_versions(versions, hidden, nexts, k=3, rounds=2)
    assert decode.kernels is decode_kernels
    for letters in LETTERS:
        # every position with a word of at least that many letters, twice, on both versions
        expected = 2 * sum(len(w) >= letters for w in nexts)
        assert len(times[letters]["base"]) == len(times[letters]["new"]) == expected
        assert len(expansions[letters]) == expected
    row = summarise(1, times[1], expansions[1])
    assert row["searches"] == 12
    assert row["new_over_base_mean"] == pytest.approx(
        row["new"]["mean_us"] / row["base"]["mean_us"], abs=1e-3
    )


class _Answers:
    """A stand-in version whose every search finds the given word."""

    def __init__(self, word: int) -> None:
        self.word = word

    def search(self, hidden: np.ndarray, k: int, prefix: str) -> tuple[decode.TopK, float]:
        found = decode.TopK(np.array([self.word]), np.array([-1.0]), 1, True, 0.0)
        return found, 1.0


def test_versions_that_disagree_stop_the_run() -> None:
    hidden = np.zeros((2, 4), dtype=np.float32)
    versions = {"base": _Answers(1), "new": _Answers(2)}
    with pytest.raises(SystemExit, match="differ"):
        time_versions(versions, hidden, ["ab", "cd"], k=1, rounds=1)  # type: ignore[arg-type]
