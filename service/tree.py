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

Factored nodes (bundle format 2)
--------------------------------
A wide node's rows may also come in low-rank form (:class:`Factors`): internal node ``i`` with
factor ``f`` has a projection ``P_f`` of shape ``(r_f, d)`` and rows ``Q_f`` of shape
``(c - 1, r_f)``, and its child ``j`` (not the last) has the logit ``Q_f[j] . (P_f h) + b[row]``.
``W[rows of i]`` still holds ``Q_f P_f`` (rounded to float32), so a reader that ignores factors
gets the same distribution to float32 rounding; a reader that uses them scores the node's
``c - 1`` children with ``r_f (d + c - 1)`` products instead of ``(c - 1) d``. The adaptive
softmax's tail clusters are such nodes (``r_f = d / div_value ** (f + 1)``). Flat storage, factors
in order: ``factor_node (F,)`` internal indices, ``factor_rank (F,)``, ``factor_proj`` (every
``P_f`` row-major, concatenated) and ``factor_rows`` (every ``Q_f`` row-major, concatenated).
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


class Factors:
    """Validated low-rank forms of some nodes' rows (see "Factored nodes" above).

    Kernel arrays: ``node_factor[I]`` (the factor of each internal node or ``-1``; empty when
    there are no factors, so trees without them pay no lookup), ``rank``, ``proj_ptr[F + 1]`` and
    ``rows_ptr[F + 1]`` (offsets into the flat ``proj`` and ``rows``).
    """

    def __init__(
        self,
        tree: Tree,
        dim: int,
        node: npt.ArrayLike,
        rank: npt.ArrayLike,
        proj: npt.ArrayLike,
        rows: npt.ArrayLike,
    ) -> None:
        self.node: IntArray = np.ascontiguousarray(node, dtype=np.int64).reshape(-1)
        self.rank: IntArray = np.ascontiguousarray(rank, dtype=np.int64).reshape(-1)
        self.proj: FloatArray = np.ascontiguousarray(proj, dtype=np.float32).reshape(-1)
        self.rows: FloatArray = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1)
        count = len(self.node)
        if len(self.rank) != count:
            raise TreeError(f"{count} factored nodes but {len(self.rank)} ranks")
        if count and (self.node.min() < 0 or self.node.max() >= tree.num_internal):
            raise TreeError(f"factored nodes must be internal indices below {tree.num_internal}")
        if len(np.unique(self.node)) != count:
            raise TreeError("a node is factored twice")
        if count and self.rank.min() < 1:
            raise TreeError("factor ranks must be positive")
        self.num_rows: IntArray = np.diff(tree.child_ptr)[self.node] - 1
        self.proj_ptr: IntArray = np.concatenate([[0], np.cumsum(self.rank * dim)])
        self.rows_ptr: IntArray = np.concatenate([[0], np.cumsum(self.rank * self.num_rows)])
        if self.proj_ptr[-1] != len(self.proj) or self.rows_ptr[-1] != len(self.rows):
            raise TreeError(
                f"factor arrays hold {len(self.proj)} projection and {len(self.rows)} row values, "
                f"the ranks need {self.proj_ptr[-1]} and {self.rows_ptr[-1]}"
            )
        if not (np.isfinite(self.proj).all() and np.isfinite(self.rows).all()):
            raise TreeError("factors contain NaN or infinity")
        self.dim = dim
        self.node_factor: IntArray = np.full(tree.num_internal if count else 0, -1, np.int64)
        self.node_factor[self.node] = np.arange(count)
        self.max_rank = int(self.rank.max()) if count else 0

    @classmethod
    def none(cls, tree: Tree, dim: int) -> Factors:
        empty = np.zeros(0)
        return cls(tree, dim, empty, empty, empty, empty)

    def __len__(self) -> int:
        return len(self.node)

    def matrices(self, f: int) -> tuple[FloatArray, FloatArray]:
        """``(P_f (r, d), Q_f (c - 1, r))`` of factor ``f``."""
        rank = int(self.rank[f])
        proj = self.proj[self.proj_ptr[f] : self.proj_ptr[f + 1]].reshape(rank, self.dim)
        rows = self.rows[self.rows_ptr[f] : self.rows_ptr[f + 1]].reshape(-1, rank)
        return proj, rows

    @property
    def stored_arrays(self) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
        """As the bundle stores them: ``(node, rank, proj, rows)``."""
        return (self.node, self.rank, self.proj, self.rows)

    @property
    def kernel_arrays(
        self,
    ) -> tuple[IntArray, IntArray, IntArray, FloatArray, IntArray, FloatArray]:
        """The kernels' form: ``(node_factor, rank, proj_ptr, proj, rows_ptr, rows)``."""
        return (self.node_factor, self.rank, self.proj_ptr, self.proj, self.rows_ptr, self.rows)

    def check_rows(self, tree: Tree, weight: FloatArray, tol: float = 1e-4) -> float:
        """Raise :class:`TreeError` unless ``W`` holds every factored node's ``Q_f P_f``."""
        worst = 0.0
        for f, node in enumerate(self.node):
            proj, rows = self.matrices(f)
            first = int(tree.child_ptr[node] - node)
            product = rows.astype(np.float64) @ proj.astype(np.float64)
            stored = weight[first : first + len(rows)].astype(np.float64)
            scale = max(1.0, float(np.abs(product).max()))
            worst = max(worst, float(np.abs(product - stored).max()) / scale)
        if worst > tol:
            raise TreeError(f"factored rows differ from W by {worst:.1e} (tolerance {tol:.0e})")
        return worst


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
        self,
        weight: FloatArray,
        bias: FloatArray,
        hidden: npt.NDArray[np.floating],
        factors: Factors | None = None,
    ) -> npt.NDArray[np.float64]:
        """Branch log-probability of every edge, ``(B, N - 1)``, for hidden vectors ``(B, d)``;
        the rows of factored nodes come from their ``factors`` when given."""
        h = np.atleast_2d(np.asarray(hidden, dtype=np.float64))
        row_logits = h @ weight.astype(np.float64).T + bias.astype(np.float64)  # (B, V-1)
        if factors is not None:
            for f, node in enumerate(factors.node):
                proj, rows = factors.matrices(f)
                first = int(self.child_ptr[node] - node)
                span = slice(first, first + len(rows))
                projected = h @ proj.astype(np.float64).T  # (B, r)
                row_logits[:, span] = projected @ rows.astype(np.float64).T + bias[span]
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
        self,
        weight: FloatArray,
        bias: FloatArray,
        hidden: npt.NDArray[np.floating],
        factors: Factors | None = None,
    ) -> npt.NDArray[np.float64]:
        """``log P(word | h)`` for every word, ``(B, V)``: the brute-force reference."""
        edge_lp = self.edge_log_probs(weight, bias, hidden, factors)
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
