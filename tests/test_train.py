"""Training: a tiny real run learns, resuming continues the same run, bad input is one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model_export.__main__ import main
from model_export.checkpoint import load_checkpoint, save_checkpoint
from model_export.data import Corpus, load_corpus
from model_export.evaluate import perplexity
from model_export.model import LanguageModel
from model_export.recipes import get_recipe
from model_export.train import TrainError, make_tree, train

SLICE = 12_000


def test_tiny_run_lowers_validation_perplexity(tiny_run: Path, tiny_corpus: Corpus) -> None:
    corpus = tiny_corpus
    trained = load_checkpoint(tiny_run / "best.pt")
    torch.manual_seed(0)
    fresh = LanguageModel(trained.model.config, make_tree("huffman", corpus, None))
    # An untrained model over a Huffman tree is already close to the unigram distribution
    # (P(w) = 2^-depth), so learning has to beat the unigram perplexity, not the uniform one.
    before = perplexity(fresh, corpus.valid)
    after = perplexity(trained.model, corpus.valid)
    assert before < len(corpus.vocab) / 4
    assert after < 0.8 * before, (before, after)
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["valid_ppl"] == pytest.approx(min(r["valid_ppl"] for r in log))
    assert trained.metrics["valid_ppl"] == pytest.approx(after, rel=1e-6)


def test_resume_continues_exactly_where_the_run_stopped(data_dir: Path, tmp_path: Path) -> None:
    corpus = load_corpus(data_dir, max_tokens=SLICE)
    over = {"eval_every": 2_000, "progress": False, "threads": 1}
    model_cfg, cfg = get_recipe("tiny").build(len(corpus.vocab), {}, {**over, "max_tokens": 4_000})
    straight_cfg = get_recipe("tiny").build(len(corpus.vocab), {}, {**over, "max_tokens": 8_000})[1]
    train(tmp_path / "straight", corpus, model_cfg, straight_cfg)

    first = train(tmp_path / "split", corpus, model_cfg, cfg)
    assert first.tokens < 8_000
    resumed = train(
        tmp_path / "split", corpus, None, None, resume=True, overrides={"max_tokens": 8_000}
    )
    assert resumed.tokens >= 8_000
    one = load_checkpoint(tmp_path / "straight" / "last.pt").model.state_dict()
    two = load_checkpoint(tmp_path / "split" / "last.pt").model.state_dict()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_new_run_never_overwrites_an_old_one(tiny_run: Path, data_dir: Path) -> None:
    corpus = load_corpus(data_dir, max_tokens=SLICE)
    model_cfg, cfg = get_recipe("tiny").build(len(corpus.vocab), {}, {"progress": False})
    before = (tiny_run / "best.pt").read_bytes()
    with pytest.raises(TrainError, match="already holds a run"):
        train(tiny_run, corpus, model_cfg, cfg)
    assert (tiny_run / "best.pt").read_bytes() == before


# -- bad input through the command line -------------------------------------------------------


def _toy_data(root: Path, train_text: str = "a b c a b\nc a b b\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        (root / f"{split}.txt").write_text(train_text, encoding="utf-8")
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("missing", [], "does not exist"),
        ("empty", [], "is empty"),
        ("one-type", [], "at least 2"),
        ("toy", ["--tree", "oak"], "unknown tree 'oak'"),
        ("toy", ["--head", "nce"], "unknown head 'nce'"),
        ("toy", ["--cell", "rnn"], "unknown cell 'rnn'"),
        ("toy", ["--tree", "clustered"], "needs --tree-from"),
    ],
)
def test_bad_training_input_is_one_clear_line(
    setup: str, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    if setup == "empty":
        data.mkdir()
    elif setup == "one-type":
        _toy_data(data, "a a a\na\n")
    elif setup == "toy":
        _toy_data(data)
    out = tmp_path / "run"
    code, err = _run(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--recipe",
            "tiny",
            "--no-progress",
            *extra,
        ],
        capsys,
    )
    assert code == 2
    assert message in err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert not out.exists()


def test_corrupt_and_mismatched_checkpoints_are_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    code, err = _run(["export", str(garbage), "--out", str(tmp_path / "b1")], capsys)
    assert code == 2
    assert "corrupt or not a checkpoint" in err
    assert err.count("\n") == 1

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    code, err = _run(["export", str(truncated), "--out", str(tmp_path / "b2")], capsys)
    assert code == 2
    assert "truncated.pt" in err
    assert err.count("\n") == 1

    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["model_config"]["hidden_size"] += 1
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload, mismatched)
    code, err = _run(["export", str(mismatched), "--out", str(tmp_path / "b3")], capsys)
    assert code == 2
    assert "does not match its model" in err
    assert err.count("\n") == 1
    assert not any(p.name.startswith(("b1", "b2", "b3", ".b")) for p in tmp_path.iterdir())


def test_checkpoints_round_trip_without_pickled_code(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, ckpt)
    payload = torch.load(copy, weights_only=True)  # raises on anything but plain data
    assert set(payload) >= {"model_config", "state_dict", "vocab", "tree", "counts"}
    again = load_checkpoint(copy)
    assert again.vocab == ckpt.vocab
    assert again.tree_kind == "huffman"


def test_cli_exit_status_and_stderr_without_traceback(tmp_path: Path) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_export",
            "eval",
            str(tmp_path / "nope.pt"),
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 2
    assert process.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pt'}: no such file"
    assert "Traceback" not in process.stderr


def test_sigterm_saves_the_run_and_resume_continues_it(data_dir: Path, tmp_path: Path) -> None:
    """A run stopped by a signal (a session's end, Ctrl-C) keeps every whole step in last.pt."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "model_export", "train", "--recipe", "tiny", "--data", str(data_dir),
        "--data-tokens", str(SLICE), "--max-tokens", "100000000", "--epochs", "100000",
        "--eval-every", "1000", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "log.jsonl").exists(), "training never validated"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "continue it with --resume" in stderr
    assert "Traceback" not in stderr
    saved = load_checkpoint(out / "last.pt").train
    assert saved is not None
    stopped_at = saved["progress"]["tokens"]
    assert stopped_at >= 1000
    corpus = load_corpus(data_dir, max_tokens=SLICE)
    resumed = train(
        out, corpus, None, None, resume=True, overrides={"max_tokens": stopped_at + 2_000}
    )
    assert stopped_at + 2_000 <= resumed.tokens < stopped_at + 3_000
