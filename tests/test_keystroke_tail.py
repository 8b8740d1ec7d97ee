"""benchmarks/keystroke_tail.py: the Server-Timing it reads and the tail it reports."""

from __future__ import annotations

import math

import pytest

from benchmarks.keystroke_tail import Answer, server_ms, summarise


def test_server_timing_is_read_from_the_lowercased_head() -> None:
    head = b"http/1.1 200 ok\r\nx-request-id: a-1\r\nserver-timing: app;dur=1.250\r\nfoo: bar"
    assert server_ms(head) == 1.25
    assert server_ms(b"http/1.1 200 ok\r\nserver-timing: app;dur=0.500") == 0.5
    assert math.isnan(server_ms(b"http/1.1 200 ok\r\ncontent-length: 2"))


def key(start: float, server: float, decode: float, status: int = 200) -> Answer:
    stages = {"tokenize": 0.1, "encode": 0.2, "decode": decode, "total": 0.3 + decode}
    return Answer(start, "key", status, server + 1.0, server, stages)


def test_the_slowest_percent_is_split_into_stages() -> None:
    answers = [key(0.0, 50.0, 40.0)]  # inside the warm-up: not counted
    answers += [key(10.0 + i, 1.0, 0.5) for i in range(198)]
    answers += [key(300.0, 9.0, 7.0), key(301.0, 8.0, 6.0), key(302.0, 2.0, 1.0, status=503)]
    answers.append(Answer(303.0, "score", 200, 3.0, 2.0, {}))
    report = summarise(answers, warmup_s=5.0)
    assert report["errors"] == 1
    keys = report["key"]
    assert keys["requests"] == 200
    assert keys["server_p50_ms"] == 1.0
    tail = keys["slowest_1pct_mean"]
    assert tail["requests"] == 2
    assert tail["server_ms"] == pytest.approx(8.5)
    assert tail["decode_ms"] == pytest.approx(6.5)
    assert tail["outside_predictor_ms"] == pytest.approx(8.5 - 6.8)
    assert report["score"]["slowest_1pct_mean"] == {"requests": 1, "server_ms": 2.0}
    assert "phrase" not in report
