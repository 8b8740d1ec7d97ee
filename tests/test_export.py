"""Export: parity between bundle and torch, tamper detection, atomic and non-overwriting writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_export.checkpoint import Checkpoint, load_checkpoint
from model_export.export import ExportError, check_parity, export_bundle
from model_export.model import LanguageModel, ModelConfig
from model_export.trees import adaptive_tree, class_tree
from service.bundle import (
    ENCODER_FILE,
    MANIFEST_FILE,
    TREE_FILE,
    VOCAB_FILE,
    BundleError,
    load_bundle,
)
from service.decode import DecodeTree, brute_force_log_probs, top_k
from service.tree import Factors, Tree

TOY_VOCAB = ["<eos>", "<unk>", *(f"w{i}" for i in range(58))]


def toy_checkpoint(head: str, cell: str, tree_kind: str = "classes") -> Checkpoint:
    torch.manual_seed(0)
    counts = np.arange(len(TOY_VOCAB), 0, -1) * 10
    config = ModelConfig(
        vocab_size=len(TOY_VOCAB),
        cell=cell,
        emb_size=12,
        hidden_size=10,
        layers=2,
        head=head,
        proj_size=12 if head == "full" else 0,
    )
    tree = None
    if head == "hs":
        tree = class_tree(counts)
    elif head == "adaptive":
        tree = adaptive_tree(counts, config.cutoffs)
    model = LanguageModel(config, tree)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    data = {"name": "WikiText-2", "licence": "CC BY-SA 3.0"}
    kind = {"hs": tree_kind, "adaptive": "adaptive"}.get(head, "flat")
    return Checkpoint(model, TOY_VOCAB, counts, kind, data)


def test_tiny_bundle_matches_torch(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint).model.eval()
    report = check_parity(model, tiny_bundle, prefixes=4, words=128, seed=7)
    assert report.max_abs_diff <= 1e-4
    assert report.state_max_abs_diff <= 1e-4
    # And independently of check_parity: one prefix, every word, bundle vs torch.
    bundle = load_bundle(tiny_bundle)
    tokens = np.array([[bundle.eos_id, 5, 17, 3, 99]], dtype=np.int64)
    state = np.zeros((1, 1, bundle.manifest["encoder"]["state_size"]), dtype=np.float32)
    session = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    hidden, _ = session.run(None, {"tokens": tokens, "state": state})
    from_bundle = bundle.tree.leaf_log_probs(bundle.weight, bundle.bias, hidden[0, -1])
    with torch.no_grad():
        h, _ = model(torch.from_numpy(tokens), torch.from_numpy(state))
        from_torch = model.head.log_probs_all(h[0, -1:]).double().numpy()
    assert np.abs(from_bundle - from_torch).max() <= 1e-4
    assert np.exp(from_bundle).sum() == pytest.approx(1.0, abs=1e-5)


def test_manifest_describes_the_bundle(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    assert manifest["data"] == {"name": "WikiText-2", "licence": "CC BY-SA 3.0"}
    assert manifest["tree"]["kind"] == "huffman"
    assert manifest["tree"]["max_children"] == 2
    assert manifest["tree"]["depth"]["max"] >= manifest["tree"]["depth"]["min"] >= 1
    encoder = manifest["encoder"]
    assert encoder["opset"] >= 17
    assert encoder["cell"] == "lstm"
    assert set(encoder["inputs"]) == {"tokens", "state"}
    assert encoder["outputs"]["hidden"]["shape"] == ["batch", "time", manifest["hidden_size"]]
    assert manifest["metrics"]["valid_ppl"] > 1
    assert set(manifest["files"]) == {VOCAB_FILE, ENCODER_FILE, TREE_FILE}


@pytest.mark.parametrize(
    ("head", "cell", "kind"),
    [("hs", "gru", "classes"), ("full", "lstm", "flat"), ("adaptive", "lstm", "adaptive")],
)
def test_other_heads_and_cells_export_with_parity(
    head: str, cell: str, kind: str, tmp_path: Path
) -> None:
    ckpt = toy_checkpoint(head, cell)
    out, report = export_bundle(ckpt, tmp_path / "toy")
    assert report.max_abs_diff <= 1e-4
    bundle = load_bundle(out)
    assert bundle.manifest["tree"]["kind"] == kind
    assert bundle.manifest["encoder"]["state_size"] == (20 if cell == "lstm" else 10)


def test_adaptive_bundles_keep_their_tail_factors(tmp_path: Path) -> None:
    ckpt = toy_checkpoint("adaptive", "lstm")
    out, _ = export_bundle(ckpt, tmp_path / "adaptive")
    bundle = load_bundle(out)
    assert bundle.manifest["format_version"] == 2
    assert bundle.factors is not None
    assert len(bundle.factors) == 1
    assert bundle.factors.rank.tolist() == [10 // 2]  # d / div_value
    dt = DecodeTree.from_bundle(bundle)
    h = np.random.default_rng(0).standard_normal(10).astype(np.float32)
    brute = brute_force_log_probs(dt, h)
    found = top_k(dt, h, 5)
    np.testing.assert_allclose(found.logprobs, np.sort(brute)[::-1][:5], atol=1e-9)
    with torch.no_grad():
        torch_lp = ckpt.model.head.log_probs_all(torch.from_numpy(h[None]).float())[0]
    np.testing.assert_allclose(brute, torch_lp.double().numpy(), atol=1e-5)


def test_version_1_bundles_still_load(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v1"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}))
    assert load_bundle(copy).factors is None
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(BundleError, match="reads versions 1, 2"):
        load_bundle(copy)


def test_factors_that_disagree_with_the_rows_are_refused(tmp_path: Path) -> None:
    ckpt = toy_checkpoint("adaptive", "lstm")
    original = ckpt.model.tree_factors

    def skewed() -> Factors | None:
        factors = original()
        assert factors is not None
        node, rank, proj, rows = factors.stored_arrays
        return Factors(factors_tree(ckpt), 10, node, rank, proj * 1.5, rows)

    ckpt.model.tree_factors = skewed  # type: ignore[method-assign]
    with pytest.raises(ExportError, match="factored rows differ from W"):
        export_bundle(ckpt, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def factors_tree(ckpt: Checkpoint) -> Tree:
    tree = ckpt.model.tree
    assert tree is not None
    return tree


def test_parity_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    ckpt = toy_checkpoint("hs", "lstm")
    original = ckpt.model.tree_arrays

    def skewed() -> tuple[object, np.ndarray, np.ndarray]:
        tree, weight, bias = original()
        return tree, weight, bias + 0.01  # the bundle's tree no longer matches the model

    ckpt.model.tree_arrays = skewed  # type: ignore[method-assign]
    with pytest.raises(ExportError, match="parity check failed"):
        export_bundle(ckpt, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_unless_forced(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = (out / MANIFEST_FILE).read_bytes()
    ckpt = toy_checkpoint("hs", "lstm")
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(ckpt, out)
    assert (out / MANIFEST_FILE).read_bytes() == before
    export_bundle(ckpt, out, force=True)
    assert load_bundle(out).manifest["vocab_size"] == len(TOY_VOCAB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("name", [VOCAB_FILE, ENCODER_FILE, TREE_FILE])
def test_a_flipped_byte_is_caught_and_named(name: str, tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name} is corrupt"):
        load_bundle(copy)


@pytest.mark.parametrize("name", [VOCAB_FILE, ENCODER_FILE, TREE_FILE, MANIFEST_FILE])
def test_a_missing_file_is_named(name: str, tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / name).unlink()
    with pytest.raises(BundleError, match=f"{name} is missing"):
        load_bundle(copy)
