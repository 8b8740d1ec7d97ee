"""Builders of the hierarchical-softmax output tree, all producing :class:`service.tree.Tree`.

* :func:`huffman_tree` - the binary Huffman code of the word counts (word2vec / fastText;
  Mikolov et al. 2013): frequent words get short paths, so the expected path length, which
  prices both training and scoring, is minimal among binary trees.
* :func:`class_tree` - two levels: about sqrt(V) classes, then the words of a class
  (Goodman 2001; Mikolov et al. 2011). Classes are bins of equal sqrt-frequency mass, so
  frequent words sit in small classes. A node with c children normalises with a c-way softmax.
* :func:`clustered_tree` - a binary tree learned from the data (Mnih & Hinton 2008):
  recursively split the words in two by their vectors from a first trained model.
* :func:`adaptive_tree` - the shape of the adaptive softmax (Grave et al. 2016): a shortlist of
  frequent words and a few clusters of rarer ones under the root; the head that fills its rows
  is :class:`model_export.adaptive.AdaptiveSoftmax`.

Every builder numbers nodes as :mod:`service.tree` requires: leaves are word ids, an internal
node has a larger id than its children, the root is last.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from service.tree import Tree

TREE_KINDS = ("huffman", "classes", "clustered")

Counts = npt.NDArray[np.float64]

_BLOCK = 4096  # rows per block when scanning the cuts of a large set
_POWER_STEPS = 4  # enough to order points along the principal direction, not to converge


def build_tree(kind: str, counts: np.ndarray, vectors: np.ndarray | None = None) -> Tree:
    """The tree of ``kind`` (one of :data:`TREE_KINDS`) over words with these train counts."""
    if kind == "huffman":
        return huffman_tree(counts)
    if kind == "classes":
        return class_tree(counts)
    if kind == "clustered":
        if vectors is None:
            raise ValueError("a clustered tree needs word vectors from a first trained model")
        return clustered_tree(vectors, counts)
    raise ValueError(f"unknown tree kind {kind!r} (choose from {', '.join(TREE_KINDS)})")


def _check_counts(counts: np.ndarray) -> Counts:
    values = np.asarray(counts)
    if values.ndim != 1:
        raise ValueError(f"counts must be a 1-d array, got shape {values.shape}")
    if len(values) < 2:
        raise ValueError(f"a tree needs at least 2 words, got {len(values)}")
    as_float = values.astype(np.float64)
    if not np.isfinite(as_float).all() or (as_float < 0).any():
        raise ValueError("counts must be finite and non-negative (zero is allowed: unseen words)")
    if as_float.sum() == 0:
        raise ValueError("counts are all zero")
    return as_float


def _binary_tree(num_leaves: int, pairs: list[tuple[int, int]]) -> Tree:
    """A Tree from internal nodes given as (child, child) pairs, internal node k = id V + k."""
    children = np.asarray(pairs, dtype=np.int64).reshape(-1)
    child_ptr = np.arange(0, 2 * len(pairs) + 1, 2, dtype=np.int64)
    return Tree(num_leaves, child_ptr, children)


# -- Huffman ---------------------------------------------------------------------------------------


def huffman_tree(counts: np.ndarray) -> Tree:
    """The binary Huffman tree of ``counts``: the two-queue construction, O(V log V) for the sort.

    Leaves wait in one queue sorted by count; merged nodes join a second queue, which stays
    sorted because each merge weighs at least as much as the one before. Each step merges the
    two lightest fronts, and a merge is numbered after its children, so the root comes last.
    Zero counts are allowed (such words end up deepest).
    """
    weight = _check_counts(counts)
    num_words = len(weight)
    leaves = [int(i) for i in np.argsort(weight, kind="stable")]
    merged_weight = [0.0] * (num_words - 1)
    pairs: list[tuple[int, int]] = []
    next_leaf = next_merged = 0

    def pop_lightest() -> int:
        nonlocal next_leaf, next_merged
        if next_leaf < num_words and (
            next_merged == len(pairs) or weight[leaves[next_leaf]] <= merged_weight[next_merged]
        ):
            next_leaf += 1
            return leaves[next_leaf - 1]
        next_merged += 1
        return num_words + next_merged - 1

    def node_weight(node: int) -> float:
        return float(weight[node]) if node < num_words else merged_weight[node - num_words]

    for k in range(num_words - 1):
        first, second = pop_lightest(), pop_lightest()
        merged_weight[k] = node_weight(first) + node_weight(second)
        pairs.append((second, first))  # the heavier child first; the lighter is the reference
    return _binary_tree(num_words, pairs)


# -- frequency-binned classes ----------------------------------------------------------------------


def class_assignment(counts: np.ndarray, num_classes: int | None = None) -> npt.NDArray[np.int64]:
    """Class of every word: consecutive bins of equal sqrt-frequency mass, most frequent first.

    Binning sqrt(count) instead of count (Mikolov et al. 2011) keeps the classes of frequent
    words small without leaving the rare tail in a few huge classes.
    """
    weight = _check_counts(counts)
    num_words = len(weight)
    wanted = math.ceil(math.sqrt(num_words)) if num_classes is None else int(num_classes)
    if wanted < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    wanted = min(wanted, num_words)
    order = np.argsort(-weight, kind="stable")
    root = np.sqrt(weight[order])
    # Mass before each word, as a fraction of the total: a word starts bin floor(C * fraction).
    before = (np.cumsum(root) - root) / root.sum()
    bins = np.minimum((before * wanted).astype(np.int64), wanted - 1)
    # Renumber the bins that received words 0..K-1 (a very frequent word can span several).
    _, dense = np.unique(bins, return_inverse=True)
    classes = np.empty(num_words, dtype=np.int64)
    classes[order] = dense
    return classes


def class_tree(counts: np.ndarray, num_classes: int | None = None) -> Tree:
    """Two-level tree: the root's children are the classes (about sqrt(V) by default), each
    class node's children are its words; a class of one word is that leaf under the root."""
    classes = class_assignment(counts, num_classes)
    members = [np.flatnonzero(classes == c) for c in range(int(classes.max()) + 1)]
    return two_level_tree(len(classes), members)


def two_level_tree(num_words: int, groups: list[npt.NDArray[np.int64]]) -> Tree:
    """The root's children are ``groups`` in order: a group of one word is that leaf, a larger
    group an internal node whose children are its words in order. One group is the flat tree.

    Internal nodes are numbered in group order and the root last, so the rows of group ``g``'s
    node come before those of later groups and the root's rows are the last ``len(groups) - 1``.
    """
    if len(groups) == 1:  # one group: the root holds every word
        return Tree(num_words, [0, num_words], np.asarray(groups[0], dtype=np.int64))
    child_lists: list[npt.NDArray[np.int64]] = []
    root_children: list[int] = []
    for words in groups:
        if len(words) == 1:
            root_children.append(int(words[0]))
        else:
            root_children.append(num_words + len(child_lists))
            child_lists.append(np.asarray(words, dtype=np.int64))
    child_lists.append(np.asarray(root_children, dtype=np.int64))
    sizes = [len(c) for c in child_lists]
    child_ptr = np.concatenate([[0], np.cumsum(sizes)])
    return Tree(num_words, child_ptr, np.concatenate(child_lists))


# -- adaptive softmax clusters (Grave et al.) ------------------------------------------------------


def frequency_clusters(counts: np.ndarray, cutoffs: tuple[int, ...]) -> list[npt.NDArray[np.int64]]:
    """Word ids by descending count (ties by id), cut at ``cutoffs``: the shortlist of the
    ``cutoffs[0]`` most frequent words, then one cluster per cutoff (Grave et al. 2016)."""
    weight = _check_counts(counts)
    check_cutoffs(cutoffs, len(weight))
    order = np.argsort(-weight, kind="stable")
    bounds = [*cutoffs, len(weight)]
    return [order[: cutoffs[0]]] + [order[a:b] for a, b in pairwise(bounds)]


def check_cutoffs(cutoffs: tuple[int, ...], num_words: int) -> None:
    """Raise ``ValueError`` unless ``0 < cutoffs[0] < ... < cutoffs[-1] < num_words``."""
    if not cutoffs:
        raise ValueError("the adaptive softmax needs at least one cutoff")
    bounds = [0, *cutoffs, num_words]
    if any(b <= a for a, b in pairwise(bounds)):
        raise ValueError(
            f"cutoffs must increase strictly between 0 and the vocabulary size {num_words} "
            f"(exclusive), got {', '.join(map(str, cutoffs))}"
        )


def adaptive_tree(counts: np.ndarray, cutoffs: tuple[int, ...]) -> Tree:
    """The adaptive softmax's shape as a two-level tree: the root's children are the shortlist
    words (most frequent first) and then one node per tail cluster, whose children are its
    words by descending count. A cluster of one word is that leaf under the root."""
    shortlist, *clusters = frequency_clusters(counts, cutoffs)
    groups = [shortlist[j : j + 1] for j in range(len(shortlist))] + clusters
    return two_level_tree(len(np.asarray(counts)), groups)


# -- clustered (Mnih & Hinton) ---------------------------------------------------------------------


def clustered_tree(
    vectors: np.ndarray,
    counts: np.ndarray,
    *,
    seed: int = 0,
    balance: float = 0.3,
    max_dims: int = 96,
) -> Tree:
    """Binary tree from recursive two-way splits of word vectors (Mnih & Hinton 2008).

    Each set of words is ordered along its principal direction (a few power iterations) and
    cut where the two halves are tightest (least within-half squared distance, the 2-means
    objective restricted to cuts along that line), among the cuts that leave each half at
    least ``balance`` of the set's count mass. Weighing balance by counts keeps frequent words
    near the root, so the expected path length stays within a little of Huffman's; with no
    cut in that range the most balanced one is taken. Vectors wider than ``max_dims`` are first
    projected on their top ``max_dims`` principal components (Mnih & Hinton's features were
    100-d), which keeps V = 33k under ten seconds. ``seed`` fixes the power iterations.
    """
    weight = _check_counts(counts)
    points = np.asarray(vectors, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] != len(weight):
        raise ValueError(
            f"vectors must have shape ({len(weight)}, e) to match the counts, got {points.shape}"
        )
    if not np.isfinite(points).all():
        raise ValueError("vectors contain NaN or infinity")
    if not 0.0 <= balance <= 0.5:
        raise ValueError(f"balance must be in [0, 0.5], got {balance}")
    points = _principal_components(points, max_dims)
    rng = np.random.default_rng(seed)
    num_words = len(weight)
    # Splits are made parents first: halves[k] holds split k's two children, a word id or ~j
    # for split j. Numbering split k as the node V + I - 1 - k puts children below parents.
    halves: list[list[int]] = []
    stack: list[tuple[npt.NDArray[np.int64], int, int]] = [(np.arange(num_words), -1, 0)]
    while stack:
        words, parent, side = stack.pop()
        if parent >= 0:
            halves[parent][side] = ~len(halves)
        left, right = _split(points[words], weight[words], balance, rng)
        for new_side, half in enumerate((words[left], words[right])):
            if len(half) > 1:
                stack.append((half, len(halves), new_side))
        halves.append([int(words[left[0]]), int(words[right[0]])])
    root = num_words + len(halves) - 1

    def node_id(child: int) -> int:
        return root - ~child if child < 0 else child

    return _binary_tree(num_words, [(node_id(a), node_id(b)) for a, b in reversed(halves)])


def _principal_components(points: npt.NDArray[np.float64], dims: int) -> npt.NDArray[np.float64]:
    """``points`` centred and, when wider than ``dims``, projected on their top principal axes."""
    centred: npt.NDArray[np.float64] = points - points.mean(axis=0)
    if centred.shape[1] <= dims:
        return centred
    _, axes = np.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    projected: npt.NDArray[np.float64] = centred @ axes[:, -dims:]
    return projected


def _split(
    points: npt.NDArray[np.float64],
    weight: Counts,
    balance: float,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices of the two halves of ``points`` (see :func:`clustered_tree`)."""
    n = len(points)
    if n == 2:
        return np.array([0]), np.array([1])
    centred = points - points.mean(axis=0)
    direction = rng.standard_normal(points.shape[1])
    for _ in range(_POWER_STEPS):
        direction = centred.T @ (centred @ direction)
        norm = math.sqrt(direction @ direction)
        if norm == 0:  # all points equal: any order is as good
            break
        direction /= norm
    order = np.argsort(centred @ direction, kind="stable")
    cut = _best_cut(centred[order], weight[order], balance)
    return order[:cut], order[cut:]


def _best_cut(points: npt.NDArray[np.float64], weight: Counts, balance: float) -> int:
    """Cut position k (first k points vs the rest) with the least within-half squared distance
    among the cuts that leave each half at least ``balance`` of the mass."""
    n = len(points)
    total = weight.sum()
    mass = np.cumsum(weight)[:-1] / total if total > 0 else np.arange(1, n) / n  # (n - 1,)
    allowed = (mass >= balance) & (mass <= 1 - balance)
    if not allowed.any():
        return int(np.argmin(np.abs(mass - 0.5))) + 1
    # Within-half squared distance = sum |x|^2 - |S_left|^2 / k - |S_right|^2 / (n - k), with
    # S the sums of the halves; computed in blocks so a (n, e) cumsum never sits in memory.
    grand = points.sum(axis=0)
    spread = np.empty(n - 1)
    running = np.zeros(points.shape[1])
    for start in range(0, n - 1, _BLOCK):
        stop = min(start + _BLOCK, n - 1)
        left_sum = running + np.cumsum(points[start:stop], axis=0)  # (b, e)
        sizes = np.arange(start + 1, stop + 1, dtype=np.float64)
        right_sum = grand - left_sum
        left_term = (left_sum**2).sum(axis=1) / sizes
        spread[start:stop] = -left_term - (right_sum**2).sum(axis=1) / (n - sizes)
        running = left_sum[-1]
    return int(np.argmin(np.where(allowed, spread, np.inf))) + 1
