"""Soak: 10 minutes at 70 % of the measured saturation rate with the load test's typing traffic,
with no errors, flat memory and a steady p99.

1. Saturation, on the current code: ``loadtest/run.py --serve BUNDLE --rate 0`` (a closed loop
   of ``--users-saturation`` locust users without think time, ``--saturation-s`` seconds).
2. The soak, on a fresh server (``python -m service serve``, default settings):
   ``loadtest/run.py --host ... --rate 0.7 x saturation`` (open-loop Poisson pacing, ``--users``
   simulated people typing held-out text with sessions, phrases and re-rankings) for
   ``--duration`` seconds, the server's RSS sampled every 5 s (psutil).

Targets, each a ratio within the run: 0 errors; RSS growth from minute 2 (the median of its
samples) to the end (the last sample) < 5 %; the last minute's p99 within 1.5 x the second
minute's. Writes ``benchmarks/results/soak.json`` (date, machine, commit, bundle, per-minute
p99 and RSS, the runner's summaries) and ``soak.png`` (RSS and p99 over time); the runner's
reports go to ``loadtest/reports/soak*``.

    python benchmarks/soak.py --bundle bundles/default --data $NEXTWORD_DATA
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.loadclient import (  # noqa: E402  (a script: the repo is not installed)
    RssSampler,
    add_bundle_args,
    percentile,
    save_figure,
    serve,
)
from benchmarks.runinfo import RESULTS, run_info, write_result  # noqa: E402

RUNNER = ROOT / "loadtest" / "run.py"
REPORTS = ROOT / "loadtest" / "reports"
TARGET_RSS_GROWTH = 0.05
TARGET_P99_RATIO = 1.5


def runner(*args: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=ROOT, env=env).returncode


def saturation(args: argparse.Namespace) -> dict[str, Any]:
    out = REPORTS / "soak-saturation"
    runner(
        "--serve", str(args.bundle), "--rate", "0", "--users", str(args.users_saturation),
        "--duration", str(args.saturation_s), "--p99-ms", "1000", "--report-dir", str(out),
        "--note", f"{args.bundle}, one server process, default settings (soak.py, saturation)",
    )  # fmt: skip
    return dict(json.loads((out / "summary.json").read_text()))


def soak(args: argparse.Namespace, rate: float) -> tuple[dict[str, Any], RssSampler]:
    out = REPORTS / "soak"
    with serve(args.bundle, out / "server.log") as server, RssSampler(server.pid, 5.0) as rss:
        runner(
            "--host", server.url, "--server-pid", str(server.pid), "--rate", f"{rate:.0f}",
            "--users", str(args.users), "--duration", str(args.duration), "--p99-ms", "1000",
            "--report-dir", str(out),
            "--note", f"{args.bundle}, one server process, default settings (soak.py)",
        )  # fmt: skip
    return dict(json.loads((out / "summary.json").read_text())), rss


def per_minute(samples: Path) -> tuple[list[dict[str, float]], list[tuple[float, float]], float]:
    """p99 and errors per minute of the soak, p99 per 10 s, and the first request's time."""
    with samples.open(encoding="utf-8") as handle:
        rows = [
            (
                float(row["start"]),
                float(row["latency_ms"]),
                row["ok"] == "True",
                float(row.get("server_ms") or "nan"),  # Server-Timing, where the server sends it
            )
            for row in csv.DictReader(handle)
        ]
    first = min(row[0] for row in rows)
    minutes: dict[int, list[tuple[float, bool, float]]] = {}
    tens: dict[int, list[float]] = {}
    for start, ms, ok, server in rows:
        minutes.setdefault(int((start - first) // 60), []).append((ms, ok, server))
        tens.setdefault(int((start - first) // 10), []).append(ms)
    table = []
    for m, values in sorted(minutes.items()):
        server = [v for _, _, v in values if v == v]  # not NaN
        table.append(
            {
                "minute": m + 1,
                "requests": len(values),
                "errors": sum(not ok for _, ok, _ in values),
                "p50_ms": percentile([ms for ms, _, _ in values], 50),
                "p99_ms": percentile([ms for ms, _, _ in values], 99),
                "server_p99_ms": percentile(server, 99),
            }
        )
    return table, [(10.0 * t, percentile(v, 99)) for t, v in sorted(tens.items())], first


def plot(
    rss: list[tuple[float, float]], p99_10s: list[tuple[float, float]],
    minutes: list[dict[str, float]], out: Path,
) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot([t / 60 for t, _ in rss], [m for _, m in rss], color="black")
    top.set(ylabel="server RSS (MiB)", title="nextword soak at 70 % of saturation")
    bottom.plot([t / 60 for t, _ in p99_10s], [v for _, v in p99_10s], label="p99 per 10 s")
    bottom.step(
        [row["minute"] - 1 for row in minutes], [row["p99_ms"] for row in minutes],
        where="post", label="p99 per minute", color="C1",
    )  # fmt: skip
    bottom.set(xlabel="time (min)", ylabel="latency (ms, locust)")
    bottom.legend(loc="upper right")
    save_figure(fig, out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_bundle_args(parser)
    parser.add_argument("--duration", type=int, default=600, help="soak seconds")
    parser.add_argument("--fraction", type=float, default=0.7, help="of the saturation rate")
    parser.add_argument("--users", type=int, default=100, help="simulated typists in the soak")
    parser.add_argument(
        "--users-saturation", type=int, default=32, help="closed-loop users (step 1)"
    )
    parser.add_argument(
        "--saturation-s", type=int, default=30, help="seconds measuring saturation (step 1)"
    )
    parser.add_argument("--saturation-rps", type=float, help="skip step 1: use this rate")
    parser.add_argument("--name", default="soak", help="results file name")
    parser.add_argument(
        "--analyse-only", action="store_true", help="redo the figures of the last run, no load"
    )
    args = parser.parse_args()
    if not args.bundle or not args.data:
        parser.error("pass --bundle and --data (or set NEXTWORD_BUNDLE / NEXTWORD_DATA)")
    os.environ["NEXTWORD_DATA"] = str(args.data)
    return args


def main() -> int:
    args = parse_args()
    if args.analyse_only:  # the last run's results again, from its JSON and the runner's CSV
        last = json.loads((RESULTS / f"{args.name}.json").read_text(encoding="utf-8"))
        info = {key: last[key] for key in ("date", "machine", "commit")}
        measured, saturated = last["saturation"], last["saturation"]["achieved_rps"]
        rate, summary = last["soak_rate"], last["soak"]
        soak_rss = [(t, m) for t, m in last["rss_samples"]]
        minutes, p99_10s, _ = per_minute(REPORTS / "soak" / "samples.csv")
    else:
        info = run_info()
        measured = None if args.saturation_rps else saturation(args)
        saturated = args.saturation_rps or float(measured["achieved_rps"])  # type: ignore[index]
        rate = args.fraction * saturated
        print(f"saturation {saturated:,.0f} req/s; soak at {rate:,.0f} req/s", flush=True)
        summary, rss = soak(args, rate)
        minutes, p99_10s, first = per_minute(REPORTS / "soak" / "samples.csv")
        shift = first - rss.wall_start  # RSS times from the first request, as the minutes are
        soak_rss = [(t - shift, m) for t, m in rss.samples]
    second = [m for t, m in soak_rss if 60.0 <= t < 120.0]
    base = sorted(second)[len(second) // 2]
    end = soak_rss[-1][1]
    growth = (end - base) / base
    full = [row for row in minutes if row["requests"] >= 0.9 * minutes[1]["requests"]]
    p99_ratio = full[-1]["p99_ms"] / minutes[1]["p99_ms"]
    errors = sum(int(row["errors"]) for row in minutes)
    checks = {
        "errors": errors,
        "rss_minute_2_mib": base,
        "rss_end_mib": end,
        "rss_max_mib": max(m for _, m in soak_rss),
        "rss_growth": growth,
        "rss_growth_target": TARGET_RSS_GROWTH,
        "p99_minute_2_ms": minutes[1]["p99_ms"],
        "p99_last_minute_ms": full[-1]["p99_ms"],
        "last_minute": full[-1]["minute"],
        "p99_ratio": p99_ratio,
        "p99_ratio_target": TARGET_P99_RATIO,
        "server_p99_minute_2_ms": minutes[1]["server_p99_ms"],
        "server_p99_last_minute_ms": full[-1]["server_p99_ms"],
        "p99_range_ms": [min(r["p99_ms"] for r in full), max(r["p99_ms"] for r in full)],
        "met": errors == 0 and growth < TARGET_RSS_GROWTH and p99_ratio <= TARGET_P99_RATIO,
    }
    print(f"{'minute':>6} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} server p99")
    for row in minutes:
        print(
            f"{row['minute']:>6} {row['requests']:>9} {row['errors']:>7} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['server_p99_ms']:>10.2f}"
        )
    print(
        f"errors {errors}; RSS {base:.1f} MiB (minute 2) -> {end:.1f} MiB (end): "
        f"{100 * growth:+.2f} % (< 5 %); p99 minute 2 {minutes[1]['p99_ms']:.2f} ms, minute "
        f"{full[-1]['minute']} {full[-1]['p99_ms']:.2f} ms: {p99_ratio:.2f}x (<= 1.5x): "
        f"{'met' if checks['met'] else 'NOT met'}"
    )
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    path = write_result(args.name, {
        "benchmark": "soak",
        **info,
        "bundle": {"path": str(args.bundle), "name": manifest["name"]},
        "saturation": measured or {"achieved_rps": saturated, "note": "given (--saturation-rps)"},
        "soak_rate": rate,
        "soak": summary,
        "per_minute": minutes,
        "rss_samples": [[round(t, 1), round(m, 2)] for t, m in soak_rss],
        "checks": checks,
    })  # fmt: skip
    plot(soak_rss, p99_10s, minutes, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")
    return 0 if checks["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
