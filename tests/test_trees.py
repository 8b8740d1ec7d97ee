"""model_export.trees: every builder yields a valid, normalised tree of the right shape."""

from __future__ import annotations

import heapq
import math
import os
from pathlib import Path

import numpy as np
import pytest

from model_export.adaptive import default_cutoffs
from model_export.trees import (
    TREE_KINDS,
    adaptive_tree,
    build_tree,
    class_assignment,
    class_tree,
    clustered_tree,
    huffman_tree,
)
from service.tree import Tree


def zipf_counts(num_words: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = (10_000 / np.arange(1, num_words + 1)).astype(np.int64) + 1
    return rng.permutation(counts)  # builders must not rely on sorted input


def random_parameters(tree: Tree, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((tree.num_rows, dim)).astype(np.float32)
    bias = rng.standard_normal(tree.num_rows).astype(np.float32)
    return weight, bias


def assert_each_word_is_one_leaf(tree: Tree) -> None:
    """Independently of Tree's own checks: each word appears once among the children, and the
    edges of its path run from the root down to it, each edge starting where the last ended."""
    seen = np.bincount(tree.children, minlength=tree.num_nodes)
    assert (seen[: tree.num_leaves] == 1).all()
    for word in range(tree.num_leaves):
        node = tree.root
        for edge in tree.paths[word, : tree.depths[word]]:
            internal = node - tree.num_leaves
            assert tree.child_ptr[internal] <= edge < tree.child_ptr[internal + 1]
            node = int(tree.children[edge])
        assert node == word


def every_kind(counts: np.ndarray, seed: int = 0) -> dict[str, Tree]:
    vectors = np.random.default_rng(seed).standard_normal((len(counts), 5))
    trees = {kind: build_tree(kind, counts, vectors) for kind in TREE_KINDS}
    if len(counts) >= 2:
        trees["adaptive"] = adaptive_tree(counts, default_cutoffs(len(counts)))
    return trees


# -- invariants shared by every builder --------------------------------------------------------


@pytest.mark.parametrize("num_words", [2, 3, 5, 17, 300])
def test_every_builder_gives_a_valid_normalised_tree(num_words: int) -> None:
    counts = zipf_counts(num_words)
    for kind, tree in every_kind(counts).items():
        assert tree.num_leaves == num_words, kind
        assert_each_word_is_one_leaf(tree)
        weight, bias = random_parameters(tree)
        assert tree.check_normalised(weight, bias, samples=5, tol=1e-9) <= 1e-9, kind


def test_builders_accept_zero_counts() -> None:
    counts = np.array([5, 0, 3, 0, 1])
    for kind, tree in every_kind(counts).items():
        weight, bias = random_parameters(tree)
        assert tree.check_normalised(weight, bias) < 1e-6, kind


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (np.array([7]), "at least 2 words"),
        (np.array([], dtype=np.int64), "at least 2 words"),
        (np.array([3, -1, 2]), "non-negative"),
        (np.array([3.0, np.nan]), "finite"),
        (np.array([0, 0, 0]), "all zero"),
        (np.ones((2, 2)), "1-d"),
    ],
)
def test_bad_counts_are_rejected(counts: np.ndarray, message: str) -> None:
    for kind in TREE_KINDS:
        vectors = np.zeros((max(len(counts), 1), 3))
        with pytest.raises(ValueError, match=message):
            build_tree(kind, counts, vectors)


@pytest.mark.parametrize(
    "cutoffs", [(), (0,), (3, 3), (5, 2), (10,), (4, 10)], ids=lambda c: ",".join(map(str, c))
)
def test_adaptive_cutoffs_must_split_the_vocabulary(cutoffs: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="cutoff"):
        adaptive_tree(np.arange(1, 11), cutoffs)


def test_build_tree_rejects_unknown_kind_and_missing_vectors() -> None:
    with pytest.raises(ValueError, match="unknown tree kind 'random'"):
        build_tree("random", np.ones(4))
    with pytest.raises(ValueError, match="needs word vectors"):
        build_tree("clustered", np.ones(4))


# -- Huffman -----------------------------------------------------------------------------------


def optimal_code_length(counts: np.ndarray) -> float:
    """Expected Huffman code length by the textbook heap construction (cost = sum of merges)."""
    heap = [float(c) for c in counts]
    heapq.heapify(heap)
    cost = 0.0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost / float(np.sum(counts))


def test_huffman_known_example() -> None:
    # Classic example: frequencies 45, 13, 12, 16, 9, 5 have code lengths 1, 3, 3, 3, 4, 4.
    counts = np.array([45, 13, 12, 16, 9, 5])
    tree = huffman_tree(counts)
    assert tree.depths.tolist() == [1, 3, 3, 3, 4, 4]
    assert tree.depth_stats(counts).weighted_mean == pytest.approx(224 / 100)


@pytest.mark.parametrize("seed", range(5))
def test_huffman_is_optimal_and_beats_a_balanced_tree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 1000, size=int(rng.integers(2, 400)))
    tree = huffman_tree(counts)
    stats = tree.depth_stats(counts)
    assert stats.weighted_mean is not None
    assert stats.weighted_mean == pytest.approx(optimal_code_length(counts))
    assert stats.weighted_mean <= math.ceil(math.log2(len(counts)))
    assert tree.max_children == 2


def test_huffman_equal_counts_is_balanced() -> None:
    tree = huffman_tree(np.ones(64, dtype=np.int64))
    assert set(tree.depths.tolist()) == {6}


# -- frequency-binned classes ------------------------------------------------------------------


def test_class_tree_shape_and_sizes() -> None:
    counts = zipf_counts(2000)
    classes = class_assignment(counts)
    sizes = np.bincount(classes)
    assert len(sizes) <= math.ceil(math.sqrt(2000))
    assert len(sizes) > math.sqrt(2000) / 2
    assert sizes.min() >= 1
    # Frequent words sit in small classes: the class of the most frequent word is the smallest.
    assert sizes[classes[np.argmax(counts)]] == sizes.min()
    assert sizes.max() < 2000 / 4
    tree = class_tree(counts)
    assert tree.depths.max() <= 2
    assert tree.depth_stats().max == 2
    # Single-word classes are leaves under the root; others are class nodes with their words.
    root_children = tree.children[tree.child_ptr[-2] : tree.child_ptr[-1]]
    assert len(root_children) == len(sizes)
    assert ((tree.depths == 1) == (sizes[classes] == 1)).all()


def test_class_tree_number_of_classes() -> None:
    counts = zipf_counts(100)
    assert class_tree(counts, num_classes=1).depths.max() == 1
    many = class_assignment(counts, num_classes=500)  # more classes than words: at most V
    assert np.bincount(many).min() >= 1
    assert many.max() < 100
    assert class_tree(counts, num_classes=500).depths.max() <= 2
    assert np.bincount(class_assignment(counts, num_classes=7)).size <= 7
    with pytest.raises(ValueError, match="num_classes"):
        class_tree(counts, num_classes=0)


# -- clustered -----------------------------------------------------------------------------------


def test_clustered_tree_separates_clusters_at_the_root() -> None:
    rng = np.random.default_rng(1)
    num_words = 60
    labels = rng.permutation(np.repeat([0, 1], num_words // 2))
    centres = np.array([[8.0, 0.0, 0.0, 0.0], [-8.0, 0.0, 0.0, 0.0]])
    vectors = centres[labels] + rng.standard_normal((num_words, 4))
    counts = np.full(num_words, 10)
    tree = clustered_tree(vectors, counts, seed=3)
    assert tree.max_children == 2
    root_edges = list(range(tree.child_ptr[-2], tree.child_ptr[-1]))
    side = np.array([list(root_edges).index(int(path[0])) for path in tree.paths])
    assert (side == labels).all() or (side == 1 - labels).all()


def test_clustered_tree_keeps_frequent_words_shallow() -> None:
    counts = zipf_counts(500)
    vectors = np.random.default_rng(2).standard_normal((500, 6))
    tree = clustered_tree(vectors, counts)
    assert tree.depths[np.argmax(counts)] + 3 <= np.median(tree.depths)
    huffman = huffman_tree(counts).depth_stats(counts).weighted_mean
    clustered = tree.depth_stats(counts).weighted_mean
    assert huffman is not None
    assert clustered is not None
    assert huffman <= clustered < 1.5 * huffman


def test_clustered_tree_is_deterministic_and_handles_identical_vectors() -> None:
    counts = zipf_counts(40)
    vectors = np.random.default_rng(0).standard_normal((40, 3))
    first = clustered_tree(vectors, counts, seed=5)
    again = clustered_tree(vectors, counts, seed=5)
    assert np.array_equal(first.children, again.children)
    flat = clustered_tree(np.ones((40, 3)), counts)
    weight, bias = random_parameters(flat)
    assert flat.check_normalised(weight, bias) < 1e-6


def test_clustered_tree_bad_vectors() -> None:
    with pytest.raises(ValueError, match=r"shape \(4, e\)"):
        clustered_tree(np.zeros((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match=r"shape \(4, e\)"):
        clustered_tree(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        clustered_tree(np.full((4, 2), np.nan), np.ones(4))


# -- the real WikiText-2 counts ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wikitext_counts() -> np.ndarray:
    from model_export.data import load_corpus

    root = os.environ.get("NEXTWORD_DATA")
    if not root:
        pytest.skip("NEXTWORD_DATA is not set: no WikiText-2 counts")
    return load_corpus(Path(root)).counts


def test_trees_on_wikitext2_counts(wikitext_counts: np.ndarray) -> None:
    counts = wikitext_counts
    huffman = huffman_tree(counts).depth_stats(counts)
    classes = class_tree(counts)
    sizes = np.bincount(class_assignment(counts))
    print(f"huffman {huffman.as_dict()}; classes: {len(sizes)}, largest {sizes.max()}")
    assert huffman.weighted_mean is not None
    assert huffman.weighted_mean <= math.ceil(math.log2(len(counts)))
    assert len(sizes) == 183  # ceil(sqrt(33,278)); measured largest class 456 words
    assert sizes.max() < 600
    assert classes.depths.max() == 2
