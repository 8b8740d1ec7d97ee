"""model_export.progress: one bar for build-default, whose time left follows the binding budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.__main__ import main
from model_export.data import load_corpus
from model_export.progress import EXPORT_COST, SCORE_SPEEDUP, TOPK_COST, BuildBar, RunShare
from model_export.recipes import get_recipe
from model_export.train import train


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bar_at(clock: Clock, topk: int | None = 10) -> BuildBar:
    bar = BuildBar("building x", topk_tokens=topk, enabled=False, clock=clock)
    bar.corpus(valid_tokens=1_000, test_tokens=2_000)
    return bar


def stages(per_token: float, topk: int = 10) -> dict[str, float]:
    return {
        "valid": per_token * (1_000 + TOPK_COST * topk),
        "test": per_token * (2_000 + TOPK_COST * topk),
        "export": per_token * EXPORT_COST * 1_000,
    }


def test_nothing_is_estimated_before_training_reports() -> None:
    assert bar_at(Clock()).left() is None


def test_a_time_budget_leaves_exactly_the_rest_of_it_plus_evaluation() -> None:
    bar = bar_at(Clock())
    bar.validated(2.0)  # 1,000 validation tokens in 2 s: 2 ms a scored token
    bar.step(tokens=50_000, elapsed=30.0, spent=0.25)  # 30 s of a 120 s budget
    evaluation = 2.0 + sum(stages(2e-3).values())  # the final validation, then the stages
    assert bar.left() == pytest.approx(90.0 + evaluation)


def test_a_token_budget_extrapolates_the_measured_rate() -> None:
    bar = bar_at(Clock())
    bar.step(tokens=1_000, elapsed=1.0, spent=0.01)
    bar.step(tokens=11_000, elapsed=11.0, spent=0.11)  # 1,000 tok/s
    # No validation yet: scoring is guessed SCORE_SPEEDUP times faster than training.
    per_token = 1.0 / (SCORE_SPEEDUP * 1_000)
    evaluation = per_token * 1_000 + sum(stages(per_token).values())
    assert bar.left() == pytest.approx(11.0 * 0.89 / 0.11 + evaluation)


def test_stages_count_down_and_rescale_by_what_they_took() -> None:
    clock = Clock()
    bar = bar_at(clock)
    bar.validated(1.0)
    bar.step(tokens=10, elapsed=5.0, spent=1.0)
    expected = stages(1e-3)
    bar.stage("valid")
    assert bar.left() == pytest.approx(sum(expected.values()))
    clock.now += 0.25 * expected["valid"]
    assert bar.left() == pytest.approx(sum(expected.values()) - 0.25 * expected["valid"])
    clock.now += 1.75 * expected["valid"]  # it took twice its estimate: so will the rest
    bar.stage("test")
    assert bar.left() == pytest.approx(2 * (expected["test"] + expected["export"]))
    with pytest.raises(ValueError, match="unknown stage"):
        bar.stage("deploy")


def test_two_runs_share_one_estimate() -> None:
    bar = bar_at(Clock())
    bar.validated(1.0)
    first = RunShare(bar, start=0.0, share=0.2)
    first.step(tokens=1_000, elapsed=10.0, spent=0.5)  # half the first run: a tenth of the whole
    evaluation = 1.0 + sum(stages(1e-3).values())
    assert bar.left() == pytest.approx(10.0 * 0.9 / 0.1 + evaluation)
    main_run = RunShare(bar, start=0.2, share=0.8, tokens=2_000, seconds=20.0)
    main_run.step(tokens=500, elapsed=20.0, spent=0.5)  # 40 s in all for 0.6 of the whole
    assert bar.left() == pytest.approx(40.0 * 0.4 / 0.6 + evaluation)


def test_build_default_shows_one_bar_to_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    text = "".join(f" w{i % 13} w{i % 7} w{i % 5} \n" for i in range(300))
    for split in ("train", "valid", "test"):
        (data / f"{split}.txt").write_text(text, encoding="utf-8")
    argv = [
        "build-default", "--out", str(tmp_path / "bundle"), "--data", str(data),
        "--recipe", "tiny", "--max-tokens", "3000", "--run-dir", str(tmp_path / "run"),
        "--topk-tokens", "100",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    screens = [s.strip() for s in captured.err.replace("\r", "\n").split("\n") if s.strip()]
    bars = [s for s in screens if s.startswith("building ")]
    assert bars, captured.err
    assert all("|" in s for s in bars)  # every screen is the one build bar, no token bar
    assert "tok/s" not in "".join(bars)
    assert any("left; evaluating test" in s for s in bars)
    assert bars[-1].startswith(f"building {tmp_path / 'bundle'}: 100%")
    assert bars[-1].endswith("done")
    assert any(s.startswith("best valid ppl") for s in screens)  # the training summary


def test_train_reports_steps_and_validations(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.txt").write_text(" a b c a b \n c a b b \n" * 40, encoding="utf-8")
    corpus = load_corpus(data)
    model_cfg, cfg = get_recipe("tiny").build(
        len(corpus.vocab), {}, {"max_tokens": 1_000, "eval_every": 500}
    )
    seen: dict[str, list[float]] = {"steps": [], "spent": [], "validations": []}

    class Recorder:
        def step(self, tokens: int, elapsed: float, spent: float) -> None:
            seen["steps"].append(tokens)
            seen["spent"].append(spent)

        def status(self, values: dict[str, str]) -> None:
            assert "loss" in values

        def validated(self, seconds: float) -> None:
            seen["validations"].append(seconds)

    result = train(tmp_path / "run", corpus, model_cfg, cfg, reporter=Recorder())
    assert seen["steps"] == sorted(seen["steps"])
    assert seen["steps"][-1] == result.tokens
    assert seen["spent"][-1] == pytest.approx(1.0)  # the token budget is what ended the run
    assert len(seen["validations"]) >= 2
