"""service.tree's factored nodes: validation, and the reference distribution through them."""

from __future__ import annotations

import numpy as np
import pytest

from service.tree import Factors, Tree, TreeError

DIM = 5


def two_level() -> Tree:
    """Words 0-1 under the root; words 2-6 in node 0, words 7-9 in node 1."""
    return Tree(10, [0, 5, 8, 12], [2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 10, 11])


def factored(tree: Tree, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Factors]:
    """Rank-2 and rank-3 factors for nodes 0 and 1, with ``W`` holding their products."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((tree.num_rows, DIM)).astype(np.float32)
    bias = rng.standard_normal(tree.num_rows).astype(np.float32)
    projs, rows = [], []
    for node, rank in ((0, 2), (1, 3)):
        proj = rng.standard_normal((rank, DIM)).astype(np.float32)
        count = int(np.diff(tree.child_ptr)[node]) - 1
        q = rng.standard_normal((count, rank)).astype(np.float32)
        first = int(tree.child_ptr[node]) - node
        weight[first : first + count] = q @ proj
        projs.append(proj.ravel())
        rows.append(q.ravel())
    factors = Factors(tree, DIM, [0, 1], [2, 3], np.concatenate(projs), np.concatenate(rows))
    return weight, bias, factors


def test_factored_rows_give_the_distribution_of_their_products() -> None:
    tree = two_level()
    weight, bias, factors = factored(tree)
    h = np.random.default_rng(1).standard_normal((4, DIM))
    through_factors = tree.leaf_log_probs(weight, bias, h, factors)
    np.testing.assert_allclose(np.exp(through_factors).sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(through_factors, tree.leaf_log_probs(weight, bias, h), atol=1e-5)
    assert factors.check_rows(tree, weight) < 1e-6
    proj, rows = factors.matrices(1)
    assert proj.shape == (3, DIM)
    assert rows.shape == (2, 3)
    assert factors.node_factor.tolist() == [0, 1, -1]
    assert factors.max_rank == 3


def test_no_factors_cost_no_lookup() -> None:
    none = Factors.none(two_level(), DIM)
    assert len(none) == 0
    assert none.node_factor.shape == (0,)
    assert none.max_rank == 0


def test_rows_that_are_not_the_product_are_refused() -> None:
    tree = two_level()
    weight, _, factors = factored(tree)
    weight[0] += 0.1
    with pytest.raises(TreeError, match="differ from W"):
        factors.check_rows(tree, weight)


@pytest.mark.parametrize(
    ("node", "rank", "proj_len", "rows_len", "message"),
    [
        ([0, 1], [2], 25, 14, "2 factored nodes but 1 ranks"),
        ([0, 3], [2, 3], 25, 14, "internal indices below 3"),
        ([1, 1], [2, 3], 25, 14, "factored twice"),
        ([0, 1], [0, 3], 15, 6, "positive"),
        ([0, 1], [2, 3], 24, 14, "the ranks need 25 and 14"),
    ],
)
def test_bad_factor_arrays_are_named(
    node: list[int], rank: list[int], proj_len: int, rows_len: int, message: str
) -> None:
    with pytest.raises(TreeError, match=message):
        Factors(two_level(), DIM, node, rank, np.zeros(proj_len), np.zeros(rows_len))


def test_non_finite_factors_are_refused() -> None:
    proj = np.zeros(25)
    proj[3] = np.nan
    with pytest.raises(TreeError, match="NaN"):
        Factors(two_level(), DIM, [0, 1], [2, 3], proj, np.zeros(14))
