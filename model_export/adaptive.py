"""The adaptive softmax (Grave, Joulin, Cissé, Grangier, Jégou 2016, arXiv 1609.04309) as a head.

Words are ranked by training count (:func:`model_export.trees.frequency_clusters`). The *head*
is a softmax over the ``S = cutoffs[0]`` most frequent words plus one entry per tail cluster;
tail cluster ``i`` holds the words of rank ``cutoffs[i] .. cutoffs[i + 1] - 1`` (the last one
ends at ``V``) and scores them from a projection of ``h`` to ``d_i = d // div_value ** (i + 1)``
dimensions, so rare words cost little to train:

    log P(w | h) = log softmax(H h + c)[w]                                 w in the shortlist
    log P(w | h) = log softmax(H h + c)[S + i] + log softmax(T_i P_i h + t_i)[w]   w in cluster i

That is a two-level tree (:func:`model_export.trees.adaptive_tree`): the head is the root's
softmax, cluster ``i`` an internal node with ``n_i`` children. :meth:`AdaptiveSoftmax.as_tree`
multiplies each cluster's factors out into ``n_i - 1`` ordinary ``d``-wide rows, making every
node's last child its reference as the tree encoding in :mod:`service.tree` requires, and
:meth:`AdaptiveSoftmax.factors` keeps the same rows in low-rank form, ``(T_i[j] - T_i[-1]) P_i``,
for the decoder (the factored nodes of bundle format 2): a top-k that opens the rarest cluster
then costs ``d_i (d + n_i)`` products instead of ``d n_i``.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.tree import Factors, Tree

# Measured on WikiText-2 (V = 33,278), the default recipe's encoder (d = 256), 1M training tokens
# each, valid ppl: cutoffs 2000,10000 div 4: 297.6 (11.3k tok/s); 4000,20000 div 4: 297.5
# (8.0k); 2000,10000 div 2: 292.3 (10.8k); 500,2500,10000 div 4: 299.9 (11.9k); 1000,5000,15000
# div 4: 293.6 (12.3k); 1000,5000,15000 div 2: 283.8 (10.5k), the best, chosen. Its exact
# top-10 does 1.9M multiply-adds (8.5M for the full softmax), div 4 0.74M
# (benchmarks/head_decode.py); the head is for quality at GPU-friendly cost, HS stays the CPU one.
DEFAULT_CUTOFFS = (1000, 5000, 15000)
DEFAULT_DIV_VALUE = 2.0


def default_cutoffs(vocab_size: int) -> tuple[int, ...]:
    """:data:`DEFAULT_CUTOFFS` (measured on WikiText-2, V = 33k) that fit ``vocab_size``; a
    vocabulary too small for them gets one cluster of its rarer half."""
    fitting = tuple(c for c in DEFAULT_CUTOFFS if c < vocab_size - 1)
    return fitting or (max(1, vocab_size // 2),)


def tail_sizes(dim: int, clusters: int, div_value: float) -> list[int]:
    """Projection width ``d_i`` of each tail cluster (at least 1)."""
    return [max(1, int(dim // div_value ** (i + 1))) for i in range(clusters)]


def tree_groups(tree: Tree) -> list[np.ndarray]:
    """The root's children as groups of word ids: a leaf is a group of one, an internal node
    the group of its leaf children (the layout :func:`~model_export.trees.adaptive_tree` makes)."""
    root = tree.num_internal - 1
    groups = []
    for node in tree.children[tree.child_ptr[root] : tree.child_ptr[root + 1]]:
        if node < tree.num_leaves:
            groups.append(np.array([node]))
            continue
        index = int(node) - tree.num_leaves
        words = tree.children[tree.child_ptr[index] : tree.child_ptr[index + 1]]
        if (words >= tree.num_leaves).any():
            raise ValueError("an adaptive softmax tree has two levels: clusters hold only words")
        groups.append(words)
    return groups


class AdaptiveSoftmax(nn.Module):
    """The head and tail clusters over the groups of ``tree`` (see the module docstring)."""

    def __init__(self, tree: Tree, dim: int, cutoffs: tuple[int, ...], div_value: float) -> None:
        super().__init__()
        groups = tree_groups(tree)
        shortlist = cutoffs[0]
        clusters = groups[shortlist:]
        sizes = np.diff([*cutoffs, tree.num_leaves])
        if len(clusters) != len(cutoffs) or [len(g) for g in clusters] != list(sizes):
            raise ValueError(
                f"the tree's root does not split the vocabulary at cutoffs {list(cutoffs)}"
            )
        if any(len(g) != 1 for g in groups[:shortlist]):
            raise ValueError("the tree's first root children must be the shortlist words")
        self.tree = tree
        self.head = nn.Linear(dim, shortlist + len(clusters))
        widths = tail_sizes(dim, len(clusters), div_value)
        # Tail cluster i: P_i (the projection, no bias) then T_i, t_i (its word scores).
        self.projections = nn.ModuleList(nn.Linear(dim, width, bias=False) for width in widths)
        self.scores = nn.ModuleList(
            nn.Linear(width, len(words)) for width, words in zip(widths, clusters, strict=True)
        )
        vocab = tree.num_leaves
        # Per word: its entry in the head softmax, its cluster (-1: the shortlist) and its
        # position in that cluster. Plain tensors, rebuilt from the tree like the HS tables.
        self._shortlist = torch.from_numpy(np.concatenate(groups[:shortlist]))
        self._members = [torch.from_numpy(np.asarray(g)) for g in clusters]
        self._head_index = torch.empty(vocab, dtype=torch.long)
        self._cluster = torch.full((vocab,), -1, dtype=torch.long)
        self._within = torch.zeros(vocab, dtype=torch.long)
        self._head_index[self._shortlist] = torch.arange(shortlist)
        for i, words in enumerate(self._members):
            self._head_index[words] = shortlist + i
            self._cluster[words] = i
            self._within[words] = torch.arange(len(words))

    # -- training path ---------------------------------------------------------------------------

    def log_prob(self, h: Tensor, targets: Tensor) -> Tensor:
        """``log P(targets | h)``: ``h (N, d)``, ``targets (N,)`` -> ``(N,)``.

        The head runs on every position, each tail only on the positions whose target is in
        its cluster (gathered with ``F.embedding``, whose backward is a dense index-add).
        """
        head_lp = F.log_softmax(self.head(h), dim=-1)  # (N, S + C)
        out = head_lp.gather(1, self._head_index[targets].unsqueeze(1)).squeeze(1)
        cluster = self._cluster[targets]
        for i in range(len(self._members)):
            rows = torch.nonzero(cluster == i).squeeze(1)
            if len(rows) == 0:
                continue
            tail_lp = F.log_softmax(self._tail_logits(i, F.embedding(rows, h)), dim=-1)  # (n, n_i)
            chosen = tail_lp.gather(1, self._within[targets[rows]].unsqueeze(1)).squeeze(1)
            out = out.index_add(0, rows, chosen)
        return out

    def _tail_logits(self, cluster: int, h: Tensor) -> Tensor:
        return self.scores[cluster](self.projections[cluster](h))  # type: ignore[no-any-return]

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        return -self.log_prob(h, targets).mean()

    # -- every word (evaluation, tests) ----------------------------------------------------------

    def log_probs_all(self, h: Tensor) -> Tensor:
        """``log P(w | h)`` for every word, ``(N, V)``."""
        head_lp = F.log_softmax(self.head(h), dim=-1)
        shortlist = len(self._shortlist)
        out = h.new_empty(h.shape[0], self.tree.num_leaves)
        out[:, self._shortlist] = head_lp[:, :shortlist]
        for i, words in enumerate(self._members):
            entry = head_lp[:, shortlist + i : shortlist + i + 1]
            out[:, words] = entry + F.log_softmax(self._tail_logits(i, h), dim=-1)
        return out

    def top_k(self, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self.log_probs_all(h).topk(k, dim=-1)

    # -- export ----------------------------------------------------------------------------------

    def as_tree(self) -> tuple[Tree, np.ndarray, np.ndarray]:
        """The tree and its ``(V - 1, d)`` rows: each node's child logits minus its last child's.

        The tree numbers cluster nodes in cluster order and the root last
        (:func:`~model_export.trees.two_level_tree`); a one-word cluster is a leaf under the
        root and owns no rows (its softmax is the constant 1).
        """
        weights: list[Tensor] = []
        biases: list[Tensor] = []
        for i, words in enumerate(self._members):
            if len(words) > 1:
                project = cast(nn.Linear, self.projections[i])
                score = cast(nn.Linear, self.scores[i])
                weights.append(score.weight.double() @ project.weight.double())  # (n_i, d)
                biases.append(score.bias.double())
        weights.append(self.head.weight.double())
        biases.append(self.head.bias.double())
        rows = [w[:-1] - w[-1] for w in weights]
        offsets = [b[:-1] - b[-1] for b in biases]
        weight = torch.cat(rows).detach().cpu().numpy().astype(np.float32)
        bias = torch.cat(offsets).detach().cpu().numpy().astype(np.float32)
        return self.tree, weight, bias

    def factors(self) -> Factors:
        """Each cluster node's rows as ``Q_i = T_i[:-1] - T_i[-1]`` over ``P_i`` (one-word
        clusters have none); cluster nodes are internal nodes ``0, 1, ...`` in cluster order."""
        nodes: list[int] = []
        ranks: list[int] = []
        projs: list[Tensor] = []
        rows: list[Tensor] = []
        for i, words in enumerate(self._members):
            if len(words) < 2:
                continue
            project = cast(nn.Linear, self.projections[i]).weight.detach().double()
            score = cast(nn.Linear, self.scores[i]).weight.detach().double()
            nodes.append(len(nodes))
            ranks.append(project.shape[0])
            projs.append(project.reshape(-1))
            rows.append((score[:-1] - score[-1]).reshape(-1))
        flat = [torch.cat(parts).numpy() if parts else np.zeros(0) for parts in (projs, rows)]
        return Factors(self.tree, self.head.in_features, nodes, ranks, *flat)
