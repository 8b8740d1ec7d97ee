"""The word vectors a clustered tree is learned from: a first, short run of the same model.

Mnih & Hinton (2008) learn the tree from the word vectors of a model trained with another
tree. A recipe whose tree is ``clustered`` says how that first run trains
(:attr:`model_export.recipes.Recipe.first_run`: a Huffman tree and a few million tokens), and
``build`` and ``train`` run it in ``<run dir>/vectors`` before the main run, which clusters its
input embeddings (``TrainConfig.tree_from``). The first run is a run like any other: it resumes
from its ``last.pt``, so a build stopped during it picks up where it was.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from model_export.data import Corpus
from model_export.model import ModelConfig
from model_export.progress import RunShare
from model_export.train import BEST, LAST, LOG, Reporter, TrainConfig, TrainResult, train

VECTORS_DIR = "vectors"
"""The first run's directory, inside the main run's."""


def first_run_for(cfg: TrainConfig, first_run: dict[str, Any] | None) -> dict[str, Any] | None:
    """The recipe's ``first_run`` when ``cfg`` needs it: a clustered tree, no ``tree_from``."""
    return first_run if cfg.tree == "clustered" and cfg.tree_from is None else None


def first_run_summary(run_dir: Path) -> dict[str, Any] | None:
    """Tokens, minutes and best validation perplexity of the first run in ``run_dir``, if it
    has one (for the manifest), from its validation log: a run validates once more at its end,
    so the log's last line is where it stopped."""
    path = run_dir / VECTORS_DIR / LOG
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    log = [json.loads(line) for line in lines if line.strip()]
    if not log:
        return None
    return {
        "tokens": log[-1]["tokens"],
        "minutes": round(log[-1]["minutes"], 2),
        "valid_ppl": min(record["valid_ppl"] for record in log),
    }


def first_run_share(cfg: TrainConfig, first_run: dict[str, Any], cost_ratio: float = 1.0) -> float:
    """The first run's part of the whole training, for one progress estimate over both: by
    token budgets, each token of the first run costing ``cost_ratio`` of the main run's, when
    both runs have one; else a quarter."""
    first_tokens, main_tokens = first_run.get("max_tokens"), cfg.max_tokens
    if first_tokens and main_tokens:
        first_cost = first_tokens * cost_ratio
        return float(first_cost / (first_cost + main_tokens))
    return 0.25


def train_word_vectors(
    run_dir: Path,
    corpus: Corpus,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    first_run: dict[str, Any],
    reporter: Reporter | None = None,
    first_model: dict[str, Any] | None = None,
) -> tuple[TrainConfig, TrainResult, Reporter | None]:
    """Train (or finish) the first run; return the main run's config, whose ``tree_from`` is
    the first run's best checkpoint, the first run's result, and the main run's reporter.

    The first run has the main run's model with the fields of ``first_model`` (a smaller
    shape) and its settings with a Huffman tree and the fields of ``first_run`` (its budget).
    ``reporter`` gets both runs' progress as one: the first run's as its share of the whole
    (:func:`first_run_share`, a token of each model costing its recurrent multiply-adds), the
    main run's as the rest through the reporter returned (None without ``reporter``).
    """
    vectors_dir = run_dir / VECTORS_DIR
    first_model_cfg = replace(model_cfg, **(first_model or {}))
    cost_ratio = first_model_cfg.recurrent_macs_per_token() / model_cfg.recurrent_macs_per_token()
    share = first_run_share(cfg, first_run, cost_ratio)
    part = None if reporter is None else RunShare(reporter, start=0.0, share=share)
    if (vectors_dir / LAST).exists():
        result = train(vectors_dir, corpus, None, None, resume=True, reporter=part)
    else:
        first_cfg = replace(cfg, tree="huffman", tree_from=None, **first_run)
        result = train(vectors_dir, corpus, first_model_cfg, first_cfg, reporter=part)
    rest = None
    if reporter is not None:
        seconds = result.minutes * 60
        rest = RunShare(
            reporter, start=share, share=1 - share, tokens=result.tokens, seconds=seconds
        )
    return replace(cfg, tree_from=str(vectors_dir / BEST)), result, rest
