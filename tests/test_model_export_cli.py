"""``python -m model_export``: the build and build-default pipelines, eval JSON, refusing to
overwrite, and one error line for every bad corpus or flag."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest

from model_export.__main__ import EXIT_ERROR, _parser, main
from model_export.checkpoint import load_checkpoint
from model_export.corpus import DEFAULT_MAX_VOCAB, CorpusOptions, read_corpus
from service.bundle import MANIFEST_FILE, BundleError, load_bundle
from service.text import TOKENIZER, TOKENIZER_VERSION


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


# -- build --corpus ------------------------------------------------------------------------------


def own_text(paragraphs: int) -> str:
    """Blank-line-separated paragraphs of made-up sentences, a word of its own in each."""
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "and", "then"]
    lines = []
    for i in range(paragraphs):
        first = " ".join(words[(i * 7 + j) % len(words)] for j in range(9))
        second = " ".join(words[(i * 5 + j * 3) % len(words)] for j in range(7))
        lines.append(f"{first.capitalize()}, said Name{i}.\n{second.capitalize()}!")
    return "\n\n".join(lines) + "\n"


def test_build_on_a_plain_text_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = tmp_path / "tmp"  # where the corpus's id files are written while it is read
    ids.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(ids))
    corpus = tmp_path / "notes.txt"
    corpus.write_text(own_text(60), encoding="utf-8")
    out = tmp_path / "bundles" / "notes"
    argv = [
        "build", "--corpus", str(corpus), "--out", str(out), "--recipe", "tiny",
        "--max-tokens", "3000", "--run-dir", str(tmp_path / "run"), "--topk-tokens", "200",
        "--valid-fraction", "0.1", "--seed", "2", "--max-vocab", "30", "--licence", "CC0",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    assert "out of vocabulary valid" in captured.out
    assert captured.err.startswith("corpus (text): ")
    assert not list(ids.iterdir())  # trained from memory-mapped ids, which are gone

    bundle = load_bundle(out)
    manifest = bundle.manifest
    assert manifest["tokenizer"] == {"name": TOKENIZER, "version": TOKENIZER_VERSION}
    assert manifest["data"] == {"name": "notes.txt", "licence": "CC0"}
    assert load_checkpoint(tmp_path / "run" / "best.pt").data == manifest["data"]  # not WikiText
    expected = read_corpus(corpus, CorpusOptions(valid_fraction=0.1, seed=2, max_vocab=30))
    assert bundle.vocab == expected.corpus.vocab
    assert len(bundle.vocab) == 30
    for split in ("valid", "test"):
        assert manifest["metrics"][split]["oov_rate"] == round(expected.corpus.oov_rate(split), 6)
        assert manifest["metrics"][split]["oov_rate"] > 0  # every Name<i> is out of vocabulary
    assert manifest["metrics"]["corpus"]["documents"] == {"train": 48, "valid": 6, "test": 6}
    assert manifest["metrics"]["corpus"]["max_vocab"] == 30

    # A bundle naming a tokenizer this release does not have is refused.
    manifest_path = out / MANIFEST_FILE
    changed = {**manifest, "tokenizer": {"name": TOKENIZER, "version": TOKENIZER_VERSION + 1}}
    manifest_path.write_text(json.dumps(changed), encoding="utf-8")
    with pytest.raises(BundleError, match=r"trained with tokenizer .* version 2, but this release"):
        load_bundle(out)


def bad_build_input(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """A corpus file (or path) and the extra flags of one bad-input case."""
    corpus = tmp_path / ("corpus.jsonl" if case.startswith("jsonl") else "corpus.txt")
    contents = {
        "empty": b"",
        "binary": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "not_utf8": b"caf\xe9\n\nb\n\nc\n",
        "jsonl_not_json": b'{"text": "a b"}\n{"text": "c d"\n',
        "jsonl_no_field": b'{"text": "a b"}\n{"text": "c d"}\n{"body": "e"}\n',
        "one_type": b"word\n\nword word\n\nword\n",
        "too_few_documents": b"a b\n\nc d\n",
    }
    corpus.write_bytes(contents.get(case, own_text(10).encode()))
    flags = {
        "max_vocab_1": ["--max-vocab", "1"],
        "valid_fraction_0": ["--valid-fraction", "0"],
        "valid_fraction_half": ["--valid-fraction", "0.5"],
    }
    return corpus, flags.get(case, [])


BAD_BUILDS = [
    ("empty", "has no text"),
    ("binary", r"is not UTF-8 text \(NUL byte at 8: a binary file\?\)"),
    ("not_utf8", r"is not UTF-8 text \(byte 3\)"),
    ("jsonl_not_json", "corpus.jsonl line 2 is not JSON"),
    ("jsonl_no_field", "corpus.jsonl line 3 has no 'text' field"),
    ("one_type", "has 1 word type"),
    ("too_few_documents", "has 2 document"),
    ("max_vocab_1", "--max-vocab must be at least 2"),
    ("valid_fraction_0", r"--valid-fraction must be in \(0, 0.5\), got 0.0"),
    ("valid_fraction_half", r"--valid-fraction must be in \(0, 0.5\), got 0.5"),
]


@pytest.mark.parametrize(("case", "message"), BAD_BUILDS)
def test_bad_build_input_is_one_error_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    corpus, flags = bad_build_input(tmp_path, case)
    out, run_dir = tmp_path / "bundles" / "x", tmp_path / "runs" / "x"
    argv = [
        "build", "--corpus", str(corpus), "--out", str(out), "--run-dir", str(run_dir),
        "--recipe", "tiny", "--no-progress", *flags,
    ]  # fmt: skip
    assert main(argv) == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "bundles").exists()
    assert not (tmp_path / "runs").exists()


def test_build_refuses_to_run_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    corpus = tmp_path / "notes.txt"
    corpus.write_text("a b c\n\nb c a\n\nc a b\n", encoding="utf-8")
    assert main(["build", "--corpus", str(corpus), "--out", str(tmp_path / "b")]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_max_vocab_defaults_to_the_measured_cap_and_none_lifts_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    build = ["build", "--corpus", "notes.txt", "--out", "bundles/notes"]
    assert _parser().parse_args(build).max_vocab == DEFAULT_MAX_VOCAB
    assert CorpusOptions().max_vocab == DEFAULT_MAX_VOCAB  # the library reads as the CLI does
    assert _parser().parse_args([*build, "--max-vocab", "None"]).max_vocab is None
    assert _parser().parse_args([*build, "--max-vocab", "5000"]).max_vocab == 5000
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args([*build, "--max-vocab", "lots"])
    assert exited.value.code == 2
    assert "expected a number or 'none', got 'lots'" in capsys.readouterr().err
