"""The load test: the SLO verdict, the workload and its checks, and the gate end to end.

The unit tests import ``loadtest/slo.py`` and ``loadtest/workload.py`` only: locust itself
monkey-patches the standard library on import, so it runs in a child process (``run.py``) here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from loadtest.slo import Sample, Slo, evaluate, percentile, steady_rate
from loadtest.workload import (
    check_scores,
    check_suggestions,
    detokenize,
    sentences,
    server_timing_ms,
)

ROOT = Path(__file__).resolve().parents[1]


def samples_at(
    rate: float, seconds: float, latency_ms: float = 1.0, ok: bool = True
) -> list[Sample]:
    count = int(rate * seconds)
    return [Sample(1000.0 + i / rate, latency_ms, "/v1/suggest", ok) for i in range(count)]


# -- slo -----------------------------------------------------------------------------------------


def test_percentile_matches_numpy_linear_interpolation() -> None:
    rng = random.Random(0)
    values = [rng.expovariate(1.0) for _ in range(1001)]
    for q in (0, 1, 50, 95, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_steady_rate_skips_the_warmup() -> None:
    slow_start = [Sample(1000.0 + i, 1.0, "x", True) for i in range(2)]  # 1 req/s for 2 s
    steady = [Sample(1002.0 + i / 100, 1.0, "x", True) for i in range(1000)]  # then 100 req/s
    assert steady_rate(slow_start + steady, warmup_s=2.0) == pytest.approx(100.0)
    assert steady_rate(slow_start + steady, warmup_s=0.0) < 100.0


def test_a_run_within_the_slo_passes() -> None:
    verdict = evaluate(samples_at(200, 10, latency_ms=2.0), Slo(p99_ms=10, target_rps=200))
    assert verdict.passed, verdict.reasons
    assert verdict.achieved_rps == pytest.approx(200.0)
    assert verdict.p99_ms == pytest.approx(2.0)


def test_p99_over_budget_fails() -> None:
    samples = samples_at(200, 10, latency_ms=2.0)
    slow = [s if i % 50 else Sample(s.start, 50.0, s.name, True) for i, s in enumerate(samples)]
    verdict = evaluate(slow, Slo(p99_ms=10, target_rps=200))  # 2 % of requests at 50 ms
    assert not verdict.passed
    assert verdict.reasons == [f"p99 {verdict.p99_ms:.2f} ms > budget 10 ms"]


def test_one_error_fails_a_zero_error_budget() -> None:
    samples = samples_at(200, 10)
    samples[100] = Sample(samples[100].start, 1.0, "/v1/score", ok=False)
    verdict = evaluate(samples, Slo(target_rps=200))
    assert not verdict.passed
    assert verdict.failures == 1
    assert "error ratio" in verdict.reasons[0]


def test_a_short_run_allows_the_poisson_noise_of_its_count() -> None:
    # 20 req/s over 18 steady seconds: 360 requests, sigma 19 (5 %): 18.9 req/s is within it.
    slo = Slo(target_rps=20, rate_tolerance=0.05, warmup_s=2.0)
    assert evaluate(samples_at(18.9, 20), slo).passed
    short = evaluate(samples_at(15.0, 20), slo)
    assert not short.passed
    assert "least that counts" in short.reasons[0]


def test_a_rate_below_target_fails_beyond_the_tolerance() -> None:
    assert evaluate(samples_at(196, 10), Slo(target_rps=200, rate_tolerance=0.05)).passed
    verdict = evaluate(samples_at(180, 10), Slo(target_rps=200, rate_tolerance=0.05))
    assert not verdict.passed
    assert "achieved 180.0 req/s < 185.0" in verdict.reasons[0]  # 3 sigma of 1,600 sends


def test_server_side_percentiles_by_name_come_from_server_timing() -> None:
    samples = [
        Sample(1000.0 + i / 100, 5.0, "key", True, server_ms=float(i % 10)) for i in range(1000)
    ] + [Sample(1010.0, 9.0, "old server", True)]  # no Server-Timing header
    by_name = evaluate(samples, Slo()).by_name
    assert by_name["key"]["server_p50_ms"] == pytest.approx(4.5)
    assert by_name["key"]["server_max_ms"] == 9.0
    assert by_name["key"]["p99_ms"] == 5.0
    assert np.isnan(by_name["old server"]["server_p99_ms"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [("app;dur=0.523", 0.523), ("db;dur=3, app;dur=1.5", 1.5), ("app", None), (None, None),
     ("app;dur=fast", None), ("other;dur=2", None)],
)  # fmt: skip
def test_server_timing_header_is_read(header: str | None, expected: float | None) -> None:
    got = server_timing_ms(header)
    assert np.isnan(got) if expected is None else got == expected


def test_no_requests_fail() -> None:
    verdict = evaluate([], Slo(target_rps=0))
    assert not verdict.passed
    assert verdict.reasons == ["no requests were made"]


# -- workload ------------------------------------------------------------------------------------


def test_detokenize_gives_typed_text() -> None:
    line = (
        ' He had a well @-@ known role in " Teddy \'s Story " , worth 1 @,@ 000 ( or 3 @.@ 5 ) . '
    )
    assert detokenize(line) == 'He had a well-known role in "Teddy\'s Story", worth 1,000 (or 3.5).'


def test_sentences_skip_headings_unknown_words_and_fragments() -> None:
    lines = [
        " = Robert Boulter = \n",
        " \n",
        " He was born in London . It rained . The film <unk> was made in 2001 . \n",
        " The battle of P 'ohang was won . O 'Brien 's men won . It 's a fine day . \n",
    ]
    assert list(sentences(lines)) == ["He was born in London.", "It's a fine day."]


def body(*texts: str, partial: str = "") -> dict[str, object]:
    probs = [0.5 / (i + 1) for i in range(len(texts))]
    items = [
        {"text": t, "prob": p, "logprob": float(np.log(p))}
        for t, p in zip(texts, probs, strict=True)
    ]
    return {"suggestions": items, "partial_word": partial}


def test_check_suggestions_accepts_a_good_body() -> None:
    assert check_suggestions(body("weather", "week", partial="we"), k=3, max_words=1) is None
    assert check_suggestions(body("of the", "in a"), k=3, max_words=2) is None


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ({"suggestions": [], "partial_word": ""}, "no suggestions"),
        (body("a", "b", "c", "d"), "4 suggestions for k=3"),
        (body("weather", "rain", partial="we"), "'rain' does not complete 'we'"),
        (body("of the city"), "suggestion 'of the city'"),
        (
            {"suggestions": [{"text": "a", "prob": 0.1}, {"text": "b", "prob": 0.2}]},
            "probabilities",
        ),
    ],
)
def test_check_suggestions_names_the_problem(response: dict[str, object], problem: str) -> None:
    found = check_suggestions(response, k=3, max_words=2)
    assert found is not None
    assert problem in found


def test_check_scores() -> None:
    good = {"scores": [{"candidate": "a", "logprob": -1.5}, {"candidate": "b c", "logprob": -9.0}]}
    assert check_scores(good, ["a", "b c"]) is None
    assert check_scores(good, ["a"]) == "scores do not match the candidates"
    nan = {"scores": [{"candidate": "a", "logprob": float("nan")}]}
    assert check_scores(nan, ["a"]) == "logprob nan for 'a'"


# -- the gate end to end -------------------------------------------------------------------------


def run_gate(
    bundle: Path, out: Path, text: Path, p99_ms: float
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, str(ROOT / "loadtest" / "run.py"), "--serve", str(bundle),
        "--users", "4", "--rate", "40", "--duration", "4", "--p99-ms", str(p99_ms),
        "--text", str(text), "--report-dir", str(out), "--rate-tolerance", "0.5",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.load
def test_gate_passes_a_good_run_and_fails_a_missed_budget(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    # Frequent words of the bundle's own vocabulary: every prefix typed has a completion.
    vocab = (tiny_bundle / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in vocab[:300] if w.isalpha() and w.islower()]
    rng = random.Random(0)
    text = tmp_path / "text.txt"
    text.write_text("".join(f" {' '.join(rng.choices(words, k=8))} . \n" for _ in range(20)))

    passed = run_gate(tiny_bundle, tmp_path / "pass", text, p99_ms=5000)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    summary = json.loads((tmp_path / "pass" / "summary.json").read_text())
    assert summary["passed"]
    assert summary["failures"] == 0
    assert summary["requests"] > 50
    assert set(summary["by_name"]) == {"/v1/suggest [key]", "/v1/suggest [phrase]", "/v1/score"}
    assert summary["processes"]["server"]["rss_max_mb"] > 0
    assert (tmp_path / "pass" / "latency.png").stat().st_size > 0
    assert (tmp_path / "pass" / "locust.html").is_file()
    assert "open loop: 4 users" in passed.stdout

    failed = run_gate(tiny_bundle, tmp_path / "fail", text, p99_ms=0.001)
    assert failed.returncode == 1
    assert "SLO FAIL: p99" in failed.stdout


def test_process_monitor_measures_a_whole_process_tree() -> None:
    from loadtest.run import ProcessMonitor  # run.py itself never imports locust

    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    parent_code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {spin!r}])\n"
        "time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        monitor = ProcessMonitor({"server": parent.pid})
        for _ in range(20):  # until the child has started
            if len(monitor._members("server")) == 2:
                break
            time.sleep(0.1)
        assert len(monitor._members("server")) == 2
        monitor.sample()
        time.sleep(1.0)
        monitor.sample()
        # The busy child is counted (the parent alone sleeps), and so is its memory.
        assert monitor.cpu["server"][-1] > 5.0
        assert monitor.rss_mb["server"] > 5.0
    finally:
        import psutil

        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


def test_pin_splits_the_cpus_and_children_start_on_their_share() -> None:
    from loadtest.run import on_cpus, split_cpus

    server, load = split_cpus()
    available = os.sched_getaffinity(0)
    assert server | load == available
    assert not server & load
    assert len(server) == 1
    assert on_cpus(None) is None
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        preexec_fn=on_cpus(server), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout.strip() == str(sorted(server))


def test_pin_needs_a_local_server() -> None:
    from loadtest.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--pin"])  # against --host: the server's CPUs are not ours to choose
