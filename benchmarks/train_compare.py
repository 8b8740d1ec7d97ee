"""Trees vs the full softmax on WikiText-2 with one encoder and one training-token budget.

Trains, one after the other, the recipe's encoder with: the Huffman tree, the two-level class
tree, the adaptive softmax (Grave et al. 2016, default cutoffs), the full softmax, and a
clustered tree built from the Huffman run's input embeddings (Mnih & Hinton 2008). Every run
gets the same ``--max-tokens`` (a token budget, not a time budget, so a busy machine slows runs
down without changing what they learn). Each is then
evaluated on valid and test: perplexity, top-1/3/10 accuracy (``<unk>`` targets excluded),
training tokens/s and minutes.

    python benchmarks/train_compare.py --data DIR --max-tokens 6000000 [--recipe default]

Runs go to ``runs/compare/<name>`` and are resumed if interrupted. Prints a table and writes
``benchmarks/results/train_compare.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see model_export

from benchmarks.runinfo import run_info, write_result  # noqa: E402
from model_export.checkpoint import load_checkpoint  # noqa: E402
from model_export.data import Corpus, load_corpus  # noqa: E402
from model_export.datadir import resolve_data_dir  # noqa: E402
from model_export.evaluate import evaluate_checkpoint  # noqa: E402
from model_export.recipes import RECIPES, get_recipe  # noqa: E402
from model_export.train import BEST, LAST, train  # noqa: E402

# name -> (head, tree); "clustered" must come after "huffman", whose embeddings it clusters.
VARIANTS = {
    "huffman": ("hs", "huffman"),
    "classes": ("hs", "classes"),
    "adaptive": ("adaptive", "huffman"),
    "full": ("full", "huffman"),
    "clustered": ("hs", "clustered"),
}


def run_variant(name: str, corpus: Corpus, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    head, tree = VARIANTS[name]
    run_dir = runs / name
    budget = {"max_tokens": args.max_tokens, "max_minutes": None, "progress": not args.quiet}
    if args.threads:
        budget["threads"] = args.threads
    if (run_dir / LAST).exists():
        result = train(run_dir, corpus, None, None, resume=True, overrides=budget)
    else:
        tree_from = str(runs / "huffman" / BEST) if tree == "clustered" else None
        model_cfg, cfg = get_recipe(args.recipe).build(
            len(corpus.vocab), {"head": head}, {**budget, "tree": tree, "tree_from": tree_from}
        )
        result = train(run_dir, corpus, model_cfg, cfg)
    ckpt = load_checkpoint(run_dir / BEST)
    metrics = evaluate_checkpoint(ckpt, corpus, ["valid", "test"], args.topk_tokens or None)
    return {
        "name": name,
        "head": head,
        "tree": ckpt.tree_kind,
        "train_tokens": result.tokens,
        "train_tokens_per_s": result.tokens_per_s,
        "minutes": result.minutes,
        "valid": metrics["valid"],
        "test": metrics["test"],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'variant':<10}{'valid ppl':>10}{'test ppl':>10}{'top1':>7}{'top3':>7}{'top10':>7}"
    print(header + f"{'train tok/s':>13}{'minutes':>9}")
    for row in rows:
        test = row["test"]
        print(
            f"{row['name']:<10}{row['valid']['perplexity']:>10.1f}{test['perplexity']:>10.1f}"
            f"{test['top1']:>7.3f}{test['top3']:>7.3f}{test['top10']:>7.3f}"
            f"{row['train_tokens_per_s']:>13,.0f}{row['minutes']:>9.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="WikiText-2 dir (else $NEXTWORD_DATA)")
    parser.add_argument(
        "--recipe", default="default", choices=list(RECIPES), help="model and training budget"
    )
    parser.add_argument("--max-tokens", type=int, required=True, help="training tokens per variant")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
        help="output heads to train (default: all)",
    )  # fmt: skip
    parser.add_argument("--topk-tokens", type=int, default=20_000, help="0 = every target")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the recipe's)")
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "runs" / "compare", help="one run directory per variant"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--data-tokens", type=int, default=None, help="corpus slice (smoke runs)")
    parser.add_argument("--result", default="train_compare", help="results/<name>.json")
    args = parser.parse_args()

    info = run_info()
    corpus = load_corpus(resolve_data_dir(args.data), max_tokens=args.data_tokens)
    rows = [run_variant(name, corpus, args, args.runs) for name in args.variants]
    print_table(rows)
    path = write_result(
        args.result,
        {
            **info,
            "recipe": args.recipe,
            "model": get_recipe(args.recipe).model,
            "max_tokens": args.max_tokens,
            "data_tokens": args.data_tokens,
            "vocab_size": len(corpus.vocab),
            "topk_tokens": args.topk_tokens,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
