"""model_export.wordvectors: a clustered-tree recipe trains its first run, then clusters its
embeddings, in one build (and in ``train``), resuming the first run rather than redoing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export import recipes
from model_export.__main__ import main
from model_export.checkpoint import load_checkpoint
from model_export.recipes import Recipe
from model_export.train import BEST, LAST, TrainConfig
from model_export.wordvectors import VECTORS_DIR, first_run_for, first_run_share
from service.bundle import load_bundle
from tests.test_model_export_cli import own_text

FIRST_TOKENS = 2_000
FIRST_HIDDEN = 16  # the first run's model is smaller than the main run's (tiny: 24)


@pytest.fixture
def clustered_recipe(monkeypatch: pytest.MonkeyPatch) -> str:
    """``tiny`` with a clustered tree learned from a first run of FIRST_TOKENS tokens."""
    tiny = recipes.RECIPES["tiny"]
    recipe = Recipe(
        model=tiny.model,
        train={**tiny.train, "tree": "clustered", "max_tokens": 3_000},
        first_run={"max_tokens": FIRST_TOKENS},
        first_run_model={"hidden_size": FIRST_HIDDEN},
    )
    monkeypatch.setitem(recipes.RECIPES, "tiny-clustered", recipe)
    return "tiny-clustered"


def test_first_run_only_for_a_clustered_tree_without_its_vectors() -> None:
    first = {"max_tokens": 10}
    assert first_run_for(TrainConfig(tree="clustered"), first) == first
    assert first_run_for(TrainConfig(tree="clustered", tree_from="a.pt"), first) is None
    assert first_run_for(TrainConfig(tree="huffman"), first) is None
    assert first_run_for(TrainConfig(tree="clustered"), None) is None


def test_the_share_of_the_first_run_follows_the_token_budgets() -> None:
    cfg = TrainConfig(tree="clustered", max_tokens=8_000_000)
    assert first_run_share(cfg, {"max_tokens": 2_000_000}) == pytest.approx(0.2)
    assert first_run_share(TrainConfig(max_minutes=10), {"max_tokens": 1}) == 0.25
    # A first-run token at a third of the main run's cost: 2 M of them weigh as 2/3 M.
    assert first_run_share(cfg, {"max_tokens": 2_000_000}, 1 / 3) == pytest.approx(1 / 13)


def test_build_trains_the_vectors_then_the_clustered_model(
    tmp_path: Path, clustered_recipe: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "notes.txt"
    corpus.write_text(own_text(60), encoding="utf-8")
    run, out = tmp_path / "run", tmp_path / "bundles" / "notes"
    argv = [
        "build", "--corpus", str(corpus), "--out", str(out), "--recipe", clustered_recipe,
        "--run-dir", str(run), "--topk-tokens", "100", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "word vectors for the clustered tree" in capsys.readouterr().err

    first = load_checkpoint(run / VECTORS_DIR / LAST)
    assert first.tree_kind == "huffman"
    assert first.model.config.hidden_size == FIRST_HIDDEN  # the recipe's smaller first model
    assert first.train is not None
    assert first.train["progress"]["tokens"] >= FIRST_TOKENS
    main_run = load_checkpoint(run / BEST)
    assert main_run.tree_kind == "clustered"
    assert main_run.model.config.hidden_size == recipes.RECIPES["tiny"].model["hidden_size"]
    bundle = load_bundle(out)
    assert bundle.manifest["tree"]["kind"] == "clustered"
    recorded = bundle.manifest["metrics"]["training"]["first_run"]
    assert recorded["tokens"] == first.train["progress"]["tokens"]

    # Rebuilding from the same run directory resumes both runs: nothing is trained again.
    before = (run / VECTORS_DIR / LAST).stat().st_mtime_ns, (run / LAST).stat().st_mtime_ns
    assert main([*argv, "--force"]) == 0
    after = (run / VECTORS_DIR / LAST).stat().st_mtime_ns, (run / LAST).stat().st_mtime_ns
    assert after == before


def test_train_runs_the_vectors_first(
    data_dir: Path, tmp_path: Path, clustered_recipe: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [
        "train", "--data", str(data_dir), "--data-tokens", "15000", "--recipe", clustered_recipe,
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("word vectors for the clustered tree: best valid ppl")
    assert load_checkpoint(out / VECTORS_DIR / BEST).tree_kind == "huffman"
    assert load_checkpoint(out / BEST).tree_kind == "clustered"
