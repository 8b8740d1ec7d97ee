"""The ``--max-vocab`` default, by measurement: what a cap saves and what it costs.

Saves (cost of a vocabulary of V words): the default recipe's model (its LSTM shape, a Huffman
tree, Adam) trained in timed bursts of real steps (forward, backward, clipping, optimizer step)
at each V of ``--sizes``, on token ids drawn from a Zipf law (exponent 1, as word frequencies
in text are) over V words; the models take turns, so load from anything else hits all alike.
Reported: median tokens/s, and the parameters' bytes (4 per parameter: what the bundle and a
checkpoint hold, Adam's state doubling that during training). Adam updates every row of the
embedding and of the tree's node matrix at every step, so a step's cost grows with V.

Costs (words lost to ``<unk>``): every corpus of ``--corpus`` read as ``build`` reads it, with
no cap; for each cap of ``--caps``, the share of valid and test tokens that would be out of
vocabulary, and the train count of the last word the cap keeps (a word seen that rarely gets
little training anyway). The King James Bible (Debian's ``bible-kjv``, public domain) is read as
in ``benchmarks/finetune.py`` when ``--kjv`` is given.

    python benchmarks/vocab_cap.py [--data DIR] [--kjv] [--corpus PATH ...]

Prints both tables and writes ``benchmarks/results/vocab_cap.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see model_export

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.finetune import write_chapters  # noqa: E402
from benchmarks.runinfo import run_info, write_result  # noqa: E402
from model_export.corpus import CorpusOptions, read_corpus  # noqa: E402
from model_export.data import Corpus  # noqa: E402
from model_export.datadir import resolve_data_dir  # noqa: E402
from model_export.model import LanguageModel  # noqa: E402
from model_export.recipes import get_recipe  # noqa: E402
from model_export.streams import batchify, windows  # noqa: E402
from model_export.train import make_optimizer, make_tree, train_step  # noqa: E402
from model_export.vocab import SPECIAL  # noqa: E402

SIZES = (10_000, 33_278, 100_000, 300_000, 1_000_000)
CAPS = (5_000, 10_000, 20_000, 50_000, 100_000)
TRAIN_TOKENS = 200_000  # synthetic ids per model: enough distinct windows for the bursts


def zipf_corpus(size: int, seed: int = 0) -> Corpus:
    """``TRAIN_TOKENS`` ids over ``size`` words, P(rank r) proportional to 1 / r; ids ordered by
    expected count as a corpus's are, counts as the tree needs them."""
    weights = 1.0 / np.arange(1, size + 1)
    ids = np.random.default_rng(seed).choice(size, TRAIN_TOKENS, p=weights / weights.sum())
    counts = np.maximum(np.rint(weights / weights.sum() * 1e9), 1).astype(np.int64)
    vocab = ["<eos>", "<unk>", *(f"w{i}" for i in range(2, size))]
    index = {word: i for i, word in enumerate(vocab)}
    held = ids[:1000]
    return Corpus(vocab, counts, ids.astype(np.int64), held, held, index)


def time_sizes(sizes: list[int], recipe: str, rounds: int, steps: int) -> dict[int, dict[str, Any]]:
    """Median tokens/s and parameter count of the recipe's model at each vocabulary size."""
    models = {}
    for size in sizes:
        corpus = zipf_corpus(size)
        model_cfg, cfg = get_recipe(recipe).build(size, {}, {"tree": "huffman"})
        torch.manual_seed(0)
        model = LanguageModel(model_cfg, make_tree(cfg.tree, corpus, None)).train()
        batches = list(windows(batchify(corpus.train, cfg.batch_size), cfg.bptt))
        carry = model.encoder.initial_state(cfg.batch_size)
        models[size] = [model, make_optimizer(model, cfg), cfg, batches, carry]
        print(f"built V = {size:,}", file=sys.stderr)
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for round_ in range(rounds + 1):  # round 0 warms every model up and is not counted
        for size, entry in models.items():
            model, optimizer, cfg, batches, carry = entry
            tokens, start = 0, time.perf_counter()
            for i in range(steps):
                _, inputs, targets = batches[(round_ * steps + i) % len(batches)]
                _, carry = train_step(model, optimizer, inputs, targets, carry, clip=cfg.clip)
                tokens += targets.numel()
            entry[4] = carry
            if round_ > 0:
                rates[size].append(tokens / (time.perf_counter() - start))
    results = {}
    for size in sizes:
        parameters = sum(p.numel() for p in models[size][0].parameters())
        results[size] = {
            "median_tokens_per_s": round(statistics.median(rates[size]), 1),
            "tokens_per_s": [round(rate, 1) for rate in rates[size]],
            "parameters": parameters,
            "parameter_mb": round(parameters * 4e-6, 1),
        }
    return results


def coverage(corpus: Corpus, caps: list[int]) -> dict[str, Any]:
    """Out-of-vocabulary rates of valid and test at each cap (``None``: uncapped), from the
    uncapped corpus: a cap of N keeps ``<eos>``, ``<unk>`` and the N - 2 most frequent words
    (ids are in that order)."""
    special = np.array([word in SPECIAL for word in corpus.vocab])
    # rank[i]: word i's place among the non-special words (specials: -1, always kept).
    rank = np.where(special, -1, np.cumsum(~special) - 1)
    words = int((~special).sum())
    rows = []
    for cap in [c for c in caps if c - len(SPECIAL) < words] + [None]:
        kept = words if cap is None else cap - len(SPECIAL)
        row: dict[str, Any] = {"max_vocab": cap, "vocab_size": kept + len(SPECIAL)}
        for split in ("valid", "test"):
            ids = corpus.split(split)
            # As the manifest counts OOV: words without an id, not a literal ``<unk>`` in the text.
            lost = int((rank[ids] >= kept).sum()) + corpus.oov.get(split, 0)
            row[f"{split}_oov"] = round(lost / len(ids), 5)
        edge = np.flatnonzero(rank == kept - 1)
        row["last_word_train_count"] = int(corpus.counts[edge[0]]) if edge.size else None
        rows.append(row)
    return {
        "tokens": {split: len(corpus.split(split)) for split in ("train", "valid", "test")},
        "word_types": words,
        "types_seen_once": int(((corpus.counts == 1) & ~special).sum()),
        "test_literal_unk": round(
            float((corpus.test == corpus.unk_id).mean()) - corpus.oov_rate("test"), 5
        ),
        "caps": rows,
    }


def corpora(args: argparse.Namespace, scratch: Path) -> dict[str, Path]:
    found = {"WikiText-2": resolve_data_dir(args.data)}
    if args.kjv:
        write_chapters(scratch / "kjv")
        found["King James Bible"] = scratch / "kjv"
    for path in args.corpus:
        found[path.name] = path
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="WikiText-2 directory")
    parser.add_argument("--kjv", action="store_true", help="also the King James Bible (bible-kjv)")
    parser.add_argument(
        "--corpus", type=Path, nargs="*", default=[], help="more corpora, any build format"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="V to time")
    parser.add_argument("--caps", type=int, nargs="+", default=list(CAPS), help="caps to cover")
    parser.add_argument("--recipe", default="default", help="model shape and optimizer")
    parser.add_argument("--rounds", type=int, default=5, help="timed bursts per size")
    parser.add_argument("--steps", type=int, default=3, help="training steps per burst")
    parser.add_argument("--result", default="vocab_cap", help="results/<name>.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        covered = {
            name: coverage(read_corpus(path, CorpusOptions(max_vocab=None)).corpus, args.caps)
            for name, path in corpora(args, Path(scratch)).items()
        }
    for name, report in covered.items():
        types, once = report["word_types"], report["types_seen_once"]
        print(f"{name}: {types:,} word types, {once:,} seen once")
        for row in report["caps"]:
            print(
                f"  max_vocab {row['max_vocab']!s:>9}: valid OOV {row['valid_oov']:.2%}, "
                f"test OOV {row['test_oov']:.2%}, last word seen {row['last_word_train_count']}x"
            )
    timed = time_sizes(args.sizes, args.recipe, args.rounds, args.steps)
    base = timed.get(33_278) or next(iter(timed.values()))
    for size, row in timed.items():
        ratio = row["median_tokens_per_s"] / base["median_tokens_per_s"]
        print(
            f"V {size:>9,}: {row['median_tokens_per_s']:>8,.0f} tok/s ({ratio:.2f}x), "
            f"{row['parameter_mb']:,.0f} MB of parameters"
        )
    payload = {
        **run_info(),
        "recipe": args.recipe,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps_per_burst": args.steps,
        "coverage": covered,
        "training": {str(size): row for size, row in timed.items()},
    }
    print(f"wrote {write_result(args.result, payload)}")


if __name__ == "__main__":
    main()
