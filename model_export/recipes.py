"""Named training recipes: a model shape plus how to train it, chosen by measurement.

``default`` is what ``make serve`` builds on a fresh machine (a fixed budget of training tokens,
about 11-19 minutes on 2 CPU cores, its clustered tree's first run included); ``quality`` is the
documented longer recipe (about 30 minutes, an hour at most); ``tiny`` is the seconds-long
recipe the tests use. Budgets are in tokens so that the same recipe and seed give the same model
on a machine however busy it is (another CPU's float rounding can change a clustered tree:
within 1 % of test ppl across the two machines measured); ``--max-minutes`` remains an explicit
option. The measurements behind the choices are in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model_export.model import ConfigError, ModelConfig
from model_export.train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    model: dict[str, Any]
    """:class:`ModelConfig` fields except ``vocab_size`` (which the corpus decides)."""
    train: dict[str, Any] = field(default_factory=dict)
    """:class:`TrainConfig` fields."""
    first_run: dict[str, Any] | None = None
    """A clustered tree's first run (:mod:`model_export.wordvectors`): the :class:`TrainConfig`
    fields, its budget, that differ from the main run's; it trains with a Huffman tree."""
    first_run_model: dict[str, Any] = field(default_factory=dict)
    """The first run's :class:`ModelConfig` fields that differ from the main run's: the tree
    needs only word vectors over the same vocabulary, which a smaller model learns in a
    fraction of the time."""

    def build(
        self, vocab_size: int, model_overrides: dict[str, Any], train_overrides: dict[str, Any]
    ) -> tuple[ModelConfig, TrainConfig]:
        model = ModelConfig(vocab_size=vocab_size, **{**self.model, **model_overrides})
        return model, TrainConfig(**{**self.train, **train_overrides})


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(
        model={"cell": "lstm", "emb_size": 24, "hidden_size": 24, "layers": 1, "dropout": 0.0},
        # One thread: matrices this small gain nothing from a second one.
        train={
            "batch_size": 16,
            "bptt": 20,
            "optimizer": "adam",
            "lr": 1e-2,
            "clip": 1.0,
            "threads": 1,
        },
    ),
    # Calibrated on WikiText-2 (V = 33,278) on the 2-core EPYC build machine, shared with other
    # jobs (numbers from 1M-token runs, Adam, constant LR, valid ppl at 0.5M / 1M tokens):
    # batch 64 lr 3e-3 355/277, lr 6e-3 318/252, lr 1e-2 310/250; batch 32 lr 3e-3 329/263
    # but half the tokens/s; batch 128 lr 1e-2 316/254 and slower per token than 64; SGD lr 20
    # 1362 at 0.5M. This recipe with a cosine over 2.4M tokens: 303, 235, 204 at 0.6M/1.2M/1.8M.
    # Throughput at batch 64: 10-16k tok/s (2 threads, idle machine), 6-9k when shared.
    #
    # The tree and the regularisation (2026-12-02, test ppl, same seed): with a Huffman tree and
    # dropout 0.2 the recipe plateaued at 153.5 over 10.5 M tokens (valid flat from 8 M on,
    # train ppl 88: it overfits) and gave 153.7 at 6 M; a tree clustered from a first model's
    # embeddings (Mnih & Hinton) gave 143.0 at 6 M with dropout 0.2 (benchmarks/train_compare.py)
    # and 139.7 (valid 150.6) over 10.5 M with dropout 0.3 (vectors from a 2 M-token Huffman run,
    # 3.4 + 18.4 min on the EPYC machine). The budget is 2 M + 8 M tokens so that both runs fit
    # in 20 minutes on the slower (EPYC, 10k tok/s) of the 2-core machines measured.
    "default": Recipe(
        model={"cell": "lstm", "emb_size": 256, "hidden_size": 256, "layers": 1, "dropout": 0.3},
        train={
            "tree": "clustered",
            "batch_size": 64,
            "bptt": 35,
            "optimizer": "adam",
            "lr": 6e-3,
            "lr_decay": 0.5,
            "anneal": "cosine",
            "clip": 1.0,
            "eval_every": 2_000_000,
            # A token budget, not minutes: what a build trains on must not depend on how fast or
            # busy the machine is.
            "max_tokens": 8_000_000,
        },
        # The clustered tree's word vectors: the same model with a Huffman tree, 2 M tokens.
        first_run={"max_tokens": 2_000_000, "eval_every": 1_000_000},
    ),
}


# Four times the recurrent compute per token of "default" (3.5-6k tok/s on the Xeon). Until
# 2026-12-02 this was the same shape with a Huffman tree over 12.1 M tokens: test ppl 139.3 in
# 58 min on the Xeon, no better than the clustered default. Its tree is now clustered like the
# default's, from the vectors of the default's own first run (the default's shape, learning rate
# and first-run budget: 2 M tokens, a few minutes), and it trains 8 M tokens so that both runs
# fit in an hour on the slower machine.
RECIPES["quality"] = Recipe(
    model={"cell": "lstm", "emb_size": 512, "hidden_size": 512, "layers": 1, "dropout": 0.4},
    train={
        "tree": "clustered",
        "batch_size": 64,
        "bptt": 35,
        "optimizer": "adam",
        "lr": 4e-3,
        "lr_decay": 0.5,
        "anneal": "cosine",
        "clip": 1.0,
        "eval_every": 2_000_000,
        "max_tokens": 8_000_000,
    },
    first_run={**(RECIPES["default"].first_run or {}), "lr": RECIPES["default"].train["lr"]},
    first_run_model=dict(RECIPES["default"].model),
)

RECIPES["finetune"] = Recipe(
    # For build --init: the model's shape and tree come from the model it starts from (these
    # fields are the default recipe's, unused then); the training settings are the default's with
    # a tenth of its learning rate and a budget of 1 M tokens, what a team with a few MB of text
    # spends.
    model=dict(RECIPES["default"].model),
    train={**RECIPES["default"].train, "lr": 6e-4, "max_tokens": 1_000_000, "eval_every": 250_000},
)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    return RECIPES[name]
