"""The word-level language model: an Embedding -> LSTM/GRU encoder and an output head.

Heads
-----
* :class:`HierarchicalSoftmax` scores words through a tree in the flat encoding of
  :mod:`service.tree` (Morin & Bengio 2005; Mnih & Hinton 2008; Mikolov et al. 2011 for the
  two-level class tree). Its parameters ``weight (V - 1, d)`` and ``bias (V - 1,)`` are exactly
  the rows that tree defines, so the bundle stores them unchanged.
* :class:`FullSoftmax` is the ``V``-way softmax baseline (Bengio et al. 2003) that prices the tree.
  It exports as a one-level "flat" tree (:meth:`FullSoftmax.as_tree`), so serving reads one format.
* :class:`model_export.adaptive.AdaptiveSoftmax` (Grave et al. 2016): a shortlist of frequent
  words and low-rank tail clusters, exported as a two-level tree with its factors multiplied out.

The encoder's ``forward(tokens (B, T), state (L, B, S)) -> (hidden (B, T, d), state (L, B, S))``
is the ONNX contract of :mod:`service.bundle`; an LSTM packs ``h`` and ``c`` side by side in
``S = 2 H``, a GRU has ``S = H``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_export.adaptive import DEFAULT_DIV_VALUE, AdaptiveSoftmax, default_cutoffs
from model_export.trees import check_cutoffs
from service.tree import NO_ROW, Factors, Tree

CELLS = ("lstm", "gru")
HEADS = ("hs", "full", "adaptive")


class ConfigError(ValueError):
    """A model configuration that cannot be built. The message is one line."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; stored in checkpoints to rebuild it."""

    vocab_size: int
    cell: str = "lstm"
    emb_size: int = 256
    hidden_size: int = 256
    layers: int = 1
    dropout: float = 0.0
    head: str = "hs"
    proj_size: int = 0
    """Width ``d`` of a linear projection after the RNN; 0 scores the RNN output directly."""
    tie_weights: bool = True
    """Full softmax only: share the output matrix with the input embeddings when ``d == emb``."""
    cutoffs: tuple[int, ...] = ()
    """Adaptive softmax only: word ranks where the shortlist and each tail cluster end (empty:
    :func:`model_export.adaptive.default_cutoffs` of the vocabulary size)."""
    div_value: float = DEFAULT_DIV_VALUE
    """Adaptive softmax only: tail cluster ``i`` projects ``h`` to ``d / div_value ** (i + 1)``."""

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError(f"the vocabulary needs at least 2 word types, got {self.vocab_size}")
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r} (choose from {', '.join(CELLS)})")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r} (choose from {', '.join(HEADS)})")
        sizes = {"emb_size": self.emb_size, "hidden_size": self.hidden_size, "layers": self.layers}
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.proj_size < 0:
            raise ConfigError(f"proj_size must be >= 0, got {self.proj_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        self._check_adaptive()

    def _check_adaptive(self) -> None:
        cutoffs = tuple(int(c) for c in self.cutoffs)
        if self.head == "adaptive" and not cutoffs:
            cutoffs = default_cutoffs(self.vocab_size)
        object.__setattr__(self, "cutoffs", cutoffs)  # frozen; JSON gives back a list
        if self.head != "adaptive":
            return
        try:
            check_cutoffs(cutoffs, self.vocab_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not self.div_value >= 1.0:
            raise ConfigError(f"div_value must be >= 1, got {self.div_value}")

    @property
    def output_size(self) -> int:
        """``d``: the width of the vectors the head scores."""
        return self.proj_size or self.hidden_size

    @property
    def state_size(self) -> int:
        """``S``: the width of one layer's packed recurrent state."""
        return 2 * self.hidden_size if self.cell == "lstm" else self.hidden_size

    def recurrent_macs_per_token(self) -> int:
        """Multiply-adds of the recurrent layers per token, the bulk of a step's compute with a
        tree head (one gate matrix per LSTM/GRU gate over the layer's input and state)."""
        gates = 4 if self.cell == "lstm" else 3
        first = self.emb_size + self.hidden_size
        rest = (self.layers - 1) * 2 * self.hidden_size
        return gates * self.hidden_size * (first + rest)

    @property
    def tied(self) -> bool:
        return self.head == "full" and self.tie_weights and self.output_size == self.emb_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**values)


class Encoder(nn.Module):
    """Embedding -> dropout -> LSTM/GRU -> dropout -> optional projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_size)
        self.drop = nn.Dropout(config.dropout)
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn(
            config.emb_size,
            config.hidden_size,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.proj = nn.Linear(config.hidden_size, config.proj_size) if config.proj_size else None
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def initial_state(self, batch: int) -> Tensor:
        cfg = self.config
        return torch.zeros(cfg.layers, batch, cfg.state_size, device=self.embedding.weight.device)

    def forward(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        x = self.drop(self.embedding(tokens))  # (B, T, e)
        if self.config.cell == "lstm":
            h0, c0 = torch.split(state, self.config.hidden_size, dim=-1)  # (L, B, H) each
            out, (h1, c1) = self.rnn(x, (h0.contiguous(), c0.contiguous()))
            state_out = torch.cat([h1, c1], dim=-1)  # (L, B, 2H)
        else:
            out, state_out = self.rnn(x, state.contiguous())  # (B, T, H), (L, B, H)
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)  # (B, T, d)
        return out, state_out


class FullSoftmax(nn.Module):
    """``log P(w | h) = log_softmax(W h + b)_w`` over all ``V`` words."""

    def __init__(self, vocab_size: int, dim: int, tied: Tensor | None = None) -> None:
        super().__init__()
        # Tied: the output matrix *is* the input embedding matrix (Press & Wolf 2017).
        self.weight = (
            tied
            if tied is not None
            else nn.Parameter(torch.empty(vocab_size, dim).uniform_(-0.1, 0.1))
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def log_probs_all(self, h: Tensor) -> Tensor:
        return F.log_softmax(F.linear(h, self.weight, self.bias), dim=-1)  # (N, V)

    def log_prob(self, h: Tensor, targets: Tensor) -> Tensor:
        logits = F.linear(h, self.weight, self.bias)  # (N, V)
        return -F.cross_entropy(logits, targets, reduction="none")

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(F.linear(h, self.weight, self.bias), targets)

    def top_k(self, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self.log_probs_all(h).topk(k, dim=-1)

    def as_tree(self) -> tuple[Tree, np.ndarray, np.ndarray]:
        """The same distribution as a one-level tree: the root's children are all the words.

        The last word is the root's reference child (logit 0), so every other word's row is its
        logit minus the last word's, which leaves the softmax unchanged.
        """
        weight = self.weight.detach().double().cpu().numpy()
        bias = self.bias.detach().double().cpu().numpy()
        vocab = weight.shape[0]
        tree = Tree(vocab, [0, vocab], np.arange(vocab))
        return (
            tree,
            (weight[:-1] - weight[-1]).astype(np.float32),
            (bias[:-1] - bias[-1]).astype(np.float32),
        )


class HierarchicalSoftmax(nn.Module):
    """``log P(w | h)`` = sum of the branch log-probabilities on ``w``'s root-to-leaf path.

    The loss is vectorised over paths: the targets' path edges are gathered from ``Tree.paths``
    and scored in one batched product. A binary tree (Huffman, clustered) needs one row per step,
    ``log sigma(+-s)``. A tree with wide nodes (the two-level class tree) needs each node's
    log-softmax over all its children: path steps are grouped by node and scored with a few
    padded ``bmm`` calls (:func:`_node_step_log_probs`); the root's is one dense matmul.
    """

    def __init__(self, tree: Tree, dim: int) -> None:
        super().__init__()
        self.tree = tree
        self.weight = nn.Parameter(torch.empty(tree.num_rows, dim).uniform_(-0.1, 0.1))
        self.bias = nn.Parameter(torch.zeros(tree.num_rows))
        self.binary = tree.max_children == 2
        internal = np.arange(tree.num_internal)
        # Index tables live as plain tensors, not buffers: the tree is stored next to the
        # state_dict in checkpoints and rebuilds them.
        self._row_start = torch.from_numpy(tree.child_ptr[:-1] - internal)  # (I,)
        self._row_count = torch.from_numpy(np.diff(tree.child_ptr) - 1)  # (I,)
        self._child_ptr = torch.from_numpy(tree.child_ptr)
        self._edge_node = torch.from_numpy(tree.edge_node)
        self._edge_row = torch.from_numpy(tree.edge_row)
        self._paths = torch.from_numpy(tree.paths)  # (V, D) edge positions, -1 padded
        self._levels = self._edges_by_depth(tree)

    @staticmethod
    def _edges_by_depth(tree: Tree) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Edge positions grouped by the depth of their child: (edges, parents, children)."""
        depth = np.zeros(tree.num_nodes, dtype=np.int64)
        for node in range(tree.root - 1, -1, -1):
            depth[node] = depth[tree.parent[node]] + 1
        child_depth = depth[tree.children]
        levels = []
        for level in range(1, int(child_depth.max()) + 1):
            edges = np.flatnonzero(child_depth == level)
            parents = tree.parent[tree.children[edges]]
            levels.append(
                (
                    torch.from_numpy(edges),
                    torch.from_numpy(parents),
                    torch.from_numpy(tree.children[edges]),
                )
            )
        return levels

    # -- training path ---------------------------------------------------------------------------

    def log_prob(self, h: Tensor, targets: Tensor) -> Tensor:
        """``log P(targets | h)``: ``h (N, d)``, ``targets (N,)`` -> ``(N,)``."""
        if self.binary:
            return self._log_prob_binary(h, targets)
        return self._log_prob_wide(h, targets)

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        return -self.log_prob(h, targets).mean()

    def _log_prob_binary(self, h: Tensor, targets: Tensor) -> Tensor:
        edges = self._paths[targets]  # (N, D)
        valid = edges >= 0
        tok = torch.arange(len(targets)).unsqueeze(1).expand_as(edges)[valid]  # (M,)
        edge = edges[valid]
        node = self._edge_node[edge]
        row = self._row_start[node]  # a binary node owns one row
        # Child 0 has the row, child 1 is the reference: P(child 1) = 1 - sigma(s) = sigma(-s).
        sign = torch.where(self._edge_row[edge] == NO_ROW, -1.0, 1.0)
        score = _gather_dot(h, tok, self.weight, self.bias, row)  # (M,)
        step = F.logsigmoid(sign * score)
        return torch.zeros(len(targets), dtype=h.dtype).index_add(0, tok, step)

    def _log_prob_wide(self, h: Tensor, targets: Tensor) -> Tensor:
        edges = self._paths[targets]  # (N, D)
        valid = edges >= 0
        tok = torch.arange(len(targets)).unsqueeze(1).expand_as(edges)[valid]  # (M,)
        edge = edges[valid]
        node = self._edge_node[edge]
        step_lp = _node_step_log_probs(
            h,
            tok,
            node,
            edge - self._child_ptr[node],
            self._row_start,
            self._row_count,
            self.weight,
            self.bias,
            root=self.tree.num_internal - 1,
        )
        return h.new_zeros(len(targets)).index_add(0, tok, step_lp)

    # -- every word (evaluation, tests) ----------------------------------------------------------

    def _edge_log_probs_t(self, h: Tensor) -> Tensor:
        """Branch log-probability of every edge, transposed: ``(E, N)``.

        Edge-major layout makes every gather below copy contiguous rows of ``N`` values; the
        token-major layout was several times slower for the same arithmetic.
        """
        row_logits = torch.addmm(self.bias.unsqueeze(1), self.weight, h.T)  # (V-1, N)
        if self.binary:
            # Both children of a binary node read its one row, with opposite signs.
            sign = torch.where(self._edge_row == NO_ROW, -1.0, 1.0).unsqueeze(1)  # (E, 1)
            return F.logsigmoid(sign * row_logits[self._row_start[self._edge_node]])
        has_row = self._edge_row != NO_ROW
        logits = h.new_zeros(self.tree.num_edges, h.shape[0])  # (E, N)
        logits[has_row] = row_logits[self._edge_row[has_row]]
        index = self._edge_node.unsqueeze(1).expand_as(logits)
        peak = h.new_zeros(self.tree.num_internal, h.shape[0])
        peak = peak.scatter_reduce(0, index, logits.detach(), "amax", include_self=False)
        shifted = logits - peak[self._edge_node]
        total = torch.zeros_like(peak).index_add(0, self._edge_node, shifted.exp())
        return shifted - total.log()[self._edge_node]

    def log_probs_all(self, h: Tensor) -> Tensor:
        """``log P(w | h)`` for every word, ``(N, V)``, accumulated top-down one depth at a time."""
        edge_lp = self._edge_log_probs_t(h)  # (E, N)
        node_lp = h.new_zeros(self.tree.num_nodes, h.shape[0])  # (nodes, N)
        for edges, parents, children in self._levels:
            node_lp[children] = node_lp[parents] + edge_lp[edges]
        return node_lp[: self.tree.num_leaves].T

    def top_k(self, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self.log_probs_all(h).topk(k, dim=-1)


def _gather_dot(h: Tensor, tok: Tensor, weight: Tensor, bias: Tensor, row: Tensor) -> Tensor:
    """``h[tok[k]] . weight[row[k]] + bias[row[k]]`` for every ``k``.

    Gathers go through ``F.embedding``: its backward is a dense index-add that runs several times
    faster on CPU than the accumulating ``index_put`` behind ``tensor[index]`` (measured 6x).
    """
    pairs = F.embedding(tok, h) * F.embedding(row, weight)  # (K, d)
    return pairs.sum(-1) + F.embedding(row, bias.unsqueeze(1)).squeeze(1)


SIZE_BUCKETS = torch.tensor([4, 16, 64, 256])
"""Bucket edges for a node's rows and its tokens: :func:`_node_step_log_probs` pads within."""


def _node_step_log_probs(
    h: Tensor,
    tok: Tensor,
    node: Tensor,
    child: Tensor,
    row_start: Tensor,
    row_count: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    root: int,
) -> Tensor:
    """Branch log-probability of path steps ``(tok, node, child index)`` at wide nodes, ``(M,)``.

    Steps are grouped by node, so all tokens passing a node share one load of its rows: one
    ``bmm`` per bucket of nodes with similar (token count, row count), ``(G, K, d) x (G, d, R)
    -> (G, K, R)``, padded to the bucket's largest ``K`` and ``R``. The loop runs over at most
    25 buckets, never over nodes; rows and tokens of all buckets are gathered in one call each,
    so the backward pass fills one dense gradient, not one per bucket. The root, on every path,
    gets a bucket of its own: its ``bmm`` is the dense ``(N, d) x (d, c - 1)`` product.
    """
    order = torch.argsort(node, stable=True)
    groups, inverse, counts = torch.unique_consecutive(
        node[order], return_inverse=True, return_counts=True
    )
    pos = torch.arange(len(tok)) - (torch.cumsum(counts, 0) - counts)[inverse]  # rank in node
    rows = row_count[groups]  # (G_all,)
    key = torch.bucketize(rows, SIZE_BUCKETS) * 8 + torch.bucketize(counts, SIZE_BUCKETS)
    key[groups == root] = -1
    plans = [_Bucket.plan(key == b, inverse, pos, counts, rows) for b in torch.unique(key).tolist()]
    row_tables = [
        torch.where(p.has_row, row_start[groups[p.groups]].unsqueeze(1) + p.cols, 0) for p in plans
    ]
    tok_tables = [p.tok_table(tok[order], len(h)) for p in plans]
    all_rows = torch.cat([t.reshape(-1) for t in row_tables])
    w_all = F.embedding(all_rows, weight)
    b_all = F.embedding(all_rows, bias.unsqueeze(1))
    h_ext = torch.cat([h, h.new_zeros(1, h.shape[1])])  # row N: zeros for padding slots
    h_all = F.embedding(torch.cat([t.reshape(-1) for t in tok_tables]), h_ext)
    w_parts = torch.split(w_all, [t.numel() for t in row_tables])
    b_parts = torch.split(b_all, [t.numel() for t in row_tables])
    h_parts = torch.split(h_all, [t.numel() for t in tok_tables])
    steps, values = [], []
    parts = zip(plans, w_parts, b_parts, h_parts, row_tables, tok_tables, strict=True)
    for p, w, b, x, rt, tt in parts:
        scores = torch.baddbmm(
            b.view(rt.shape).unsqueeze(1), x.view(*tt.shape, -1), w.view(*rt.shape, -1).mT
        ).masked_fill(~p.has_row.unsqueeze(1), -torch.inf)  # (G, K, R)
        lse = torch.logsumexp(F.pad(scores, (0, 1)), dim=2)  # the reference child's 0 included
        j = child[order[p.steps]]
        chosen = scores[p.local, p.pos, j.clamp(max=scores.shape[2] - 1)]
        is_ref = j >= rows[p.groups][p.local]
        values.append(torch.where(is_ref, 0.0, chosen) - lse[p.local, p.pos])
        steps.append(order[p.steps])
    return h.new_zeros(len(tok)).index_add(0, torch.cat(steps), torch.cat(values))


@dataclass(frozen=True)
class _Bucket:
    """Index plan of one bucket: its nodes (``groups``), steps, and padded shapes."""

    groups: Tensor  # (G,) indices into the batch's distinct nodes
    steps: Tensor  # (S,) indices into the node-sorted steps
    local: Tensor  # (S,) each step's node position within the bucket
    pos: Tensor  # (S,) each step's rank among its node's steps
    cols: Tensor  # (R,)
    has_row: Tensor  # (G, R)
    tokens: int  # K

    @staticmethod
    def plan(member: Tensor, inverse: Tensor, pos: Tensor, counts: Tensor, rows: Tensor) -> _Bucket:
        groups = torch.nonzero(member).squeeze(1)
        steps = torch.nonzero(member[inverse]).squeeze(1)
        local = torch.full_like(member, -1, dtype=torch.long)
        local[groups] = torch.arange(len(groups))
        cols = torch.arange(int(rows[groups].max()))
        return _Bucket(
            groups=groups,
            steps=steps,
            local=local[inverse[steps]],
            pos=pos[steps],
            cols=cols,
            has_row=cols < rows[groups].unsqueeze(1),
            tokens=int(counts[groups].max()),
        )

    def tok_table(self, sorted_tok: Tensor, pad: int) -> Tensor:
        """``(G, K)`` token ids of each node's steps, ``pad`` in unused slots."""
        table = torch.full((len(self.groups), self.tokens), pad, dtype=torch.long)
        table[self.local, self.pos] = sorted_tok[self.steps]
        return table


Head = HierarchicalSoftmax | FullSoftmax | AdaptiveSoftmax
TREE_HEADS = ("hs", "adaptive")
"""Heads whose tree is part of the model (stored in checkpoints); the full softmax has none."""


class LanguageModel(nn.Module):
    """Encoder + head. ``tree`` is required for the heads in :data:`TREE_HEADS`, ignored otherwise
    (the adaptive softmax's comes from :func:`model_export.trees.adaptive_tree`)."""

    def __init__(self, config: ModelConfig, tree: Tree | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head: Head
        if config.head in TREE_HEADS:
            if tree is None:
                raise ConfigError(f"the {config.head} head needs a tree")
            if tree.num_leaves != config.vocab_size:
                raise ConfigError(
                    f"tree has {tree.num_leaves} leaves but the vocabulary has {config.vocab_size}"
                )
        if config.head == "hs" and tree is not None:
            self.head = HierarchicalSoftmax(tree, config.output_size)
        elif config.head == "adaptive" and tree is not None:
            try:
                self.head = AdaptiveSoftmax(
                    tree, config.output_size, config.cutoffs, config.div_value
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        else:
            tied = self.encoder.embedding.weight if config.tied else None
            self.head = FullSoftmax(config.vocab_size, config.output_size, tied)

    def forward(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        hidden, state_out = self.encoder(tokens, state)
        return hidden, state_out

    def loss(self, tokens: Tensor, targets: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Mean negative log-likelihood of ``targets (B, T)`` and the final state."""
        hidden, state = self.encoder(tokens, state)
        d = hidden.shape[-1]
        return self.head.loss(hidden.reshape(-1, d), targets.reshape(-1)), state

    @property
    def tree(self) -> Tree | None:
        """The head's own tree (``None`` for the full softmax, whose tree is only an export)."""
        return None if isinstance(self.head, FullSoftmax) else self.head.tree

    def tree_factors(self) -> Factors | None:
        """The low-rank form of some nodes' rows, for the bundle (the adaptive softmax's)."""
        return self.head.factors() if isinstance(self.head, AdaptiveSoftmax) else None

    def tree_arrays(self) -> tuple[Tree, np.ndarray, np.ndarray]:
        """The tree and its float32 ``weight``/``bias`` as the bundle stores them."""
        if isinstance(self.head, HierarchicalSoftmax):
            weight = self.head.weight.detach().cpu().numpy().astype(np.float32)
            bias = self.head.bias.detach().cpu().numpy().astype(np.float32)
            return self.head.tree, weight, bias
        return self.head.as_tree()
