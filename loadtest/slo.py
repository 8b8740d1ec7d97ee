"""The latency SLO a load test run must meet, and the verdict on a run's samples.

A run passes when the 99th percentile latency is within budget, the share of failed requests is at
most ``max_error_ratio`` (zero by default) and the achieved request rate reaches the target. The
rate is measured over the steady part of the run (after ``warmup_s``), with a tolerance for the
random (Poisson) arrivals: ``rate_tolerance``, or three standard deviations of the request count
when that is wider. 12,000 requests in a minute vary by about 1 %; a 20-second smoke test at
20 requests/s (360 requests) by about 5 %, so a fixed 5 % would fail one such run in six.

Pure functions over recorded samples: the locustfile's ``quitting`` listener and ``run.py`` both use
them, and the tests drive them with made-up samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One request as the load generator saw it."""

    start: float  # epoch seconds when the request was sent
    latency_ms: float
    name: str
    ok: bool
    lag_ms: float = 0.0  # how late the send was against the user's arrival schedule
    server_ms: float = math.nan  # the server's own time (its Server-Timing header), if given


@dataclass(frozen=True)
class Slo:
    p99_ms: float = 10.0
    max_error_ratio: float = 0.0
    target_rps: float = 0.0  # 0: no rate requirement (saturation runs)
    rate_tolerance: float = 0.05
    warmup_s: float = 2.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    requests: int
    failures: int
    error_ratio: float
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    late_sends: int  # sends more than 10 ms behind schedule: the generator could not keep up
    by_name: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def steady_rate(samples: Sequence[Sample], warmup_s: float) -> float:
    """Requests per second sent after the warm-up, up to the last send."""
    count, seconds = _steady_window(samples, warmup_s)
    return count / seconds if seconds > 0 else 0.0


def _steady_window(samples: Sequence[Sample], warmup_s: float) -> tuple[int, float]:
    """(intervals between sends, seconds) after the warm-up."""
    if not samples:
        return 0, 0.0
    first = min(s.start for s in samples) + warmup_s
    steady = [s.start for s in samples if s.start >= first]
    if len(steady) < 2:
        return 0, 0.0
    return len(steady) - 1, max(steady) - min(steady)


def rate_floor(slo: Slo, seconds: float) -> float:
    """The lowest steady rate that counts as reaching the target over ``seconds``."""
    expected = slo.target_rps * seconds
    noise = 3.0 * math.sqrt(expected) / seconds if seconds > 0 else 0.0
    return slo.target_rps - max(slo.target_rps * slo.rate_tolerance, noise)


def _summary(samples: Sequence[Sample]) -> dict[str, float]:
    """Client-side percentiles of these samples, and the server's own where it said."""
    latencies = [s.latency_ms for s in samples]
    server = [s.server_ms for s in samples if not math.isnan(s.server_ms)]
    return {
        "requests": float(len(latencies)),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "server_p50_ms": percentile(server, 50),
        "server_p95_ms": percentile(server, 95),
        "server_p99_ms": percentile(server, 99),
        "server_max_ms": max(server, default=math.nan),
    }


def evaluate(samples: Sequence[Sample], slo: Slo) -> Verdict:
    """Judge a run against the SLO; every unmet requirement is named in ``reasons``."""
    latencies = [s.latency_ms for s in samples]
    failures = sum(not s.ok for s in samples)
    error_ratio = failures / len(samples) if samples else 1.0
    rate = steady_rate(samples, slo.warmup_s)
    p99 = percentile(latencies, 99)
    reasons = []
    if not samples:
        reasons.append("no requests were made")
    elif p99 > slo.p99_ms:
        reasons.append(f"p99 {p99:.2f} ms > budget {slo.p99_ms:g} ms")
    if samples and error_ratio > slo.max_error_ratio:
        reasons.append(
            f"error ratio {error_ratio:.4f} > {slo.max_error_ratio:g} ({failures} failed)"
        )
    floor = rate_floor(slo, _steady_window(samples, slo.warmup_s)[1])
    if slo.target_rps > 0 and rate < floor:
        reasons.append(
            f"achieved {rate:.1f} req/s < {floor:.1f}, the least that counts as the target "
            f"{slo.target_rps:g} req/s (tolerance {slo.rate_tolerance:.0%}, or 3 sigma of a "
            "Poisson count)"
        )
    names = sorted({s.name for s in samples})
    return Verdict(
        passed=not reasons,
        reasons=reasons,
        requests=len(samples),
        failures=failures,
        error_ratio=error_ratio,
        achieved_rps=rate,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=p99,
        max_ms=max(latencies, default=math.nan),
        late_sends=sum(s.lag_ms > 10.0 for s in samples),
        by_name={n: _summary([s for s in samples if s.name == n]) for n in names},
    )
