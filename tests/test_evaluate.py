"""Evaluation: perplexity and top-k accuracy equal a direct one-pass computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.checkpoint import load_checkpoint
from model_export.data import Corpus, load_corpus
from model_export.evaluate import evaluate, evaluate_checkpoint, perplexity

SLICE = 600


@pytest.fixture(scope="module")
def setup(tiny_checkpoint: Path, tiny_corpus: Corpus) -> tuple[torch.nn.Module, np.ndarray, int]:
    ckpt = load_checkpoint(tiny_checkpoint)
    corpus = tiny_corpus
    assert corpus.vocab == ckpt.vocab
    return ckpt.model.eval(), corpus.valid[:SLICE], corpus.unk_id


@torch.no_grad()
def direct(model: torch.nn.Module, ids: np.ndarray, unk: int) -> tuple[float, list[float]]:
    """One stream, one pass, every word scored: the definition, without windows or batching."""
    tokens = torch.from_numpy(ids[:-1]).unsqueeze(0)
    hidden, _ = model(tokens, model.encoder.initial_state(1))
    all_lp = model.head.log_probs_all(hidden[0])  # (T, V)
    targets = torch.from_numpy(ids[1:])
    nll = -all_lp[torch.arange(len(targets)), targets].double().mean().item()
    keep = targets != unk
    top10 = all_lp[keep].topk(10, dim=1).indices  # (K, 10), most probable first
    found = top10 == targets[keep].unsqueeze(1)
    accuracy = [found[:, :k].any(1).double().mean().item() for k in (1, 3, 10)]
    return math.exp(nll), accuracy


def test_metrics_equal_the_direct_computation(
    setup: tuple[torch.nn.Module, np.ndarray, int],
) -> None:
    model, ids, unk = setup
    expected_ppl, expected_acc = direct(model, ids, unk)
    result = evaluate(model, ids, split="valid", unk_id=unk, batch_size=1, bptt=37)
    assert result.tokens == len(ids) - 1
    assert result.perplexity == pytest.approx(expected_ppl, rel=1e-5)
    assert [result.top1, result.top3, result.top10] == pytest.approx(expected_acc, abs=1e-12)
    assert result.topk_tokens == int((ids[1:] != unk).sum())
    assert result.normalisation_error < 1e-4
    assert perplexity(model, ids, batch_size=1, bptt=11) == pytest.approx(expected_ppl, rel=1e-5)


def test_checkpoint_evaluation_maps_another_vocabulary(
    tiny_checkpoint: Path, data_dir: Path
) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    wider = load_corpus(data_dir, max_tokens=60_000)  # more word types than the checkpoint knows
    assert len(wider.vocab) > len(ckpt.vocab)
    results = evaluate_checkpoint(ckpt, wider, ["test"], topk_tokens=500)
    assert results["test"]["tokens"] > 50_000
    assert 1 < results["test"]["perplexity"] < len(ckpt.vocab)
    assert results["test"]["topk_tokens"] >= 500
