"""The model: vectorised HS loss vs a slow reference, normalisation, the encoder contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_export.model import (
    ConfigError,
    Encoder,
    FullSoftmax,
    HierarchicalSoftmax,
    LanguageModel,
    ModelConfig,
)
from model_export.trees import class_tree, clustered_tree, huffman_tree
from service.tree import Tree

V = 300
DIM = 8


def zipf_counts(vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(1, (1e5 / np.arange(1, vocab + 1)) * rng.uniform(0.5, 1.5, vocab)).astype(
        np.int64
    )


def random_tree(vocab: int, max_children: int, seed: int) -> Tree:
    """Merge random groups of 2..max_children live nodes until one root remains."""
    rng = np.random.default_rng(seed)
    live = list(range(vocab))
    child_ptr, children = [0], []
    while len(live) > 1:
        size = min(int(rng.integers(2, max_children + 1)), len(live))
        picked = set(rng.choice(len(live), size=size, replace=False).tolist())
        children += [live[i] for i in sorted(picked)]
        child_ptr.append(len(children))
        live = [node for i, node in enumerate(live) if i not in picked]
        live.append(vocab + len(child_ptr) - 2)
    return Tree(vocab, child_ptr, children)


def all_trees() -> dict[str, Tree]:
    counts = zipf_counts(V)
    vectors = np.random.default_rng(1).standard_normal((V, 6))
    return {
        "huffman": huffman_tree(counts),
        "classes": class_tree(counts),
        "clustered": clustered_tree(vectors, counts),
        "random-3": random_tree(V, 3, seed=2),
        "random-40": random_tree(V, 40, seed=3),
        "flat": Tree(V, [0, V], np.arange(V)),
    }


TREES = all_trees()


def naive_log_prob(
    tree: Tree, weight: np.ndarray, bias: np.ndarray, h: np.ndarray, word: int
) -> float:
    """Walk up from the leaf: at each node, an explicit softmax over its children's logits."""
    prob, node = 1.0, word
    while tree.parent[node] >= 0:
        i = tree.parent[node] - tree.num_leaves
        start, end = tree.child_ptr[i], tree.child_ptr[i + 1]
        logits = []
        for j in range(end - start):
            is_last = j == end - start - 1
            row = start + j - i
            logits.append(0.0 if is_last else float(weight[row] @ h + bias[row]))
        z = sum(math.exp(x) for x in logits)
        position = int(np.flatnonzero(tree.children[start:end] == node)[0])
        prob *= math.exp(logits[position]) / z
        node = tree.parent[node]
    return -math.log(prob)


def random_head(tree: Tree, seed: int = 0) -> HierarchicalSoftmax:
    torch.manual_seed(seed)
    head = HierarchicalSoftmax(tree, DIM).double()
    with torch.no_grad():
        head.weight.normal_(0.0, 0.7)
        head.bias.normal_(0.0, 0.7)
    return head


@pytest.mark.parametrize("kind", list(TREES))
def test_hs_loss_is_minus_log_of_the_naive_path_product(kind: str) -> None:
    tree = TREES[kind]
    head = random_head(tree)
    rng = np.random.default_rng(4)
    h = torch.from_numpy(rng.standard_normal((40, DIM)))
    targets = torch.from_numpy(rng.integers(0, V, 40))
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    expected = [
        naive_log_prob(tree, weight, bias, h[n].numpy(), int(targets[n])) for n in range(40)
    ]
    nll = -head.log_prob(h, targets).detach().numpy()
    np.testing.assert_allclose(nll, expected, rtol=1e-10, atol=1e-10)
    assert float(head.loss(h, targets).detach()) == pytest.approx(
        float(np.mean(expected)), rel=1e-10
    )


@pytest.mark.parametrize("kind", list(TREES))
def test_hs_distribution_sums_to_one_and_matches_numpy(kind: str) -> None:
    tree = TREES[kind]
    head = random_head(tree, seed=5)
    h = torch.randn(16, DIM, dtype=torch.float64)
    all_lp = head.log_probs_all(h).detach().numpy()  # (16, V)
    np.testing.assert_allclose(np.exp(all_lp).sum(axis=1), 1.0, atol=1e-12)
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    np.testing.assert_allclose(all_lp, tree.leaf_log_probs(weight, bias, h.numpy()), atol=1e-10)
    some = torch.arange(0, V, 7)
    picked = head.log_prob(h[:1].expand(len(some), -1), some).detach().numpy()
    np.testing.assert_allclose(picked, all_lp[0, some.numpy()], atol=1e-10)


def reference_loss(
    head: HierarchicalSoftmax, h: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The same loss, one word and one node at a time, differentiable: the gradient reference."""
    tree, total = head.tree, h.new_zeros(())
    for n, word in enumerate(targets.tolist()):
        node = word
        while tree.parent[node] >= 0:
            i = int(tree.parent[node]) - tree.num_leaves
            start, end = int(tree.child_ptr[i]), int(tree.child_ptr[i + 1])
            rows = torch.arange(start - i, end - i - 1)
            logits = torch.cat([head.weight[rows] @ h[n] + head.bias[rows], h.new_zeros(1)])
            position = int(np.flatnonzero(tree.children[start:end] == node)[0])
            total = total - torch.log_softmax(logits, 0)[position]
            node = int(tree.parent[node])
    return total / len(targets)


@pytest.mark.parametrize("kind", ["huffman", "classes", "random-40"])
def test_hs_gradients_match_the_reference(kind: str) -> None:
    head = random_head(TREES[kind], seed=6)
    h = torch.randn(12, DIM, dtype=torch.float64, requires_grad=True)
    targets = torch.from_numpy(np.random.default_rng(7).integers(0, V, 12))
    fast = torch.autograd.grad(head.loss(h, targets), [h, head.weight, head.bias])
    slow = torch.autograd.grad(reference_loss(head, h, targets), [h, head.weight, head.bias])
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_full_softmax_exports_as_an_equivalent_flat_tree() -> None:
    head = FullSoftmax(V, DIM)
    with torch.no_grad():
        head.bias.normal_()
    h = torch.randn(6, DIM)
    tree, weight, bias = head.as_tree()
    assert tree.num_internal == 1
    assert tree.max_children == V
    expected = head.log_probs_all(h).detach().double().numpy()
    np.testing.assert_allclose(tree.leaf_log_probs(weight, bias, h.numpy()), expected, atol=1e-5)
    targets = torch.tensor([0, 5, V - 1, 17, 2, 9])
    np.testing.assert_allclose(
        head.log_prob(h, targets).detach().numpy(),
        expected[np.arange(6), targets.numpy()],
        atol=1e-5,
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_state_carries_the_prefix(cell: str) -> None:
    config = ModelConfig(
        vocab_size=50, cell=cell, emb_size=6, hidden_size=10, layers=2, proj_size=7
    )
    encoder = Encoder(config).eval()
    tokens = torch.randint(0, 50, (3, 9))
    state = encoder.initial_state(3)
    assert state.shape == (2, 3, 20 if cell == "lstm" else 10)
    whole, final = encoder(tokens, state)
    assert whole.shape == (3, 9, 7)
    assert final.shape == state.shape
    first, mid = encoder(tokens[:, :4], state)
    second, final2 = encoder(tokens[:, 4:], mid)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(final2, final)


def test_tied_full_softmax_shares_the_embedding() -> None:
    tied = LanguageModel(ModelConfig(vocab_size=40, emb_size=8, hidden_size=8, head="full"))
    assert tied.head.weight is tied.encoder.embedding.weight
    untied = LanguageModel(
        ModelConfig(vocab_size=40, emb_size=8, hidden_size=8, head="full", tie_weights=False)
    )
    assert untied.head.weight is not untied.encoder.embedding.weight
    hs = LanguageModel(ModelConfig(vocab_size=V, emb_size=8, hidden_size=8), TREES["huffman"])
    assert hs.head.weight.shape == (V - 1, 8)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cell": "rnn"}, "unknown cell"),
        ({"head": "nce"}, "unknown head"),
        ({"vocab_size": 1}, "at least 2 word types"),
        ({"hidden_size": 0}, "hidden_size must be positive"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_model_configs_are_named(changes: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"vocab_size": 10, **changes}
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**values)  # type: ignore[arg-type]


def test_hs_needs_a_tree_over_the_same_vocabulary() -> None:
    with pytest.raises(ConfigError, match="needs a tree"):
        LanguageModel(ModelConfig(vocab_size=V))
    with pytest.raises(ConfigError, match="leaves"):
        LanguageModel(ModelConfig(vocab_size=V + 1), TREES["huffman"])


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 1), ("lstm", 2), ("gru", 2)])
def test_recurrent_macs_per_token_counts_the_gate_weights(cell: str, layers: int) -> None:
    # One multiply-add per element of every input-to-hidden and hidden-to-hidden matrix.
    cfg = ModelConfig(vocab_size=50, cell=cell, emb_size=12, hidden_size=20, layers=layers)
    rnn = Encoder(cfg).rnn
    weights = sum(p.numel() for name, p in rnn.named_parameters() if name.startswith("weight"))
    assert cfg.recurrent_macs_per_token() == weights
