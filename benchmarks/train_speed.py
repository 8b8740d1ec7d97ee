"""Training throughput: hierarchical softmax vs full softmax at V = 33,278, side by side.

Both models share the encoder shape of a recipe and train on the same WikiText-2 windows with
the same optimizer. Timed bursts of real training steps (forward, backward, clipping, optimizer
step) alternate between the two models in one process, so load from anything else on the
machine hits both alike; the ratio of their token rates is the result (target: HS >= 3x).

    python benchmarks/train_speed.py --data DIR [--recipe default] [--rounds 6] [--steps 4]

Prints a table and writes ``benchmarks/results/train_speed.json`` (``train_speed_classes.json``
for ``--tree classes``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see model_export

import torch  # noqa: E402

from benchmarks.runinfo import run_info, write_result  # noqa: E402
from model_export.data import load_corpus  # noqa: E402
from model_export.datadir import resolve_data_dir  # noqa: E402
from model_export.model import LanguageModel  # noqa: E402
from model_export.recipes import get_recipe  # noqa: E402
from model_export.streams import batchify, windows  # noqa: E402
from model_export.train import make_optimizer, make_tree, train_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--tree", default="huffman", choices=["huffman", "classes"])
    parser.add_argument("--rounds", type=int, default=6, help="timed bursts per model")
    parser.add_argument("--steps", type=int, default=4, help="training steps per burst")
    parser.add_argument("--threads", type=int, default=0, help="0 = every core")
    args = parser.parse_args()

    torch.set_num_threads(args.threads or torch.get_num_threads())
    corpus = load_corpus(resolve_data_dir(args.data))
    recipe = get_recipe(args.recipe)
    models = {}
    for head in ("hs", "full"):
        model_cfg, cfg = recipe.build(len(corpus.vocab), {"head": head}, {"tree": args.tree})
        torch.manual_seed(0)
        tree = make_tree(cfg.tree, corpus, None) if head == "hs" else None
        model = LanguageModel(model_cfg, tree).train()
        models[head] = (model, make_optimizer(model, cfg), cfg)
    batches = list(windows(batchify(corpus.train, cfg.batch_size), cfg.bptt))
    rates: dict[str, list[float]] = {"hs": [], "full": []}
    carries = {head: m.encoder.initial_state(cfg.batch_size) for head, (m, _, _) in models.items()}
    cursor = 0
    for round_ in range(args.rounds + 1):  # round 0 warms up both and is not counted
        for head, (model, opt, cfg) in models.items():
            tokens, start = 0, time.perf_counter()
            for i in range(args.steps):
                _, inputs, targets = batches[(cursor + i) % len(batches)]
                _, carries[head] = train_step(
                    model, opt, inputs, targets, carries[head], clip=cfg.clip
                )
                tokens += targets.numel()
            if round_ > 0:
                rates[head].append(tokens / (time.perf_counter() - start))
        cursor += args.steps
    report(args, len(corpus.vocab), rates)


def report(args: argparse.Namespace, vocab: int, rates: dict[str, list[float]]) -> None:
    medians = {head: statistics.median(values) for head, values in rates.items()}
    ratio = medians["hs"] / medians["full"]
    print(
        f"V = {vocab:,}, recipe {args.recipe}, tree {args.tree}, threads {torch.get_num_threads()}"
    )
    print(f"{'head':<6}{'median tok/s':>14}{'min':>10}{'max':>10}")
    for head, values in rates.items():
        print(f"{head:<6}{medians[head]:>14,.0f}{min(values):>10,.0f}{max(values):>10,.0f}")
    print(f"HS / full softmax training speed: {ratio:.2f}x (target >= 3x)")
    path = write_result(
        "train_speed" if args.tree == "huffman" else f"train_speed_{args.tree}",
        {
            **run_info(),
            "vocab_size": vocab,
            "recipe": args.recipe,
            "tree": args.tree,
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps_per_burst": args.steps,
            "tokens_per_s": rates,
            "median_tokens_per_s": medians,
            "ratio_hs_over_full": ratio,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
