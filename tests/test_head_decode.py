"""benchmarks/head_decode.py: the work it counts is the work the exact search does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.head_decode import (
    K,
    node_log_probs,
    node_products,
    prefix_admissible,
    search_work,
    stream_rows,
)
from service.bundle import load_bundle
from service.decode import DecodeTree, top_k
from service.tree import Factors, Tree


@pytest.mark.parametrize("prefix", [None, "t", "th"])
def test_counted_expansions_equal_the_kernels(tiny_bundle: Path, prefix: str | None) -> None:
    bundle = load_bundle(tiny_bundle)
    dt = DecodeTree.from_bundle(bundle)
    tree = bundle.tree
    products = node_products(tree, bundle.factors, dt.hidden_size)
    everyone = np.ones(tree.num_nodes, dtype=bool)
    admissible = everyone if prefix is None else prefix_admissible(tree, bundle.vocab, prefix)
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = rng.standard_normal(dt.hidden_size).astype(np.float32)
        found = top_k(dt, h, K, prefix=prefix)
        edge_lp = tree.edge_log_probs(bundle.weight, bundle.bias, h, bundle.factors)[0]
        node_lp = node_log_probs(tree, edge_lp)
        assert np.isclose(np.exp(node_lp[: tree.num_leaves]).sum(), 1.0)
        last = float(found.logprobs[-1]) if len(found.ids) == K else -np.inf
        expansions, work = search_work(tree, node_lp, admissible, last, products)
        assert expansions == found.expansions
        assert work == expansions * dt.hidden_size  # a binary tree: one row per expansion


def test_factored_nodes_cost_their_rank() -> None:
    tree = Tree(6, [0, 4, 7], [0, 1, 2, 3, 4, 5, 6])  # node 0: 4 words; the root: 2 words + node 0
    factors = Factors(tree, 8, [0], [2], np.zeros(16), np.zeros(6))
    assert node_products(tree, None, 8).tolist() == [24.0, 16.0]
    assert node_products(tree, factors, 8).tolist() == [2 * (8 + 3), 16.0]


def test_stream_reads_every_stored_row_once() -> None:
    tree = Tree(6, [0, 4, 7], [0, 1, 2, 3, 4, 5, 6])  # node 0: 4 words; the root: 2 words + node 0
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 8)).astype(np.float32)  # rows 0-2: node 0, 3-4: the root
    proj, rows = rng.standard_normal(16), rng.standard_normal(6)
    h = rng.standard_normal(8).astype(np.float32)

    run, nbytes = stream_rows(tree, weight, None)
    assert nbytes == weight.nbytes
    np.testing.assert_allclose(np.concatenate(run(h)), weight @ h, rtol=1e-6)

    factors = Factors(tree, 8, [0], [2], proj, rows)
    run, nbytes = stream_rows(tree, weight, factors)
    assert nbytes == 4 * (2 * 8 + 16 + 6)  # the root's two rows, then node 0's factor
    root, tail = run(h)
    np.testing.assert_allclose(root, weight[3:] @ h, rtol=1e-6)
    expected = rows.reshape(3, 2) @ (proj.reshape(2, 8) @ h)
    np.testing.assert_allclose(tail, expected, rtol=1e-5)
