"""The output tree of the hierarchical softmax: one flat encoding shared by training and serving.

Encoding (the only place it is defined; every other module derives from it)
---------------------------------------------------------------------------
A tree over ``V`` words has ``N = V + I`` nodes, ``I`` of them internal.

* Node ids ``0 .. V-1`` are the leaves, and leaf ``w`` *is* word id ``w`` (line ``w`` of vocab.txt).
* Node ids ``V .. N-1`` are internal nodes; internal node ``n`` has *internal index* ``i = n - V``.
  Children always have smaller ids than their parent, so the root is ``N - 1`` (fastText's order:
  leaves first, then internal nodes, root last) and iterating ids downwards visits parents first.
* Children are stored in CSR form: internal node ``i`` has the children
  ``children[child_ptr[i] : child_ptr[i + 1]]`` (node ids).  ``child_ptr`` has ``I + 1`` entries
  and ``children`` has ``N - 1`` (every node but the root is exactly one child).  A CSR index
  ``p`` into ``children`` is called an *edge position*.
* Branch parameters: internal node ``i`` with ``c >= 2`` children gives child ``j`` (``0 <= j < c``)
  the logit ``W[row] . h + b[row]`` where ``row = child_ptr[i] + j - i``, except for its *last*
  child, whose logit is the constant 0 (the reference class).  The node's branch distribution is
  the softmax of those ``c`` logits, which for two children is exactly the sigmoid
  ``P(child 0) = sigma(W[row] . h + b[row])`` of word2vec / fastText.  Every node has ``c - 1``
  rows, so ``W`` has ``sum(c - 1) = V - 1`` rows for *any* tree shape: rows of node ``i`` are
  ``child_ptr[i] - i .. child_ptr[i + 1] - i - 2``, contiguous.
* ``log P(word | h)`` is the sum of the branch log-probabilities on the root-to-leaf path.

The structure (``child_ptr``, ``children``) lives in :class:`Tree`; the parameters (``W`` of shape
``(V - 1, d)``, ``b`` of shape ``(V - 1,)``) are plain arrays stored next to it in the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

NO_ROW = -1
"""``edge_row`` value of a reference (last) child: its logit is the constant 0."""


class TreeError(ValueError):
    """The arrays do not encode a valid tree over the vocabulary."""


@dataclass(frozen=True)
class DepthStats:
    min: int
    max: int
    mean: float
    weighted_mean: float | None
    """Expected depth under the word counts, when counts are known (the expected code length)."""

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "min": self.min,
            "max": self.max,
            "mean": round(self.mean, 4),
            "weighted_mean": None if self.weighted_mean is None else round(self.weighted_mean, 4),
        }


class Tree:
    """A validated tree and the per-edge / per-leaf index arrays derived from it once.

    Derived arrays (all built here, never per request):

    * ``parent[N]``: parent node id, ``-1`` for the root.
    * ``edge_node[N - 1]``: internal index of the node that owns edge position ``p``.
    * ``edge_row[N - 1]``: parameter row of edge position ``p``, or :data:`NO_ROW`.
    * ``node_edge[N]``: edge position that leads *into* node ``n`` (``-1`` for the root).
    * ``paths[V, D]``: edge positions from the root down to each leaf, padded with ``-1``
      (``D`` = maximum depth); ``depths[V]`` the number of valid entries.
    """

    def __init__(self, num_leaves: int, child_ptr: npt.ArrayLike, children: npt.ArrayLike) -> None:
        self.num_leaves = int(num_leaves)
        self.child_ptr: IntArray = np.ascontiguousarray(child_ptr, dtype=np.int64)
        self.children: IntArray = np.ascontiguousarray(children, dtype=np.int64)
        self._validate_shape()
        self.edge_node: IntArray = np.repeat(
            np.arange(self.num_internal, dtype=np.int64), np.diff(self.child_ptr)
        )
        last_child = np.zeros(self.num_edges, dtype=bool)
        last_child[self.child_ptr[1:] - 1] = True
        self.edge_row: IntArray = np.where(
            last_child, NO_ROW, np.arange(self.num_edges, dtype=np.int64) - self.edge_node
        )
        self.parent: IntArray = np.full(self.num_nodes, -1, dtype=np.int64)
        self.parent[self.children] = self.edge_node + self.num_leaves
        self.node_edge: IntArray = np.full(self.num_nodes, -1, dtype=np.int64)
        self.node_edge[self.children] = np.arange(self.num_edges, dtype=np.int64)
        self._validate_links()
        self.depths, self.paths = self._leaf_paths()

    # -- sizes -------------------------------------------------------------------------------

    @property
    def num_internal(self) -> int:
        return len(self.child_ptr) - 1

    @property
    def num_nodes(self) -> int:
        return self.num_leaves + self.num_internal

    @property
    def num_edges(self) -> int:
        return len(self.children)

    @property
    def num_rows(self) -> int:
        """Rows of the branch parameter matrix ``W``: always ``V - 1``."""
        return self.num_leaves - 1

    @property
    def root(self) -> int:
        return self.num_nodes - 1

    @property
    def max_children(self) -> int:
        return int(np.diff(self.child_ptr).max())

    # -- validation --------------------------------------------------------------------------

    def _validate_shape(self) -> None:
        if self.num_leaves < 2:
            raise TreeError(f"a tree needs at least 2 leaves, got {self.num_leaves}")
        if self.child_ptr.ndim != 1 or self.children.ndim != 1 or self.num_internal < 1:
            raise TreeError("child_ptr and children must be non-empty 1-d arrays")
        if self.child_ptr[0] != 0 or self.child_ptr[-1] != self.num_edges:
            raise TreeError("child_ptr must start at 0 and end at len(children)")
        fanout = np.diff(self.child_ptr)
        if (fanout < 2).any():
            raise TreeError(f"internal node {int(np.argmax(fanout < 2))} has fewer than 2 children")
        if self.num_edges != self.num_nodes - 1:
            raise TreeError(f"{self.num_edges} edges for {self.num_nodes} nodes (need N - 1)")
        if self.children.min() < 0 or self.children.max() >= self.root:
            raise TreeError("children must be node ids below the root")

    def _validate_links(self) -> None:
        seen = np.bincount(self.children, minlength=self.num_nodes)
        if (seen[: self.root] != 1).any():
            bad = int(np.argmax(seen[: self.root] != 1))
            kind = "word" if bad < self.num_leaves else "internal node"
            raise TreeError(
                f"{kind} {bad} is a child {int(seen[bad])} times (must be exactly once)"
            )
        if (self.children >= self.edge_node + self.num_leaves).any():
            raise TreeError("every child must have a smaller id than its parent")

    def _leaf_paths(self) -> tuple[IntArray, IntArray]:
        depth = np.zeros(self.num_nodes, dtype=np.int64)
        # Parents have larger ids, so one descending sweep sets every depth.
        for node_id in range(self.root - 1, -1, -1):
            depth[node_id] = depth[self.parent[node_id]] + 1
        leaf_depth = depth[: self.num_leaves]
        paths = np.full((self.num_leaves, int(leaf_depth.max())), -1, dtype=np.int64)
        node = np.arange(self.num_leaves)
        steps = leaf_depth.copy()
        while (steps > 0).any():
            live = steps > 0
            steps[live] -= 1
            paths[live, steps[live]] = self.node_edge[node[live]]
            node = np.where(live, self.parent[node], node)
        return leaf_depth, paths

    # -- statistics --------------------------------------------------------------------------

    def depth_stats(self, counts: npt.ArrayLike | None = None) -> DepthStats:
        weighted = None
        if counts is not None:
            weights = np.asarray(counts, dtype=np.float64)
            weighted = float((weights * self.depths).sum() / max(weights.sum(), 1.0))
        return DepthStats(
            min=int(self.depths.min()),
            max=int(self.depths.max()),
            mean=float(self.depths.mean()),
            weighted_mean=weighted,
        )

    def check_parameters(
        self, weight: npt.NDArray[np.floating], bias: npt.NDArray[np.floating]
    ) -> None:
        """Raise :class:`TreeError` unless ``weight`` / ``bias`` fit this tree."""
        if weight.ndim != 2 or weight.shape[0] != self.num_rows:
            raise TreeError(f"weight must have shape ({self.num_rows}, d), got {weight.shape}")
        if bias.shape != (self.num_rows,):
            raise TreeError(f"bias must have shape ({self.num_rows},), got {bias.shape}")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise TreeError("tree parameters contain NaN or infinity")

    # -- the distribution (the numpy reference; serving decodes with service.decode) ----------

    def edge_log_probs(
        self, weight: FloatArray, bias: FloatArray, hidden: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float64]:
        """Branch log-probability of every edge, ``(B, N - 1)``, for hidden vectors ``(B, d)``."""
        h = np.atleast_2d(np.asarray(hidden, dtype=np.float64))
        row_logits = h @ weight.astype(np.float64).T + bias.astype(np.float64)  # (B, V-1)
        logits = np.zeros((h.shape[0], self.num_edges), dtype=np.float64)
        has_row = self.edge_row != NO_ROW
        logits[:, has_row] = row_logits[:, self.edge_row[has_row]]
        starts = self.child_ptr[:-1]
        peak = np.maximum.reduceat(logits, starts, axis=1)  # (B, I)
        shifted = logits - peak[:, self.edge_node]
        norm = np.log(np.add.reduceat(np.exp(shifted), starts, axis=1))  # (B, I)
        result: npt.NDArray[np.float64] = shifted - norm[:, self.edge_node]
        return result

    def leaf_log_probs(
        self, weight: FloatArray, bias: FloatArray, hidden: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float64]:
        """``log P(word | h)`` for every word, ``(B, V)``: the brute-force reference."""
        edge_lp = self.edge_log_probs(weight, bias, hidden)
        padded = np.concatenate([edge_lp, np.zeros((edge_lp.shape[0], 1))], axis=1)
        # Padding entries (-1) index the appended zero column.
        result: npt.NDArray[np.float64] = padded[:, self.paths].sum(axis=-1)
        return result

    def check_normalised(
        self,
        weight: FloatArray,
        bias: FloatArray,
        *,
        samples: int = 4,
        seed: int = 0,
        tol: float = 1e-6,
    ) -> float:
        """Check that leaf probabilities sum to 1 for random hidden vectors; return the worst."""
        rng = np.random.default_rng(seed)
        hidden = rng.standard_normal((samples, weight.shape[1]))
        total = np.exp(self.leaf_log_probs(weight, bias, hidden)).sum(axis=1)
        worst = float(np.abs(total - 1.0).max())
        if worst > tol:
            raise TreeError(f"leaf probabilities sum to 1 +- {worst:.2e} (tolerance {tol:.0e})")
        return worst
