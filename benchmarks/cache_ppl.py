"""Continuous cache (Grave et al. 2017): perplexity against memory per session, tuned on valid.

A WikiText-2 split is read the way the corpus is (every line's tokens, then ``<eos>``; words
outside the bundle's vocabulary become ``<unk>``) and encoded by the bundle's ONNX encoder as
ONE running session, from the zero state after an ``<eos>``, in chunks that carry the state.
Every token is a target: ``h_t`` is the encoder's output before token ``t``. For each target:

* ``P_tree(w_t | h_t)`` from the tree (:func:`service.decode.word_log_probs`);
* ``p_cache(w_t | h_t)`` over the pairs ``(h_i, w_i)``, ``t - N <= i < t`` (the last ``N``
  positions), exactly :meth:`service.adaptation.ContinuousCache.distribution`, vectorised per
  chunk: one matrix of dot products between the chunk's hidden vectors and its sliding window;
* ``P_mix = (1 - lam) P_tree + lam p_cache`` (``P_tree`` alone for the first token, whose
  cache is empty).

``theta`` and ``lam`` are tuned per ``N`` on ``valid`` (keys in float32), then ``test`` is scored
at the chosen setting with the keys stored in float32, float16 and int8 (the serving default:
a byte per dimension and the fastest to score).
Memory per session is :func:`service.adaptation.state_bytes` per state. A spot check compares
the vectorised ``p_cache`` with :class:`~service.adaptation.ContinuousCache` itself.

    python benchmarks/cache_ppl.py [--bundle bundles/default] [--data DIR] [--record]

``--record`` writes the recommendation into the bundle's manifest (``adaptation``), where the
server reads its defaults for that bundle.

Prints tables, writes ``benchmarks/results/cache_ppl.json`` (date, machine, commit, bundle,
numbers) and, when matplotlib is installed, ``benchmarks/results/cache_ppl.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.runinfo import RESULTS, run_info, write_result  # noqa: E402
from service.adaptation import ContinuousCache, quantize, state_bytes  # noqa: E402
from service.bundle import MANIFEST_FILE, Bundle, load_bundle  # noqa: E402
from service.decode import DecodeTree, brute_force_log_probs, word_log_probs  # noqa: E402
from service.encoder import Encoder  # noqa: E402

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DATA_ENV = "NEXTWORD_DATA"
SIZES = (100, 250, 500, 750, 990, 2000, 4000)
THETAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
LAMS = tuple(round(0.025 * i, 3) for i in range(2, 17))  # 0.05 .. 0.4
BUDGET_BYTES = 256 * 1024
STORED = ("float32", "float16", "int8")
"""Key storage types measured on test; SERVING is what the recommendation is for."""
SERVING = "int8"
TARGET_RATIO = 0.70


# -- data and model --------------------------------------------------------------------------


def read_split(path: Path, index: dict[str, int], unk: int, eos: int) -> I64:
    """Token ids of a split as ``model_export.data`` forms them (without importing torch):
    lines split on ``\\n`` only, a trailing empty line dropped, each line's whitespace-split
    tokens then ``<eos>``; unknown words become ``<unk>``."""
    raw = path.read_text(encoding="utf-8").split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    ids = [tok for line in raw for tok in (*(index.get(w, unk) for w in line.split()), eos)]
    return np.asarray(ids, dtype=np.int64)


def encode(encoder: Encoder, ids: I64, first: int, chunk: int) -> F32:
    """``h_t`` for every target ``ids[t]``: the encoder's output after ``[first] + ids[:t]``."""
    inputs = np.concatenate([[first], ids[:-1]]).astype(np.int64)
    hidden = np.empty((ids.size, encoder.hidden_size), dtype=np.float32)
    state = encoder.zero_state(1)
    for start in range(0, ids.size, chunk):
        out, state = encoder.run(inputs[None, start : start + chunk], state)
        hidden[start : start + chunk] = out[0]
    return hidden


def tree_log_probs(dt: DecodeTree, hidden: F32, ids: I64) -> F64:
    """``log P_tree(ids[t] | hidden[t])`` for every ``t``."""
    out = np.empty(ids.size, dtype=np.float64)
    for t in range(ids.size):
        out[t] = word_log_probs(dt, hidden[t], ids[t : t + 1])[0]
    return out


# -- the cache, vectorised -------------------------------------------------------------------


@dataclass
class Window:
    """One chunk of targets ``t in [start, start + C)`` against the ``n_max`` pairs before each.

    Column ``j`` is the pair ``i = t - 1 - j`` (most recent first).
    """

    centered: F64  # (C, n_max): h_t . h_i minus the row's largest, -inf where i < 0
    match: tuple[I64, I64]  # (rows, cols) where w_i == w_t
    empty: npt.NDArray[np.bool_]  # (C,): no pair at all (t == 0)

    def first(self, n: int) -> Window:
        """The same targets against their last ``n <= n_max`` pairs (same shift per row)."""
        keep = self.match[1] < n
        return Window(self.centered[:, :n], (self.match[0][keep], self.match[1][keep]), self.empty)


def window(keys: F32, queries: F32, ids: I64, start: int, stop: int, n_max: int) -> Window:
    """Dot products of targets ``[start, stop)`` with their last ``n_max`` pairs, aligned so that
    column ``j`` is the pair ``j + 1`` steps back. ``keys`` are the stored (maybe rounded)
    hidden vectors, ``queries`` the exact ones."""
    rows = stop - start
    lo = start - n_max  # the first pair any row may see
    pad = max(0, -lo)
    block = keys[max(0, lo) : stop]
    if pad:
        block = np.concatenate([np.zeros((pad, keys.shape[1]), keys.dtype), block])
    full = np.ascontiguousarray(queries[start:stop] @ block.T)  # (C, n_max + C), float32
    # full[r, c] is the pair i = lo + c; row r (t = start + r) wants i = t - 1 - j, that is
    # c = r + n_max - 1 - j: a diagonal band, read as a strided view and flipped.
    s0, s1 = full.strides
    band = np.lib.stride_tricks.as_strided(full, shape=(rows, n_max), strides=(s0 + s1, s1))
    centered = band[:, ::-1].astype(np.float64)  # column j = j + 1 steps back
    words = np.concatenate([np.full(pad, -1, np.int64), ids[max(0, lo) : stop]])
    w0 = words.strides[0]
    aligned = np.lib.stride_tricks.as_strided(words, shape=(rows, n_max), strides=(w0, w0))
    match = np.nonzero(aligned[:, ::-1] == ids[start:stop, None])  # padding (-1) never matches
    t = np.arange(start, stop)
    if start < n_max:  # rows near the start of the text see fewer than n_max pairs
        centered[np.arange(n_max)[None, :] >= t[:, None]] = -np.inf
    peak = centered.max(axis=1)
    centered -= np.where(np.isfinite(peak), peak, 0.0)[:, None]
    return Window(centered, (match[0], match[1]), t == 0)


def cache_probs(win: Window, theta: float, sizes: tuple[int, ...]) -> F64:
    """``p_cache(w_t | h_t)`` for each row and each cache size ``N`` in ``sizes`` (ascending,
    at most the window's width): ``(len(sizes), C)``; 0 where the cache is empty.

    Float64 throughout: one shift per row serves every size, and a smaller window's terms
    (up to ``theta * 2 max|h|^2`` below the shift) stay far from underflow."""
    rows = win.centered.shape[0]
    if theta == 0.0:
        weights = np.isfinite(win.centered).astype(np.float64)
    else:
        weights = np.multiply(win.centered, theta)
        np.exp(weights, out=weights)  # exp(-inf) = 0 for the missing pairs
    segments = pairwise((0, *sizes))
    den = np.cumsum([weights[:, a:b].sum(axis=1) for a, b in segments], axis=0)
    r, c = win.match
    contrib = np.exp(theta * win.centered[r, c])
    segment = np.searchsorted(np.asarray(sizes), c, side="right")  # first size that includes c
    num = np.bincount(segment * rows + r, weights=contrib, minlength=(len(sizes) + 1) * rows)
    num = np.cumsum(num.reshape(len(sizes) + 1, rows)[: len(sizes)], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs: F64 = np.where(win.empty[None, :], 0.0, num / den)
    if not np.isfinite(probs).all():
        raise FloatingPointError(f"p_cache is not finite at theta {theta}: lower theta")
    return probs


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(total, s + size)) for s in range(0, total, size)]


def grid_cache_probs(
    hidden: F32, ids: I64, thetas: tuple[float, ...], sizes: tuple[int, ...], chunk: int
) -> F64:
    """``p_cache`` of every target for every theta and size: ``(thetas, sizes, T)``."""
    out = np.empty((len(thetas), len(sizes), ids.size), dtype=np.float64)
    for start, stop in chunks(ids.size, chunk):
        win = window(hidden, hidden, ids, start, stop, max(sizes))
        for a, theta in enumerate(thetas):
            out[a, :, start:stop] = cache_probs(win, theta, sizes)
    return out


def chosen_cache_probs(
    keys: F32, queries: F32, ids: I64, chosen: list[tuple[int, float]], chunk: int
) -> F64:
    """``p_cache`` of every target at each ``(N, theta)`` of ``chosen``: ``(len(chosen), T)``."""
    out = np.empty((len(chosen), ids.size), dtype=np.float64)
    n_max = max(n for n, _ in chosen)
    for start, stop in chunks(ids.size, chunk):
        win = window(keys, queries, ids, start, stop, n_max)
        for b, (n, theta) in enumerate(chosen):
            out[b, start:stop] = cache_probs(win.first(n), theta, (n,))[0]
    return out


def mixture_nll(tree_lp: F64, cache_p: F64, lam: float) -> F64:
    """Mean ``-log P_mix`` over the targets (the last axis of ``cache_p (..., T)``)."""
    mixed = (1.0 - lam) * np.exp(tree_lp) + lam * cache_p
    mixed[..., 0] = np.exp(tree_lp[0])  # the first target's cache is empty
    result: F64 = -np.log(mixed).mean(axis=-1)
    return result


def stored_keys(hidden: F32, dtype: str) -> F32:
    """The hidden vectors as a cache stored in ``dtype`` gives them back."""
    if dtype == "int8":
        steps, scale = quantize(hidden)
        return steps.astype(np.float32) * scale[:, None]
    return hidden.astype(dtype).astype(np.float32)


def spot_check(hidden: F32, ids: I64, n: int, theta: float, dtype: str, at: list[int]) -> float:
    """Largest relative difference between the vectorised ``p_cache`` of the targets at ``at``
    and :meth:`ContinuousCache.distribution` fed the same pairs."""
    keys = stored_keys(hidden, dtype)
    fast = chosen_cache_probs(keys, hidden, ids, [(n, theta)], chunk=2000)[0]
    worst = 0.0
    for t in at:
        cache = ContinuousCache(n, hidden.shape[1], theta=theta, dtype=dtype)
        cache.add(hidden[max(0, t - n) : t], ids[max(0, t - n) : t])
        reference = float(cache.distribution(hidden[t]).probs_of(ids[t : t + 1])[0])
        if reference == 0.0:
            worst = max(worst, abs(fast[t]))
        else:
            worst = max(worst, abs(fast[t] - reference) / reference)
    return worst


def tune(
    hidden: F32,
    ids: I64,
    tree_lp: F64,
    thetas: tuple[float, ...],
    sizes: tuple[int, ...],
    lams: F64,
    chunk: int,
    timings: dict[str, float],
) -> tuple[F64, list[tuple[int, float, float]]]:
    """Every theta x N x lam on valid: the nll grid ``(thetas, sizes, lams)`` and, per N, the
    best ``(N, theta, lam)``."""
    start = time.perf_counter()
    grid_p = grid_cache_probs(hidden, ids, thetas, sizes, chunk)  # (thetas, sizes, T)
    timings["valid_cache_grid_s"] = time.perf_counter() - start
    start = time.perf_counter()
    grid_nll = np.stack([mixture_nll(tree_lp, grid_p, lam) for lam in lams], axis=2)
    timings["valid_lam_grid_s"] = time.perf_counter() - start
    print(
        f"valid grid ({len(thetas)} thetas x {len(sizes)} sizes x {len(lams)} lams): "
        f"cache {timings['valid_cache_grid_s']:.1f} s, mixing {timings['valid_lam_grid_s']:.1f} s",
        flush=True,
    )
    chosen: list[tuple[int, float, float]] = []
    for b, n in enumerate(sizes):
        a, c = np.unravel_index(np.argmin(grid_nll[:, b, :]), grid_nll[:, b, :].shape)
        chosen.append((n, thetas[a], float(lams[c])))
    return grid_nll, chosen


def score_test(
    ids: I64,
    hidden: F32,
    tree_lp: F64,
    chosen: list[tuple[int, float, float]],
    chunk: int,
    timings: dict[str, float],
) -> dict[str, F64]:
    """Test nll at each chosen ``(N, theta, lam)``, keys stored in each of :data:`STORED`."""
    test_nll: dict[str, F64] = {}
    for dtype in STORED:
        start = time.perf_counter()
        keys = stored_keys(hidden, dtype)
        probs = chosen_cache_probs(keys, hidden, ids, [(n, th) for n, th, _ in chosen], chunk)
        test_nll[dtype] = np.array(
            [mixture_nll(tree_lp, probs[b], lam)[()] for b, (_, _, lam) in enumerate(chosen)]
        )
        timings[f"test_{dtype}_s"] = time.perf_counter() - start
    return test_nll


# -- reporting -------------------------------------------------------------------------------


def plot(rows: list[dict[str, Any]], base_ppl: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dtype, style in (("int8", "^-"), ("float16", "o-"), ("float32", "s--")):
        kib = [r[f"bytes_{dtype}"] / 1024 for r in rows]
        ax.plot(kib, [r[f"test_ppl_{dtype}"] for r in rows], style, label=f"cache, {dtype} keys")
    for r in rows:
        ax.annotate(f"N={r['size']}", (r[f"bytes_{SERVING}"] / 1024, r[f"test_ppl_{SERVING}"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)  # fmt: skip
    ax.axhline(base_ppl, color="grey", label=f"no cache ({base_ppl:.1f})")
    ax.axhline(TARGET_RATIO * base_ppl, color="grey", ls=":", label=f"{TARGET_RATIO:.2f}x target")
    ax.axvline(BUDGET_BYTES / 1024, color="red", ls=":", label="256 KiB per session")
    ax.set_xscale("log")
    ax.set_xlabel("memory per session (KiB)")
    ax.set_ylabel("test perplexity")
    ax.set_title(
        "Continuous cache: WikiText-2 test perplexity vs memory (theta, lam tuned on valid)"
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def print_table(rows: list[dict[str, Any]], base: dict[str, float]) -> None:
    print(f"\nno cache: valid ppl {base['valid']:.2f}, test ppl {base['test']:.2f}")
    head = f"{'N':>5} {'theta':>5} {'lam':>6} {'valid':>8} " + " ".join(
        f"{'test ' + d:>12} {'bytes ' + d:>13}" for d in STORED
    )
    print(head + f" {'ratio ' + SERVING:>11}")
    print("-" * (len(head) + 12))
    for r in rows:
        cells = " ".join(f"{r[f'test_ppl_{d}']:>12.2f} {r[f'bytes_{d}']:>13,}" for d in STORED)
        print(
            f"{r['size']:>5} {r['theta']:>5.1f} {r['lam']:>6.3f} {r['valid_ppl']:>8.2f} {cells} "
            f"{r[f'test_ratio_{SERVING}']:>11.3f}"
        )


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest N that fits the budget in :data:`SERVING`, at its valid-tuned theta and lam
    (valid perplexity falls as N grows, so within the budget the largest N is the valid
    choice)."""
    fitting = [r for r in rows if r[f"fits_budget_{SERVING}"]]
    if not fitting:
        return None
    best = max(fitting, key=lambda r: (r["size"], -r["valid_ppl"]))
    return {
        "size": best["size"],
        "theta": best["theta"],
        "lam": best["lam"],
        "dtype": SERVING,
        "bytes_per_session": best[f"bytes_{SERVING}"],
        "test_ratio": best[f"test_ratio_{SERVING}"],
        "meets_target": best[f"test_ratio_{SERVING}"] <= TARGET_RATIO,
    }


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", default=str(ROOT / "bundles" / "default"), help="bundle dir")
    parser.add_argument("--data", default=None, help=f"WikiText-2 dir (else ${DATA_ENV})")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="cache sizes N (states)"
    )
    parser.add_argument("--thetas", type=float, nargs="+", default=list(THETAS), help="theta grid")
    parser.add_argument("--lams", type=float, nargs="+", default=list(LAMS), help="lambda grid")
    parser.add_argument("--chunk", type=int, default=2000, help="targets per encoder/cache chunk")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="score only each split's first tokens (smoke)"
    )
    parser.add_argument("--name", default="cache_ppl", help="result file stem in results/")
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the recommended size/theta/lam into the bundle manifest's 'adaptation' "
        "(the server's defaults for this bundle)",
    )
    return parser.parse_args()


def record(bundle_path: Path, best: dict[str, Any], info: dict[str, Any]) -> None:
    """Store the valid-tuned cache settings in the manifest (not a checksummed payload file;
    written whole to a temporary file and renamed, so a reader never sees half of it)."""
    manifest_path = bundle_path / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["adaptation"] = {
        **{key: best[key] for key in ("size", "theta", "lam", "dtype")},
        "tuned_on": "valid",
        "test_ppl_ratio": round(best["test_ratio"], 4),
        "bytes_per_session": best["bytes_per_session"],
        "by": f"benchmarks/cache_ppl.py at {info['commit']} on {info['date']}",
    }
    staged = manifest_path.with_suffix(".json.tmp")
    staged.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    staged.replace(manifest_path)
    load_bundle(bundle_path)  # still a valid bundle


def main() -> int:
    args = parse_args()
    sizes = tuple(sorted(set(args.sizes)))
    thetas = tuple(args.thetas)
    lams = np.asarray(args.lams, dtype=np.float64)
    data = args.data or os.environ.get(DATA_ENV)
    if not data:
        print(f"no data: pass --data DIR or set {DATA_ENV}", file=sys.stderr)
        return 2
    info = run_info()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    bundle: Bundle = load_bundle(args.bundle)
    dt = DecodeTree.from_bundle(bundle)
    encoder = Encoder.from_bundle(bundle, intra_op_threads=args.threads)
    d = int(bundle.manifest["hidden_size"])
    index = {word: i for i, word in enumerate(bundle.vocab)}
    splits: dict[str, tuple[I64, F32, F64]] = {}
    for split in ("valid", "test"):
        start = time.perf_counter()
        ids = read_split(Path(data) / f"{split}.txt", index, bundle.unk_id, bundle.eos_id)
        if args.max_tokens is not None:
            ids = ids[: args.max_tokens]
        hidden = encode(encoder, ids, bundle.eos_id, args.chunk)
        encoded = time.perf_counter()
        tree_lp = tree_log_probs(dt, hidden, ids)
        timings[f"encode_{split}_s"] = encoded - start
        timings[f"tree_{split}_s"] = time.perf_counter() - encoded
        splits[split] = (ids, hidden, tree_lp)
        print(
            f"{split}: {ids.size:,} tokens, encode {timings[f'encode_{split}_s']:.1f} s, "
            f"tree scoring {timings[f'tree_{split}_s']:.1f} s", flush=True,
        )  # fmt: skip
    ids, hidden, tree_lp = splits["valid"]
    sample = hidden[:: max(1, ids.size // 8)][:8]
    normalisation = float(np.abs(np.exp(brute_force_log_probs(dt, sample)).sum(axis=1) - 1).max())
    probe = sorted({min(t, ids.size - 1) for t in (0, 1, 7, 523, 1999, 2000, ids.size // 2)})
    probe.append(ids.size - 1)
    check = {
        dtype: float(spot_check(hidden, ids, min(500, max(sizes)), 0.5, dtype, probe))
        for dtype in STORED
    }
    print(f"spot check against ContinuousCache: max relative difference {check}")
    base = {split: math.exp(-float(lp.mean())) for split, (_, _, lp) in splits.items()}

    grid_nll, chosen = tune(hidden, ids, tree_lp, thetas, sizes, lams, args.chunk, timings)
    test_nll = score_test(*splits["test"], chosen, args.chunk, timings)
    timings["total_s"] = time.perf_counter() - clock

    rows: list[dict[str, Any]] = []
    for b, (n, theta, lam) in enumerate(chosen):
        row: dict[str, Any] = {
            "size": n,
            "theta": theta,
            "lam": lam,
            "valid_ppl": math.exp(float(grid_nll[thetas.index(theta), b, :].min())),
        }
        for dtype in STORED:
            ppl = math.exp(float(test_nll[dtype][b]))
            row[f"test_ppl_{dtype}"] = ppl
            row[f"test_ratio_{dtype}"] = ppl / base["test"]
            row[f"bytes_{dtype}"] = n * state_bytes(d, dtype)
            row[f"fits_budget_{dtype}"] = n * state_bytes(d, dtype) <= BUDGET_BYTES
        rows.append(row)
    print_table(rows, base)
    best = recommend(rows)
    print(f"\nrecommended (largest N within 256 KiB in {SERVING}): {best}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    png = RESULTS / f"{args.name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plotted = plot(rows, base["test"], png)
    payload = {
        **info,
        "bundle": {"name": bundle.name, "path": str(Path(args.bundle).resolve())},
        "method": {
            "paper": "Grave, Joulin, Usunier 2017, Improving Neural Language Models with a "
            "Continuous Cache",
            "session": "each split read as one running session from the zero state after <eos>; "
            "every token a target",
            "p_mix": "(1 - lam) P_tree + lam p_cache; P_tree alone for the first target",
            "tuning": "theta x lam grid per N on valid with float32 keys; test at the choice",
            "hidden_size": d,
            "bytes_per_state": {dt_: state_bytes(d, dt_) for dt_ in STORED},
            "budget_bytes": BUDGET_BYTES,
            "target_ratio": TARGET_RATIO,
            "thetas": list(thetas),
            "lams": lams.tolist(),
            "chunk": args.chunk,
            "onnxruntime_threads": args.threads,
            "max_tokens": args.max_tokens,
        },
        "tokens": {split: int(v[0].size) for split, v in splits.items()},
        "no_cache_ppl": base,
        "normalisation_error": normalisation,
        "spot_check_max_rel_diff": check,
        "results": rows,
        "valid_grid_ppl": {
            str(n): {
                str(theta): dict(
                    zip(
                        map(str, lams.tolist()),
                        np.exp(grid_nll[a, b]).round(3).tolist(),
                        strict=True,
                    )
                )
                for a, theta in enumerate(thetas)
            }
            for b, n in enumerate(sizes)
        },
        "recommended": best,
        "timings_s": timings,
        "plot": str(png.relative_to(ROOT)) if plotted else None,
    }
    path = write_result(args.name, payload)
    print(f"wrote {path}" + (f" and {png}" if plotted else ""))
    if args.record and best is not None:
        record(Path(args.bundle), best, info)
        print(f"recorded {best} in {Path(args.bundle) / MANIFEST_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
