"""Evaluation: exact perplexity and next-word top-k accuracy of a model on a split.

Perplexity is ``exp`` of the mean negative log-likelihood over every target, ``<unk>`` included
(the convention of published WikiText-2 figures); the hierarchical softmax is a normalised
distribution by construction and the pass checks it on real hidden vectors. Top-k accuracy asks
whether the target is among the k most probable words and leaves out ``<unk>`` targets, which
the service never suggests.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model_export.checkpoint import Checkpoint, CheckpointError
from model_export.data import Corpus
from model_export.model import LanguageModel
from model_export.streams import batchify, windows
from service.bundle import UNK

TOP_K = (1, 3, 10)
TOPK_CHUNK = 64


@dataclass(frozen=True)
class EvalResult:
    split: str
    tokens: int
    """Targets scored for perplexity."""
    nll: float
    perplexity: float
    top1: float | None
    top3: float | None
    top10: float | None
    topk_tokens: int
    """Targets counted for top-k accuracy (``<unk>`` excluded, possibly capped)."""
    tokens_per_s: float
    """Scoring throughput of the perplexity pass (encoder + head, one thread setting)."""
    normalisation_error: float
    """Largest ``|sum_w P(w | h) - 1|`` seen on the first window's hidden vectors."""

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


@torch.no_grad()
def perplexity(
    model: LanguageModel, ids: np.ndarray, *, batch_size: int = 10, bptt: int = 70
) -> float:
    """Perplexity only: the fast pass used for validation during training."""
    nll, count, _ = _score(model, ids, batch_size=batch_size, bptt=bptt)
    return math.exp(nll / count)


@torch.no_grad()
def _score(
    model: LanguageModel, ids: np.ndarray, *, batch_size: int, bptt: int
) -> tuple[float, int, float]:
    was_training = model.training
    model.eval()
    streams = batchify(ids, min(batch_size, max(1, len(ids) // 2)))
    state = model.encoder.initial_state(streams.shape[0])
    total, count = 0.0, 0
    start = time.perf_counter()
    for _, inputs, targets in windows(streams, bptt):
        hidden, state = model(inputs, state)
        lp = model.head.log_prob(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1))
        total -= float(lp.double().sum())
        count += targets.numel()
    model.train(was_training)
    return total, count, time.perf_counter() - start


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    ids: np.ndarray,
    *,
    split: str,
    unk_id: int,
    batch_size: int = 10,
    bptt: int = 70,
    topk_tokens: int | None = None,
) -> EvalResult:
    """Perplexity over the whole split; top-k accuracy over its first ``topk_tokens`` targets."""
    nll, count, seconds = _score(model, ids, batch_size=batch_size, bptt=bptt)
    hits, counted, norm_err = _top_k(model, ids, unk_id, batch_size, bptt, topk_tokens)
    acc = [None if counted == 0 else hits[i] / counted for i in range(len(TOP_K))]
    return EvalResult(
        split=split,
        tokens=count,
        nll=nll / count,
        perplexity=math.exp(nll / count),
        top1=acc[0],
        top3=acc[1],
        top10=acc[2],
        topk_tokens=counted,
        tokens_per_s=count / max(seconds, 1e-9),
        normalisation_error=norm_err,
    )


@torch.no_grad()
def _top_k(
    model: LanguageModel,
    ids: np.ndarray,
    unk_id: int,
    batch_size: int,
    bptt: int,
    limit: int | None,
) -> tuple[list[int], int, float]:
    model.eval()
    streams = batchify(ids, min(batch_size, max(1, len(ids) // 2)))
    state = model.encoder.initial_state(streams.shape[0])
    hits, counted, norm_err = [0] * len(TOP_K), 0, 0.0
    for index, inputs, targets in windows(streams, bptt):
        if limit is not None and counted >= limit:
            break
        hidden, state = model(inputs, state)
        flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        # Chunks keep the (rows, V) and (rows, tree edges) temporaries small: whole windows
        # allocated hundreds of MB each and spent as much time in page faults as in arithmetic.
        for start in range(0, len(flat_t), TOPK_CHUNK):
            all_lp = model.head.log_probs_all(flat_h[start : start + TOPK_CHUNK])  # (n, V)
            if index == 0 and start == 0:
                norm_err = float((all_lp.double().exp().sum(-1) - 1.0).abs().max())
            chunk_t = flat_t[start : start + TOPK_CHUNK]
            keep = chunk_t != unk_id
            ranks = _ranks(all_lp[keep], chunk_t[keep])
            for i, k in enumerate(TOP_K):
                hits[i] += int((ranks < k).sum())
            counted += int(keep.sum())
    return hits, counted, norm_err


def _ranks(all_lp: Tensor, targets: Tensor) -> Tensor:
    """0-based rank of each target: how many words are strictly more probable."""
    target_lp = all_lp.gather(1, targets.unsqueeze(1))  # (N, 1)
    return (all_lp > target_lp).sum(1)


def evaluate_checkpoint(
    ckpt: Checkpoint, corpus: Corpus, splits: list[str], topk_tokens: int | None = None
) -> dict[str, Any]:
    """``{split: EvalResult.as_dict()}``; the corpus is mapped onto the checkpoint's vocabulary."""
    index = {word: i for i, word in enumerate(ckpt.vocab)}
    if UNK not in index:
        raise CheckpointError(f"the checkpoint's vocabulary has no {UNK}")
    unk = index[UNK]
    # A checkpoint trained on another slice of the data has other ids: translate word by word.
    lookup = np.array([index.get(word, unk) for word in corpus.vocab], dtype=np.int64)
    results: dict[str, Any] = {}
    for split in splits:
        ids = lookup[corpus.split(split)]
        result = evaluate(ckpt.model, ids, split=split, unk_id=unk, topk_tokens=topk_tokens)
        results[split] = result.as_dict()
    return results
