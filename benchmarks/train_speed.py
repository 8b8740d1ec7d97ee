"""Training throughput of the output layers at V = 33,278, side by side with the full softmax.

Every model shares the encoder shape of a recipe and trains on the same WikiText-2 windows with
the same optimizer; they differ only in the head: the Huffman tree, the class tree, the adaptive
softmax, the full softmax. Timed bursts of real training steps (forward, backward, clipping,
optimizer step) take turns between the models in one process, so load from anything else on the
machine hits all alike; the ratio of each head's token rate to the full softmax's is the result
(targets: HS >= 3x, adaptive >= 3x).

    python benchmarks/train_speed.py --data DIR [--recipe default] [--rounds 6] [--steps 4]

Prints a table and writes ``benchmarks/results/train_speed.json``.
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
from model_export.trees import adaptive_tree  # noqa: E402

# name -> (head, tree); the clustered tree needs a trained model and prices like Huffman's.
VARIANTS = {
    "huffman": ("hs", "huffman"),
    "classes": ("hs", "classes"),
    "adaptive": ("adaptive", "huffman"),
    "full": ("full", "huffman"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="WikiText-2 directory")
    parser.add_argument("--recipe", default="default", help="encoder shape and optimizer")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
        help="heads to time (the full softmax is always one of them)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=6, help="timed bursts per model")
    parser.add_argument("--steps", type=int, default=4, help="training steps per burst")
    parser.add_argument("--threads", type=int, default=0, help="0 = every core")
    parser.add_argument("--result", default="train_speed", help="results/<name>.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads or torch.get_num_threads())
    corpus = load_corpus(resolve_data_dir(args.data))
    recipe = get_recipe(args.recipe)
    models = {}
    for name in dict.fromkeys([*args.variants, "full"]):
        head, tree_kind = VARIANTS[name]
        model_cfg, cfg = recipe.build(len(corpus.vocab), {"head": head}, {"tree": tree_kind})
        torch.manual_seed(0)
        tree = None
        if head == "hs":
            tree = make_tree(cfg.tree, corpus, None)
        elif head == "adaptive":
            tree = adaptive_tree(corpus.counts, model_cfg.cutoffs)
        model = LanguageModel(model_cfg, tree).train()
        models[name] = (model, make_optimizer(model, cfg), cfg)
    batches = list(windows(batchify(corpus.train, cfg.batch_size), cfg.bptt))
    rates: dict[str, list[float]] = {name: [] for name in models}
    carries = {name: m.encoder.initial_state(cfg.batch_size) for name, (m, _, _) in models.items()}
    cursor = 0
    for round_ in range(args.rounds + 1):  # round 0 warms up every model and is not counted
        for name, (model, opt, cfg) in models.items():
            tokens, start = 0, time.perf_counter()
            for i in range(args.steps):
                _, inputs, targets = batches[(cursor + i) % len(batches)]
                _, carries[name] = train_step(
                    model, opt, inputs, targets, carries[name], clip=cfg.clip
                )
                tokens += targets.numel()
            if round_ > 0:
                rates[name].append(tokens / (time.perf_counter() - start))
        cursor += args.steps
    report(args, len(corpus.vocab), rates)


def report(args: argparse.Namespace, vocab: int, rates: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {name: medians[name] / medians["full"] for name in medians}
    print(f"V = {vocab:,}, recipe {args.recipe}, threads {torch.get_num_threads()}")
    print(f"{'head':<10}{'median tok/s':>14}{'min':>10}{'max':>10}{'vs full':>9}")
    for name, values in rates.items():
        print(
            f"{name:<10}{medians[name]:>14,.0f}{min(values):>10,.0f}{max(values):>10,.0f}"
            f"{ratios[name]:>8.2f}x"
        )
    path = write_result(
        args.result,
        {
            **run_info(),
            "vocab_size": vocab,
            "recipe": args.recipe,
            "heads": {name: VARIANTS[name] for name in rates},
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps_per_burst": args.steps,
            "tokens_per_s": rates,
            "median_tokens_per_s": medians,
            "ratio_over_full": ratios,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
