"""The adaptive softmax head: against torch's own implementation, its tree export, its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model_export.adaptive import AdaptiveSoftmax, default_cutoffs, tail_sizes
from model_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model_export.model import ConfigError, LanguageModel, ModelConfig
from model_export.trees import adaptive_tree, class_tree, frequency_clusters

V = 120
DIM = 16


def shuffled_counts(seed: int = 0) -> np.ndarray:
    """Distinct Zipf-like counts in a random id order: word id is not frequency rank."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(V, 0, -1) * 7 + 3)


def random_head(cutoffs: tuple[int, ...], div_value: float = 2.0, seed: int = 0) -> AdaptiveSoftmax:
    torch.manual_seed(seed)
    head = AdaptiveSoftmax(adaptive_tree(shuffled_counts(seed), cutoffs), DIM, cutoffs, div_value)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.5)
    return head.double()


CUTOFFS = [(10,), (10, 50), (5, 30, 119), (1, 2, 3)]  # (5, 30, 119): a one-word last cluster


@pytest.mark.parametrize("cutoffs", CUTOFFS)
def test_matches_torchs_adaptive_log_softmax(cutoffs: tuple[int, ...]) -> None:
    """Same weights in ``nn.AdaptiveLogSoftmaxWithLoss`` (which needs ids in frequency order)
    give the same log-probabilities: the head is Grave et al.'s, tail biases set to zero."""
    head = random_head(cutoffs)
    reference = nn.AdaptiveLogSoftmaxWithLoss(
        DIM, V, list(cutoffs), div_value=2.0, head_bias=True
    ).double()
    with torch.no_grad():
        reference.head.weight.copy_(head.head.weight)
        assert reference.head.bias is not None
        reference.head.bias.copy_(head.head.bias)
        for i, (project, score) in enumerate(reference.tail):  # type: ignore[misc]
            project.weight.copy_(head.projections[i].weight)
            score.weight.copy_(head.scores[i].weight)
            head.scores[i].bias.zero_()
    rank = np.concatenate(frequency_clusters(shuffled_counts(0), cutoffs))  # rank -> word id
    h = torch.randn(9, DIM, dtype=torch.double)
    ours = head.log_probs_all(h)[:, torch.from_numpy(rank)]
    torch.testing.assert_close(ours, reference.log_prob(h), atol=1e-10, rtol=0)


@pytest.mark.parametrize("cutoffs", CUTOFFS)
def test_distribution_sums_to_one_and_log_prob_agrees(cutoffs: tuple[int, ...]) -> None:
    head = random_head(cutoffs)
    h = torch.randn(7, DIM, dtype=torch.double)
    everything = head.log_probs_all(h)
    torch.testing.assert_close(everything.exp().sum(1), torch.ones(7, dtype=torch.double))
    targets = torch.randint(0, V, (7,))
    torch.testing.assert_close(head.log_prob(h, targets), everything[torch.arange(7), targets])
    assert torch.isclose(head.loss(h, targets), -everything[torch.arange(7), targets].mean())


@pytest.mark.parametrize("cutoffs", CUTOFFS)
def test_exported_rows_reproduce_the_distribution(cutoffs: tuple[int, ...]) -> None:
    """The multiplied-out rows, as the bundle stores them, score every word as torch does."""
    head = random_head(cutoffs)
    tree, weight, bias = head.as_tree()
    tree.check_parameters(weight, bias)
    assert weight.shape == (V - 1, DIM)
    h = np.random.default_rng(3).standard_normal((5, DIM))
    expected = head.log_probs_all(torch.from_numpy(h)).detach().numpy()
    np.testing.assert_allclose(tree.leaf_log_probs(weight, bias, h), expected, atol=2e-5, rtol=0)


def test_tree_layout_is_frequency_ranked() -> None:
    counts = shuffled_counts(1)
    tree = adaptive_tree(counts, (10, 50))
    root = tree.num_internal - 1
    root_children = tree.children[tree.child_ptr[root] : tree.child_ptr[root + 1]]
    order = np.argsort(-counts, kind="stable")
    assert root_children[:10].tolist() == order[:10].tolist()  # the shortlist, most frequent first
    assert len(root_children) == 12
    assert (root_children[10:] >= V).all()
    assert tree.children[: tree.child_ptr[1]].tolist() == order[10:50].tolist()
    assert tree.depth_stats().max == 2


def test_tail_widths_and_default_cutoffs() -> None:
    assert tail_sizes(256, 2, 4.0) == [64, 16]
    assert tail_sizes(8, 3, 4.0) == [2, 1, 1]
    assert default_cutoffs(33_278) == (1000, 5000, 15000)
    assert default_cutoffs(10_000) == (1000, 5000)
    assert default_cutoffs(50) == (25,)
    config = ModelConfig(vocab_size=33_278, head="adaptive")
    assert config.cutoffs == (1000, 5000, 15000)
    assert config.div_value == 2.0
    assert ModelConfig.from_dict(config.to_dict()) == config  # JSON turns the tuple into a list


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cutoffs": (50, 50)}, "increase strictly"),
        ({"cutoffs": (0,)}, "increase strictly"),
        ({"cutoffs": (V,)}, "increase strictly"),
        ({"div_value": 0.5}, "div_value"),
    ],
)
def test_bad_adaptive_configs_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(vocab_size=V, head="adaptive", **changes)  # type: ignore[arg-type]


def test_a_tree_that_does_not_fit_the_cutoffs_is_refused() -> None:
    config = ModelConfig(vocab_size=V, head="adaptive", cutoffs=(10, 50))
    with pytest.raises(ConfigError, match="cutoffs"):
        LanguageModel(config, adaptive_tree(shuffled_counts(), (10, 60)))
    with pytest.raises(ConfigError, match="needs a tree"):
        LanguageModel(config, None)
    with pytest.raises(ConfigError):
        LanguageModel(config, class_tree(shuffled_counts()))


def test_training_lowers_the_loss_and_checkpoints_round_trip(tmp_path: object) -> None:
    config = ModelConfig(
        vocab_size=V, head="adaptive", cutoffs=(10, 50), emb_size=12, hidden_size=DIM
    )
    counts = shuffled_counts()
    torch.manual_seed(0)
    model = LanguageModel(config, adaptive_tree(counts, config.cutoffs))
    tokens = torch.from_numpy(
        np.random.default_rng(0).choice(V, size=(4, 21), p=counts / counts.sum())
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:], model.encoder.initial_state(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1.0
    path = tmp_path / "adaptive.pt"  # type: ignore[operator]
    vocab = [f"w{i}" for i in range(V)]
    save_checkpoint(path, Checkpoint(model, vocab, counts, "adaptive", {}))
    loaded = load_checkpoint(path)
    assert loaded.tree_kind == "adaptive"
    assert loaded.model.config == config
    h = torch.randn(3, DIM)
    torch.testing.assert_close(loaded.model.head.log_probs_all(h), model.head.log_probs_all(h))
