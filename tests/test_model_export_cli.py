"""``python -m model_export``: the build-default pipeline, eval JSON, and refusing to overwrite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from model_export.__main__ import main
from service.bundle import load_bundle


def test_build_default_trains_evaluates_and_exports(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundles" / "small"
    argv = [
        "build-default", "--out", str(out), "--data", str(data_dir), "--data-tokens", "15000",
        "--recipe", "tiny", "--max-tokens", "6000", "--run-dir", str(tmp_path / "run"),
        "--topk-tokens", "1000", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = load_bundle(out).manifest
    assert manifest["metrics"]["test"]["perplexity"] > 1
    assert manifest["metrics"]["test"]["topk_tokens"] >= 1000
    assert manifest["metrics"]["training"]["recipe"] == "tiny"
    assert manifest["data"]["name"] == "WikiText-2"

    before = (out / "manifest.json").read_bytes()
    assert main(argv) == 2  # refuses before training anything
    assert "already exists" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before


def test_eval_writes_json(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "eval.json"
    argv = [
        "eval", str(tiny_checkpoint), "--data", str(data_dir), "--data-tokens", "30000",
        "--split", "valid", "--topk-tokens", "500", "--json", str(target),
    ]  # fmt: skip
    assert main(argv) == 0
    written = json.loads(target.read_text())
    assert json.loads(capsys.readouterr().out) == written
    assert set(written) == {"valid"}
    assert written["valid"]["perplexity"] == pytest.approx(math.exp(written["valid"]["nll"]))
    assert 0 <= written["valid"]["top1"] <= written["valid"]["top3"] <= written["valid"]["top10"]


def test_export_refuses_an_existing_bundle(
    tiny_checkpoint: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (tiny_bundle / "manifest.json").read_bytes()
    assert main(["export", str(tiny_checkpoint), "--out", str(tiny_bundle)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tiny_bundle} already exists (pass --force to replace it)\n"
    assert (tiny_bundle / "manifest.json").read_bytes() == before
