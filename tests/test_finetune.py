"""model_export.finetune and build --init: a bundle's model rebuilt in torch, then fine-tuned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.__main__ import EXIT_ERROR, main
from model_export.checkpoint import Checkpoint, load_checkpoint
from model_export.corpus import CorpusOptions, read_corpus
from model_export.evaluate import perplexity
from model_export.export import export_bundle
from model_export.finetune import from_bundle, load_start
from model_export.model import ConfigError, LanguageModel, ModelConfig
from model_export.trees import adaptive_tree, huffman_tree
from service.bundle import load_bundle

VOCAB = ["<eos>", "<unk>", *(f"w{i}" for i in range(40))]


def toy(tmp_path: Path, **shape: object) -> tuple[LanguageModel, Path]:
    torch.manual_seed(0)
    counts = np.arange(len(VOCAB), 0, -1) * 10
    config = ModelConfig(vocab_size=len(VOCAB), emb_size=12, hidden_size=10, **shape)  # type: ignore[arg-type]
    tree = (
        adaptive_tree(counts, config.cutoffs) if config.head == "adaptive" else huffman_tree(counts)
    )
    model = LanguageModel(config, tree)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    kind = "adaptive" if config.head == "adaptive" else "huffman"
    ckpt = Checkpoint(model, VOCAB, counts, kind, {"name": "toy", "licence": "CC0"})
    out, _ = export_bundle(ckpt, tmp_path / "bundle")
    return model.eval(), out


@pytest.mark.parametrize(
    "shape",
    [{"cell": "lstm"}, {"cell": "gru", "layers": 2}, {"cell": "lstm", "layers": 2, "proj_size": 6}],
    ids=["lstm", "gru-2-layers", "lstm-2-layers-projected"],
)
def test_a_bundle_is_rebuilt_into_the_model_that_made_it(
    tmp_path: Path, shape: dict[str, object]
) -> None:
    original, bundle = toy(tmp_path, **shape)
    rebuilt = from_bundle(bundle)  # runs the export parity check against the bundle
    assert rebuilt.vocab == VOCAB
    assert rebuilt.data == {"name": "toy", "licence": "CC0"}
    tokens = torch.randint(0, len(VOCAB), (3, 7))
    state = original.encoder.initial_state(3)
    with torch.no_grad():
        want, _ = original.encoder(tokens, state)
        got, _ = rebuilt.model.eval().encoder(tokens, state)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        h = want.reshape(-1, want.shape[-1])
        torch.testing.assert_close(
            rebuilt.model.head.log_probs_all(h), original.head.log_probs_all(h), rtol=0, atol=1e-5
        )


def test_only_tree_bundles_are_rebuilt(tmp_path: Path) -> None:
    _, bundle = toy(tmp_path, head="adaptive", cutoffs=(10,))
    with pytest.raises(ConfigError, match=r"pass its run's best\.pt"):
        from_bundle(bundle)


def test_a_run_directory_starts_from_its_best_checkpoint(tiny_run: Path) -> None:
    start = load_start(tiny_run)
    assert start.train is None
    assert start.vocab == load_checkpoint(tiny_run / "best.pt").vocab


def own_text(path: Path, vocab: list[str], rng: np.random.Generator) -> Path:
    """Documents of a repetitive little language over the model's words."""
    words = [w for w in vocab[2:400] if w.isalpha()]
    phrases = [" ".join(rng.choice(words, size=4)) for _ in range(6)]
    docs = [" . ".join(rng.choice(phrases, size=8)) + " ." for _ in range(60)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_build_init_fine_tunes_the_bundle_on_new_text(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vocab = load_bundle(tiny_bundle).vocab
    corpus = own_text(tmp_path / "notes.txt", vocab, np.random.default_rng(0))
    out, run = tmp_path / "tuned", tmp_path / "run"
    argv = [
        "build", "--corpus", str(corpus), "--init", str(tiny_bundle), "--recipe", "tiny",
        "--max-tokens", "4000", "--run-dir", str(run), "--out", str(out), "--topk-tokens", "200",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    tuned = load_bundle(out)
    assert tuned.vocab == vocab
    assert tuned.manifest["metrics"]["training"]["init"] == str(tiny_bundle)
    sourced = read_corpus(corpus, CorpusOptions(), vocab)
    before = perplexity(from_bundle(tiny_bundle).model, sourced.corpus.valid)
    after = perplexity(load_checkpoint(run / "best.pt").model, sourced.corpus.valid)
    assert after < 0.5 * before, (before, after)
    capsys.readouterr()

    again = ["build", "--corpus", str(corpus), "--init", str(tiny_bundle), "--max-vocab", "100"]
    assert main([*again, "--out", str(tmp_path / "x")]) == EXIT_ERROR
    assert "--init keeps the model's vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
