"""Decode latency: exact top-10 by the tree against full-softmax top-10, on the same hidden vectors.

For each vocabulary size V and hidden size d, three ways to get the 10 best next words:

* ``tree``: :func:`service.decode.top_k` (best-first search, exact, normalised probabilities);
* ``ort``: an onnxruntime graph ``MatMul -> Add -> TopK(10)`` over a (d, V) output matrix;
* ``numpy``: ``h @ E + b`` and ``argpartition`` (then sorting the 10).

The baselines skip the softmax normalisation (an extra pass over V that the tree includes), and
all three run single-threaded (onnxruntime intra-op threads 1, ``OPENBLAS_NUM_THREADS=1``). The
three take turns, ten times each (:func:`time_side_by_side`), so a drift in the shared
machine's load hits them alike.

Models. ``bundle``: the real bundle's tree and weights, with hidden vectors from its encoder
on WikiText-2 validation text (``--data`` / ``NEXTWORD_DATA``; random tokens without it).
``synthetic``: Zipf counts (exponent 1) and their Huffman tree; biases are the log-odds of
the subtrees' count mass (so with ``W h = 0`` the model is exactly the unigram distribution)
and ``W`` is gaussian, scaled so the model's mean entropy equals ``log(--target-ppl)`` (150,
the perplexity range of a small trained LSTM on WikiText-2). Unscaled random weights would
give a near-uniform distribution and expansion counts no trained model has. The full-softmax
matrices are random: their latency does not depend on the values.

    python benchmarks/decode.py [--bundle bundles/default] [--data DIR]

Prints a table, writes ``benchmarks/results/decode.json`` (date, machine, commit, method,
numbers) and the log-log plot ``benchmarks/results/decode_latency.png``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads BLAS: 1 thread, as the tree

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from model_export.trees import huffman_tree  # noqa: E402
from service.decode import DecodeTree, top_k, warm_up  # noqa: E402
from service.tree import Tree  # noqa: E402

K = 10
SIZES = (33_278, 267_735, 1_000_000)
DIMS = (256, 512)
TARGETS = {33_278: 50.0, 1_000_000: 1000.0}  # required speed-up of the tree over full softmax

F32 = npt.NDArray[np.float32]


@dataclass
class Model:
    """A tree head to benchmark and the hidden vectors to decode."""

    source: str
    tree: Tree
    weight: F32
    bias: F32
    hidden: F32  # (n, d)
    note: dict[str, Any]


# -- synthetic models --------------------------------------------------------------------------


def zipf_counts(num_words: int) -> npt.NDArray[np.float64]:
    return 1e9 / np.arange(1, num_words + 1, dtype=np.float64)


def subtree_log_odds(tree: Tree, counts: npt.NDArray[np.float64]) -> F32:
    """Biases that make ``W h = 0`` give exactly P(word) = count / total (binary trees)."""
    if tree.max_children != 2:
        raise ValueError("synthetic biases are defined for binary trees")
    mass = np.zeros(tree.num_nodes)
    mass[: tree.num_leaves] = counts
    pairs = tree.children.reshape(-1, 2)
    for index, (first, second) in enumerate(pairs):  # children precede parents
        mass[tree.num_leaves + index] = mass[first] + mass[second]
    return np.log(mass[pairs[:, 0]] / mass[pairs[:, 1]]).astype(np.float32)


def node_levels(tree: Tree) -> list[npt.NDArray[np.int64]]:
    """Non-root nodes grouped by depth, top level first."""
    levels: list[npt.NDArray[np.int64]] = []
    frontier = np.array([tree.root])
    while True:
        internal = frontier[frontier >= tree.num_leaves] - tree.num_leaves
        if not len(internal):
            return levels
        starts, lengths = tree.child_ptr[internal], np.diff(tree.child_ptr)[internal]
        # Edge positions start..start+length-1 of every node, without a Python loop.
        first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        frontier = tree.children[first + np.arange(lengths.sum())]
        levels.append(frontier)


def mean_entropy(tree: Tree, row_logits: F32, levels: list[npt.NDArray[np.int64]]) -> float:
    """Mean entropy (nats) of the binary-tree distributions with these ``(n, V-1)`` row logits."""
    first = -np.logaddexp(0.0, -row_logits)  # log sigma(x), child 0
    node_lp = np.zeros((row_logits.shape[0], tree.num_nodes), dtype=np.float32)
    for level in levels:
        edge = tree.node_edge[level]
        row = tree.edge_row[edge]
        is_first = row >= 0
        parent_row = np.where(is_first, row, tree.edge_row[edge - 1])
        branch = first[:, parent_row] - np.where(is_first, 0.0, row_logits[:, parent_row])
        node_lp[:, level] = node_lp[:, tree.parent[level]] + branch
    leaf_lp = node_lp[:, : tree.num_leaves].astype(np.float64)
    return float(-(np.exp(leaf_lp) * leaf_lp).sum(axis=1).mean())


def calibrated_scale(tree: Tree, base: F32, bias: F32, target_ppl: float) -> tuple[float, float]:
    """Bisect the weight scale so the mean entropy is ``log(target_ppl)``; return (scale, ppl)."""
    levels = node_levels(tree)
    low, high = 0.0, 64.0
    for _ in range(14):
        mid = (low + high) / 2
        entropy = mean_entropy(tree, mid * base + bias, levels)
        low, high = (mid, high) if entropy > np.log(target_ppl) else (low, mid)
    scale = (low + high) / 2
    return scale, float(np.exp(mean_entropy(tree, scale * base + bias, levels)))


def synthetic_model(
    tree: Tree, bias: F32, dim: int, samples: int, target_ppl: float, rng: np.random.Generator
) -> Model:
    hidden = rng.standard_normal((samples, dim), dtype=np.float32)
    weight = rng.standard_normal((tree.num_rows, dim), dtype=np.float32)
    weight /= np.float32(np.sqrt(dim))
    base = hidden[:4] @ weight.T  # (4, V-1): calibration on 4 vectors
    scale, ppl = calibrated_scale(tree, base, bias, target_ppl)
    weight *= np.float32(scale)
    note = {"weight_scale": round(scale, 4), "calibration_ppl": round(ppl, 1)}
    return Model("synthetic", tree, weight, bias, hidden, note)


# -- the real bundle ---------------------------------------------------------------------------


def bundle_model(path: Path, data: str | None, samples: int, rng: np.random.Generator) -> Model:
    import onnxruntime as ort

    from service.bundle import OUTPUT_HIDDEN, load_bundle

    bundle = load_bundle(path)
    encoder = bundle.manifest["encoder"]
    tokens, text = _validation_tokens(bundle.vocab, data, samples, rng)
    state = np.zeros((encoder["layers"], 1, encoder["state_size"]), dtype=np.float32)
    session = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    (hidden,) = session.run([OUTPUT_HIDDEN], {"tokens": tokens[None, :], "state": state})
    note = {"bundle": str(path), "name": bundle.name, "hidden_from": text}
    return Model("bundle", bundle.tree, bundle.weight, bundle.bias, hidden[0], note)


def _validation_tokens(
    vocab: list[str], data: str | None, count: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], str]:
    data_dir = data or os.environ.get("NEXTWORD_DATA")
    valid = Path(data_dir) / "valid.txt" if data_dir else None
    if valid is None or not valid.is_file():
        return rng.integers(0, len(vocab), size=count), "random tokens (no --data)"
    index = {word: i for i, word in enumerate(vocab)}
    words = " ".join(valid.read_text(encoding="utf-8").split("\n")).split()[:count]
    return np.array([index.get(w, index["<unk>"]) for w in words], dtype=np.int64), "valid.txt"


# -- timing ------------------------------------------------------------------------------------


ROUNDS = 10
MOST_CALLS = 2000
LEAST_CALLS = 30


def time_side_by_side(
    methods: dict[str, Callable[[int], object]], count: int, budget_s: float
) -> dict[str, npt.NDArray[np.float64]]:
    """Microseconds per call of each method, cycling through ``count`` inputs.

    Each method gets an equal share of ``budget_s`` (between :data:`LEAST_CALLS` and
    :data:`MOST_CALLS` calls), split into :data:`ROUNDS` rounds in which the methods take turns:
    on a shared machine the load drifts within seconds, and taking turns exposes every method to
    the same drift. Each turn starts with a few untimed calls (a fiftieth of its calls, at least
    two), because the method before it has just streamed its own matrices through the caches:
    each method is timed in its steady state, as in a server that runs only one of them.
    """
    share = budget_s / len(methods)
    plan = {}
    for name, call in methods.items():
        for i in range(3):  # warm-up, then a rough per-call time to size the turns
            call(i % count)
        start = time.perf_counter()
        call(3 % count)
        seconds = max(time.perf_counter() - start, 1e-7)
        calls = int(np.clip(share / seconds, LEAST_CALLS, MOST_CALLS))
        per_turn = max(1, calls // ROUNDS)
        plan[name] = (per_turn, max(2, per_turn // 50))
    samples: dict[str, list[float]] = {name: [] for name in methods}
    step = 0
    for _ in range(ROUNDS):
        for name, call in methods.items():
            per_turn, untimed = plan[name]
            for _ in range(untimed):
                call(step % count)
                step += 1
            for _ in range(per_turn):
                start = time.perf_counter()
                call(step % count)
                samples[name].append((time.perf_counter() - start) * 1e6)
                step += 1
    return {name: np.asarray(values) for name, values in samples.items()}


def ort_topk(out_t: F32, out_b: F32) -> Callable[[F32], tuple[Any, ...]]:
    """onnxruntime MatMul + Add + TopK over the (d, V) matrix, bound once (no per-call copy)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    dim, num_words = out_t.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "E"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("TopK", ["logits", "k"], ["values", "indices"], axis=-1),
        ],
        "full_softmax_topk",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, dim]),
            helper.make_tensor_value_info("E", TensorProto.FLOAT, [dim, num_words]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [num_words]),
        ],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, K]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [1, K]),
        ],
        [helper.make_tensor("k", TensorProto.INT64, [1], [K])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    binding = session.io_binding()
    binding.bind_cpu_input("E", out_t)
    binding.bind_cpu_input("b", out_b)
    binding.bind_output("values")
    binding.bind_output("indices")

    def run(h: F32) -> tuple[Any, ...]:
        binding.bind_cpu_input("h", h)
        session.run_with_iobinding(binding)
        return tuple(binding.get_outputs())

    return run


def numpy_topk(out_t: F32, out_b: F32, h: F32) -> npt.NDArray[np.int64]:
    logits = h @ out_t + out_b
    best = np.argpartition(logits, -K)[-K:]
    result: npt.NDArray[np.int64] = best[np.argsort(-logits[best])]
    return result


def bench(model: Model, budget_s: float, rng: np.random.Generator) -> dict[str, Any]:
    dt = DecodeTree(model.tree, model.weight, model.bias)
    warm_up(dt)
    hidden = np.ascontiguousarray(model.hidden)
    count, dim = hidden.shape
    expansions = [top_k(dt, hidden[i], K).expansions for i in range(count)]
    num_words = model.tree.num_leaves
    out_t = rng.standard_normal((dim, num_words), dtype=np.float32)
    out_b = np.zeros(num_words, dtype=np.float32)
    ort_run = ort_topk(out_t, out_b)
    single = [np.ascontiguousarray(h[None, :]) for h in hidden]
    times = time_side_by_side(
        {
            "tree": lambda i: top_k(dt, hidden[i], K),
            "ort": lambda i: ort_run(single[i]),
            "numpy": lambda i: numpy_topk(out_t, out_b, hidden[i]),
        },
        count,
        budget_s,
    )
    tree_us, ort_us, np_us = times["tree"], times["ort"], times["numpy"]
    row = {
        "source": model.source, "V": num_words, "d": dim,
        "tree": summary(tree_us), "ort": summary(ort_us), "numpy": summary(np_us),
        "mean_expansions": round(float(np.mean(expansions)), 1),
        "p99_expansions": float(np.percentile(expansions, 99)),
        "tree_depth": model.tree.depth_stats().as_dict(), **model.note,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    row["speedup_vs_ort"] = round(row["ort"]["median_us"] / row["tree"]["median_us"], 1)
    row["speedup_vs_numpy"] = round(row["numpy"]["median_us"] / row["tree"]["median_us"], 1)
    return row


def summary(us: npt.NDArray[np.float64]) -> dict[str, float]:
    return {
        "median_us": round(float(np.median(us)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "calls": len(us),
    }


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "load_average_1m_at_start": os.getloadavg()[0],
    }  # fmt: skip


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{'+dirty' if dirty else ''}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'source':>9} {'V':>9} {'d':>4} | {'tree med':>9} {'p99':>8} {'exp':>6} | "
        f"{'ort med':>9} {'p99':>9} | {'numpy med':>9} {'p99':>9} | {'x ort':>7} {'x np':>7}"
    )
    for r in rows:
        t, o, n = r["tree"], r["ort"], r["numpy"]
        print(
            f"{r['source']:>9} {r['V']:>9,} {r['d']:>4} |"
            f" {t['median_us']:>9.1f} {t['p99_us']:>8.1f} {r['mean_expansions']:>6.0f} |"
            f" {o['median_us']:>9.1f} {o['p99_us']:>9.1f} |"
            f" {n['median_us']:>9.1f} {n['p99_us']:>9.1f} |"
            f" {r['speedup_vs_ort']:>7.0f} {r['speedup_vs_numpy']:>7.0f}"
        )
    print("(µs per call; exp = mean node expansions; x = full-softmax median / tree median)")


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    checks = {}
    for size, target in TARGETS.items():
        for r in rows:
            if r["V"] == size:
                worst = min(r["speedup_vs_ort"], r["speedup_vs_numpy"])
                checks[f"{r['source']} V={size} d={r['d']}"] = {
                    "target_x": target, "min_speedup_x": worst, "met": worst >= target,
                }  # fmt: skip
    return checks


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    styles = {"tree": "o-", "ort": "s--", "numpy": "^:"}
    labels = {"tree": "tree (exact best-first)", "ort": "full softmax, onnxruntime",
              "numpy": "full softmax, numpy"}  # fmt: skip
    for dim in sorted({r["d"] for r in synthetic}):
        series = sorted((r for r in synthetic if r["d"] == dim), key=lambda r: r["V"])
        for method, style in styles.items():
            ax.plot([r["V"] for r in series], [r[method]["median_us"] for r in series], style,
                    label=f"{labels[method]}, d={dim}")  # fmt: skip
    for r in rows:
        if r["source"] == "bundle":
            ax.plot([r["V"]], [r["tree"]["median_us"]], "k*", markersize=11,
                    label=f"tree on the real bundle, d={r['d']}")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="vocabulary size V",
           ylabel="median latency of top-10 (µs)",
           title="Next-word decode latency (1 thread)")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=ROOT / "bundles/default", help="trained bundle (V = 33k row)"
    )
    parser.add_argument("--data", default=None, help="WikiText-2 dir (else $NEXTWORD_DATA)")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=list(SIZES),
        help="vocabulary sizes of synthetic trees",
    )
    parser.add_argument(
        "--dims", type=int, nargs="+", default=list(DIMS), help="hidden sizes of synthetic trees"
    )
    parser.add_argument("--samples", type=int, default=256, help="hidden vectors per config")
    parser.add_argument(
        "--target-ppl",
        type=float,
        default=150.0,
        help="synthetic weights scaled to this perplexity",
    )
    parser.add_argument("--budget-s", type=float, default=16.0, help="seconds per config")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/decode.json", help="result file"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows = []
    if (args.bundle / "manifest.json").is_file():
        rows.append(
            bench(bundle_model(args.bundle, args.data, args.samples, rng), args.budget_s, rng)
        )
        print_table(rows[-1:])
    for size in args.sizes:
        tree = huffman_tree(zipf_counts(size))
        bias = subtree_log_odds(tree, zipf_counts(size))
        for dim in args.dims:
            model = synthetic_model(tree, bias, dim, args.samples, args.target_ppl, rng)
            rows.append(bench(model, args.budget_s, rng))
            print_table(rows[-1:])
            del model
            gc.collect()
        del tree
        gc.collect()
    print()
    print_table(rows)
    checks = verdict(rows)
    for name, check in checks.items():
        print(f"target {name}: >= {check['target_x']:.0f}x, got {check['min_speedup_x']:.0f}x"
              f" -> {'met' if check['met'] else 'MISSED'}")  # fmt: skip
    report = {
        "benchmark": "decode", "date": started, "machine": machine(), "commit": commit(),
        "k": K, "threads": 1,
        "method": __doc__.split("Models.")[1].split("    python")[0].strip().replace("\n", " "),
        "versions": _versions(), "rows": rows, "targets": checks,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.out.with_name("decode_latency.png"))
    print(f"wrote {args.out} and {args.out.with_name('decode_latency.png')}")
    return 0


def _versions() -> dict[str, str]:
    import numba
    import onnxruntime

    return {
        "numpy": np.__version__,
        "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


if __name__ == "__main__":
    raise SystemExit(main())
