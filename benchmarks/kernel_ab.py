"""The decode kernels of a git revision against the working tree's, side by side in one process.

A change to :mod:`service.decode_kernels` that saves 10-20 % is lost in the drift between two
runs on a shared machine, so this times both versions on the same searches in one run. The
base revision's ``service/decode_kernels.py`` (``git show``) is imported as a module of its
own and a second :class:`service.decode.DecodeTree` is bound to it; every search then runs on
both trees, in alternating order (whichever runs second finds the rows the first just read in
cache, so each goes first half the time), and must give the same words and log-probabilities.

Searches: hidden vectors from the bundle's encoder over WikiText-2 validation words, each with
the exact top-``k`` next words and the completions of the first one, two and three letters of
the word that really came next (case-folded, as a lowercase prefix is matched), the searches a
keyboard runs on every keystroke.

    python benchmarks/kernel_ab.py --bundle bundles/default --base HEAD [--data DIR]

Prints median / mean / p99 µs per search kind and version and their ratio; writes
``benchmarks/results/kernel_ab.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.decode import summary  # noqa: E402
from benchmarks.head_decode import encode, validation_words  # noqa: E402
from benchmarks.runinfo import run_info, write_result  # noqa: E402
from service import decode, decode_kernels  # noqa: E402
from service.bundle import load_bundle  # noqa: E402

KERNELS = "service/decode_kernels.py"
LETTERS = (0, 1, 2, 3)
"""Prefix lengths timed: 0 is the next word without a prefix."""


def base_kernels(revision: str, workdir: Path) -> ModuleType:
    """``service/decode_kernels.py`` as of ``revision``, imported as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{KERNELS}"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    path = workdir / "base_decode_kernels.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("base_decode_kernels", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Bound:
    """A decode tree that runs on one kernels module: :mod:`service.decode` looks its kernels
    up as the module global ``kernels`` at each call, so it is swapped in around every call."""

    def __init__(self, tree: decode.DecodeTree, kernels: ModuleType) -> None:
        self.tree = tree
        self.kernels = kernels
        self.search(np.zeros(tree.hidden_size, dtype=np.float32), 3, "")  # binds its entry point
        saved = _swap_kernels(kernels)
        try:
            decode.warm_up(tree)
        finally:
            _swap_kernels(saved)

    def search(self, hidden: np.ndarray, k: int, prefix: str) -> tuple[decode.TopK, float]:
        saved = _swap_kernels(self.kernels)
        try:
            start = time.perf_counter()
            found = decode.top_k(self.tree, hidden, k, prefix=prefix or None)
            return found, (time.perf_counter() - start) * 1e6
        finally:
            _swap_kernels(saved)


def _swap_kernels(kernels: ModuleType) -> ModuleType:
    """Make ``kernels`` the module :mod:`service.decode` calls; return the one it replaces."""
    saved: ModuleType = getattr(decode, "kernels")  # noqa: B009  (not exported by decode)
    setattr(decode, "kernels", kernels)  # noqa: B010
    return saved


Times = dict[int, dict[str, list[float]]]
"""Microseconds per search: prefix letters -> version -> samples."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle = load_bundle(args.bundle)
    words = validation_words(args.data, args.samples)
    hidden = encode(bundle, words)
    nexts = [w.casefold() for w in words[1:]]
    with tempfile.TemporaryDirectory() as workdir:
        base = base_kernels(args.base, Path(workdir))
        versions = {
            "base": Bound(decode.DecodeTree.from_bundle(bundle), base),
            "new": Bound(decode.DecodeTree.from_bundle(bundle), decode_kernels),
        }
        times, expansions = time_versions(versions, hidden, nexts, args.k, args.rounds)
    rows = [summarise(letters, times[letters], expansions[letters]) for letters in LETTERS]
    return {"bundle": str(args.bundle), "base": args.base, "k": args.k, "rows": rows}


def time_versions(
    versions: dict[str, Bound], hidden: np.ndarray, nexts: list[str], k: int, rounds: int
) -> tuple[Times, dict[int, list[int]]]:
    """Every search on both versions, taking turns at going first; the versions must agree."""
    times: Times = {n: {name: [] for name in versions} for n in LETTERS}
    expansions: dict[int, list[int]] = {n: [] for n in LETTERS}
    turn = 0
    # A first, untimed pass over a few positions compiles what warm_up does not reach (the
    # base module's kernels are compiled in memory, on their first call).
    for timed in [False] + [True] * rounds:
        for i, h in enumerate(hidden if timed else hidden[:20]):
            for letters in LETTERS:
                if letters and not (len(nexts[i]) >= letters and nexts[i][:letters].isalpha()):
                    continue
                prefix = nexts[i][:letters]
                found = {}
                for name in sorted(versions, reverse=turn % 2 == 1):
                    found[name], us = versions[name].search(h, k, prefix)
                    if timed:
                        times[letters][name].append(us)
                turn += 1
                a, b = found.values()
                if not (np.array_equal(a.ids, b.ids) and np.array_equal(a.logprobs, b.logprobs)):
                    raise SystemExit(f"the versions differ on prefix {prefix!r} at position {i}")
                if timed:
                    expansions[letters].append(a.expansions)
    return times, expansions


def summarise(letters: int, times: dict[str, list[float]], expansions: list[int]) -> dict[str, Any]:
    stats = {
        name: {**summary(np.asarray(us)), "mean_us": round(float(np.mean(us)), 2)}
        for name, us in times.items()
    }
    base, new = stats["base"], stats["new"]
    return {
        "prefix_letters": letters,
        "searches": len(times["base"]),
        "mean_expansions": round(float(np.mean(expansions)), 1),
        **stats,
        "new_over_base_mean": round(new["mean_us"] / base["mean_us"], 3),
        "new_over_base_median": round(new["median_us"] / base["median_us"], 3),
        "new_over_base_p99": round(new["p99_us"] / base["p99_us"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default", help="bundle")
    parser.add_argument("--data", default=None, help="WikiText-2 directory (validation words)")
    parser.add_argument("--base", default="HEAD", help="git revision of the base kernels")
    parser.add_argument("--k", type=int, default=5, help="words per search")
    parser.add_argument("--samples", type=int, default=400, help="validation positions")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the positions")
    parser.add_argument("--result", default="kernel_ab", help="results/<name>.json")
    args = parser.parse_args()
    info = run_info()
    result = {**info, **run(args)}
    print(f"{'letters':>7}{'searches':>9}{'exp':>8}  {'base med/mean/p99 µs':>24}  "
          f"{'new med/mean/p99 µs':>24}{'new/base':>9}")  # fmt: skip
    for r in result["rows"]:
        base, new = r["base"], r["new"]
        print(
            f"{r['prefix_letters']:>7}{r['searches']:>9}{r['mean_expansions']:>8.0f}  "
            f"{base['median_us']:>8.1f}{base['mean_us']:>8.1f}{base['p99_us']:>8.1f}  "
            f"{new['median_us']:>8.1f}{new['mean_us']:>8.1f}{new['p99_us']:>8.1f}"
            f"{r['new_over_base_mean']:>9.3f}"
        )
    print(f"wrote {write_result(args.result, result)}")


if __name__ == "__main__":
    main()
