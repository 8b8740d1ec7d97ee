"""Decode cost of each output head: exact top-10 and 2-letter completion, side by side.

For every bundle given (one per head, e.g. the ``train_compare.py`` runs exported), hidden
vectors come from the bundle's own encoder over the same WikiText-2 validation words. Timed
with :func:`benchmarks.decode.time_side_by_side` (methods take turns, one thread):

* ``top10``: :func:`service.decode.top_k` with ``k = 10``;
* ``complete``: the same with the first two letters of the word that really came next (only
  positions whose next word has two letters or more);
* ``ort``: the full-softmax baseline of ``benchmarks/decode.py``, onnxruntime ``MatMul -> Add ->
  TopK(10)`` over a random ``(d, V)`` matrix, in the same run;
* ``stream``: every row the search reads when it opens every node (an unfactored node's rows, a
  factored node's projection and rows) multiplied by the hidden vector once, float32 BLAS, no
  search at all. An exact search that opens every node (the adaptive head's top-10 opens every
  cluster: a tail cluster's probability beats the 10th word's) must read all of it, so
  ``ort / stream`` is the most any exact top-10 over that head can gain on the full softmax on
  this machine.

Work per search, counted from the brute-force distribution rather than timed: an exact best-first
search expands exactly the admissible nodes at least as probable as its last result, so
``expansions`` and ``products`` (multiply-adds: ``(c - 1) d`` for a node with ``c`` children,
``r (d + c - 1)`` for a factored one) follow from the path log-probabilities of every node.

    python benchmarks/head_decode.py --bundles bundles/compare_1m/* [--data DIR]

Prints a table; writes ``benchmarks/results/head_decode.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads BLAS: 1 thread, as the tree

import argparse  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from benchmarks.decode import ort_topk, summary, time_side_by_side  # noqa: E402
from benchmarks.runinfo import run_info, write_result  # noqa: E402
from model_export.datadir import resolve_data_dir  # noqa: E402
from service.bundle import OUTPUT_HIDDEN, Bundle, load_bundle  # noqa: E402
from service.decode import DecodeTree, top_k, warm_up  # noqa: E402
from service.tree import Factors, Tree  # noqa: E402

K = 10
PREFIX_LETTERS = 2
F64 = npt.NDArray[np.float64]


def validation_words(data: str | None, count: int) -> list[str]:
    text = (resolve_data_dir(data) / "valid.txt").read_text(encoding="utf-8")
    return " ".join(text.split("\n")).split()[: count + 1]


def encode(bundle: Bundle, words: list[str]) -> npt.NDArray[np.float32]:
    """Hidden vector after each of ``words[:-1]``: the state that predicts the next word."""
    import onnxruntime as ort

    index = {word: i for i, word in enumerate(bundle.vocab)}
    tokens = np.array([[index.get(w, index["<unk>"]) for w in words[:-1]]], dtype=np.int64)
    encoder = bundle.manifest["encoder"]
    state = np.zeros((encoder["layers"], 1, encoder["state_size"]), dtype=np.float32)
    session = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    (hidden,) = session.run([OUTPUT_HIDDEN], {"tokens": tokens, "state": state})
    return np.ascontiguousarray(hidden[0])


def node_log_probs(tree: Tree, edge_lp: F64) -> F64:
    """Path log-probability of every node, ``(N,)``, parents first (ids descend)."""
    node_lp = np.zeros(tree.num_nodes)
    for internal in range(tree.num_internal - 1, -1, -1):
        start, stop = tree.child_ptr[internal], tree.child_ptr[internal + 1]
        node_lp[tree.children[start:stop]] = (
            node_lp[internal + tree.num_leaves] + edge_lp[start:stop]
        )
    return node_lp


def node_products(tree: Tree, factors: Factors | None, dim: int) -> F64:
    """Multiply-adds of expanding each internal node, ``(I,)``."""
    rows = np.diff(tree.child_ptr).astype(np.float64) - 1
    products = rows * dim
    if factors is not None:
        products[factors.node] = factors.rank * (dim + rows[factors.node])
    return products


def search_work(
    tree: Tree, node_lp: F64, admissible: npt.NDArray[np.bool_], last_lp: float, products: F64
) -> tuple[int, float]:
    """Expansions and multiply-adds of an exact search whose last result has ``last_lp``."""
    internal = node_lp[tree.num_leaves :]
    expanded = admissible[tree.num_leaves :] & (internal >= last_lp)
    return int(expanded.sum()), float(products[expanded].sum())


def prefix_admissible(tree: Tree, vocab: list[str], prefix: str) -> npt.NDArray[np.bool_]:
    """Nodes with a word starting with ``prefix`` (case-folded) below them."""
    marks = np.zeros(tree.num_nodes, dtype=bool)
    marks[: tree.num_leaves] = [w.casefold().startswith(prefix) for w in vocab]
    for internal in range(tree.num_internal):  # children before parents
        start, stop = tree.child_ptr[internal], tree.child_ptr[internal + 1]
        marks[internal + tree.num_leaves] = marks[tree.children[start:stop]].any()
    return marks


def bench(
    path: Path, words: list[str], budget_s: float, rng: np.random.Generator
) -> dict[str, Any]:
    bundle = load_bundle(path)
    dt = DecodeTree.from_bundle(bundle)
    warm_up(dt)
    hidden = encode(bundle, words)
    prefixes = [w[:PREFIX_LETTERS].casefold() for w in words[1:]]
    typed = [i for i, w in enumerate(words[1:]) if len(w) >= PREFIX_LETTERS and w.isalpha()]
    work = count_work(dt, bundle, hidden, prefixes, typed)
    out_t = rng.standard_normal((dt.hidden_size, dt.num_words), dtype=np.float32)
    ort_run = ort_topk(out_t, np.zeros(dt.num_words, dtype=np.float32))
    single = [np.ascontiguousarray(h[None, :]) for h in hidden]
    stream, stream_bytes = stream_rows(bundle.tree, bundle.weight, bundle.factors)
    times = time_side_by_side(
        {
            "top10": lambda i: top_k(dt, hidden[i], K),
            "complete": lambda i: top_k(dt, hidden[typed[i]], K, prefix=prefixes[typed[i]]),
            "ort": lambda i: ort_run(single[i]),
            "stream": lambda i: stream(hidden[i]),
        },
        min(len(hidden), len(typed)),
        budget_s,
    )
    row: dict[str, Any] = {
        "bundle": str(path),
        "name": path.name,
        "kind": bundle.manifest["tree"]["kind"],
        "V": dt.num_words,
        "d": dt.hidden_size,
        "factored_nodes": 0 if bundle.factors is None else len(bundle.factors),
        "bundle_mb": round(sum(f.stat().st_size for f in path.iterdir()) / 2**20, 1),
        "stream_mb": round(stream_bytes / 2**20, 1),
        **{name: summary(us) for name, us in times.items()},
        **work,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    row["top10_speedup_vs_ort"] = round(row["ort"]["median_us"] / row["top10"]["median_us"], 1)
    row["stream_speedup_vs_ort"] = round(row["ort"]["median_us"] / row["stream"]["median_us"], 1)
    return row


def stream_rows(
    tree: Tree, weight: npt.NDArray[np.float32], factors: Factors | None
) -> tuple[Callable[[npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]], int]:
    """One pass of BLAS over every row a search that opens every node reads (the unfactored
    nodes' rows, then each factor's), and the bytes it reads."""
    # Node i's rows are weight[child_ptr[i] - i :][: c_i - 1] (``service.tree``'s convention); a
    # factored node's rows there hold Q_f P_f multiplied out, for readers that ignore factors
    # (bundle format 2): the search reads its factor instead.
    pairs = [] if factors is None else [factors.matrices(f) for f in range(len(factors))]
    stored = np.ones(len(weight), dtype=bool)
    for node, (_, rows) in zip([] if factors is None else factors.node, pairs, strict=True):
        first = tree.child_ptr[node] - node
        stored[first : first + len(rows)] = False
    dense = np.ascontiguousarray(weight[stored])

    def run(h: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        return [dense @ h, *(rows @ (proj @ h) for proj, rows in pairs)]

    return run, dense.nbytes + sum(p.nbytes + q.nbytes for p, q in pairs)


def count_work(
    dt: DecodeTree, bundle: Bundle, hidden: npt.NDArray[np.float32], prefixes: list[str],
    typed: list[int],
) -> dict[str, float]:  # fmt: skip
    """Mean expansions and multiply-adds per search, and the kernel's own expansion count."""
    tree, factors = bundle.tree, bundle.factors
    products = node_products(tree, factors, dt.hidden_size)
    everyone = np.ones(tree.num_nodes, dtype=bool)
    stats: dict[str, list[float]] = {key: [] for key in ("top10", "complete", "kernel")}
    products_of: dict[str, list[float]] = {"top10": [], "complete": []}
    sample = typed[:128]
    for i in sample:
        edge_lp = tree.edge_log_probs(bundle.weight, bundle.bias, hidden[i], factors)[0]
        node_lp = node_log_probs(tree, edge_lp)
        found = top_k(dt, hidden[i], K)
        stats["kernel"].append(found.expansions)
        for name, admissible, result in (
            ("top10", everyone, found),
            ("complete", prefix_admissible(tree, bundle.vocab, prefixes[i]), None),
        ):
            if result is None:
                result = top_k(dt, hidden[i], K, prefix=prefixes[i])
            last = float(result.logprobs[-1]) if len(result.ids) == K else -np.inf
            expansions, work = search_work(tree, node_lp, admissible, last, products)
            stats[name].append(expansions)
            products_of[name].append(work)
    return {
        "top10_expansions": round(float(np.mean(stats["top10"])), 1),
        "top10_products": round(float(np.mean(products_of["top10"]))),
        "complete_expansions": round(float(np.mean(stats["complete"])), 1),
        "complete_products": round(float(np.mean(products_of["complete"]))),
        "kernel_top10_expansions": round(float(np.mean(stats["kernel"])), 1),
        "full_softmax_products": dt.num_words * dt.hidden_size,
        "work_samples": len(sample),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'bundle':<15}{'top10 med':>10}{'p99':>9}{'compl med':>10}{'p99':>9}{'ort med':>9}"
        f"{'x ort':>7}{'stream':>8}{'x ort':>7}{'exp':>7}{'products':>11}{'MB':>6}"
    )
    for r in rows:
        print(
            f"{r['name']:<15}{r['top10']['median_us']:>10.1f}{r['top10']['p99_us']:>9.1f}"
            f"{r['complete']['median_us']:>10.1f}{r['complete']['p99_us']:>9.1f}"
            f"{r['ort']['median_us']:>9.1f}{r['top10_speedup_vs_ort']:>7.1f}"
            f"{r['stream']['median_us']:>8.1f}{r['stream_speedup_vs_ort']:>7.1f}"
            f"{r['top10_expansions']:>7.1f}{r['top10_products']:>11,}{r['bundle_mb']:>6.1f}"
        )
    print(
        "(µs per call, 1 thread; exp / products: per top-10 search; x ort = ort / top10, "
        "then ort / stream)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, nargs="+", required=True, help="one per head")
    parser.add_argument("--data", default=None, help="WikiText-2 directory (validation words)")
    parser.add_argument("--samples", type=int, default=512, help="validation positions")
    parser.add_argument("--budget-s", type=float, default=12.0, help="timing seconds per bundle")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--result", default="head_decode", help="results/<name>.json")
    args = parser.parse_args()

    info = run_info()
    words = validation_words(args.data, args.samples)
    rng = np.random.default_rng(args.seed)
    rows = [bench(path, words, args.budget_s, rng) for path in args.bundles]
    print_table(rows)
    path = write_result(
        args.result, {**info, "k": K, "prefix_letters": PREFIX_LETTERS, "rows": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
