"""People typing on a keyboard that asks nextword for suggestions.

Each simulated user takes a sentence of held-out text (the WikiText-2 test split in
``$NEXTWORD_DATA/test.txt`` by default, any text file with ``--text``), types it one keystroke at a
time and asks ``/v1/suggest`` after every key, with a ``session_id`` per sentence. Now and then it
asks for a phrase (``max_words`` = 3) at the last word boundary, or re-ranks candidate next words
with ``/v1/score``.

Pacing is open-loop: every user sends on its own schedule with exponentially distributed gaps of
mean ``users / rate`` seconds (random think time, so the sum over users is Poisson arrivals at
``--rate`` requests/s). The schedule does not wait for slow responses: a user that falls behind
sends at once and the lag is recorded, so a stalled server shows up as latency and late sends
rather than as a quietly lower rate. ``--rate 0`` drops the think time (a closed loop as fast as
the server answers: saturation runs).

Every response is validated (status, JSON shape, non-empty suggestions that complete the typed
prefix, one finite score per candidate); URLs are grouped by name. When the run ends, the
``quitting`` listener judges the recorded samples against the SLO (``slo.py``) and sets the exit
code. Run it through ``loadtest/run.py``; directly, from the repository root with ``PYTHONPATH=.``
(``locust -f loadtest/locustfile.py ...``, or ``python loadtest/locustfile.py --host URL`` for one
user via ``run_single_user``).
"""

from __future__ import annotations

import csv
import gc
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, astuple, fields
from typing import Any

from locust import FastHttpUser, events, task
from locust.env import Environment

from loadtest.slo import Sample, Slo, evaluate
from loadtest.workload import (
    check_scores,
    check_suggestions,
    default_text,
    load_sentences,
    server_timing_ms,
)

PHRASE_WORDS = 3
SCORE_CANDIDATES = 5

# -- options and the SLO gate --------------------------------------------------------------------


def listen(hook: Any, listener: Callable[..., None]) -> None:
    """Register an event listener (locust's EventHook is untyped)."""
    hook.add_listener(listener)


def _options(parser: Any) -> None:
    group = parser.add_argument_group("nextword")
    group.add_argument("--rate", type=float, default=200.0, help="requests/s in all (0: max)")
    group.add_argument("--text", default="", help="text file to type (default: WikiText-2 test)")
    group.add_argument("--p99-ms", type=float, default=10.0, help="latency budget for p99")
    group.add_argument(
        "--max-error-ratio", type=float, default=0.0, help="failed requests allowed, of all"
    )
    group.add_argument(
        "--rate-tolerance", type=float, default=0.05, help="shortfall of the rate allowed"
    )
    group.add_argument("--warmup-s", type=float, default=2.0, help="not counted in the rate")
    group.add_argument("--samples-out", default="", help="CSV of every request")
    group.add_argument("--verdict-out", default="", help="JSON verdict")


class Recorder:
    """Every request's sample, for the SLO verdict and the plots."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def on_request(
        self, name: str, response_time: float, exception: Exception | None, **kw: Any
    ) -> None:
        context = kw.get("context") or {}
        start = kw.get("start_time") or time.time() - response_time / 1000.0
        lag = float(context.get("lag_ms", 0.0))
        headers = getattr(kw.get("response"), "headers", None)
        server = server_timing_ms(headers.get("server-timing") if headers else None)
        self.samples.append(Sample(start, response_time, name, exception is None, lag, server))

    def write_csv(self, path: str) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([f.name for f in fields(Sample)])
            writer.writerows(astuple(s) for s in self.samples)


def _install_gate(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # an Environment made in code, without a command line: no gate
        return
    load_sentences(options.text or default_text())  # fail now, not in every user
    recorder = Recorder()
    listen(environment.events.request, recorder.on_request)
    slo = Slo(
        p99_ms=options.p99_ms,
        max_error_ratio=options.max_error_ratio,
        target_rps=options.rate,
        rate_tolerance=options.rate_tolerance,
        warmup_s=options.warmup_s,
    )

    def judge(environment: Environment, **_: Any) -> None:
        verdict = evaluate(recorder.samples, slo)
        if options.samples_out:
            recorder.write_csv(options.samples_out)
        if options.verdict_out:
            with open(options.verdict_out, "w", encoding="utf-8") as handle:
                json.dump({"slo": asdict(slo), **verdict.as_dict()}, handle, indent=2)
        outcome = "PASS" if verdict.passed else "FAIL: " + "; ".join(verdict.reasons)
        print(
            f"SLO {outcome} | {verdict.requests} requests, p50 {verdict.p50_ms:.2f} ms, "
            f"p99 {verdict.p99_ms:.2f} ms, {verdict.achieved_rps:.1f} req/s, "
            f"{verdict.failures} failed"
        )
        environment.process_exit_code = 0 if verdict.passed else 1

    listen(environment.events.quitting, judge)
    listen(environment.events.test_start, _pause_collector)
    listen(environment.events.test_stop, lambda **_: gc.enable())


def _pause_collector(**_: Any) -> None:
    """No garbage collection in the load generator while it measures.

    A full collection walks every sample recorded so far and stalls all simulated users for
    milliseconds, which would be charged to the server as latency (and show up as late sends).
    A run allocates little cyclic garbage; the collector is back on when the test stops.
    """
    gc.collect()
    gc.freeze()
    gc.disable()


listen(events.init_command_line_parser, _options)
listen(events.init, _install_gate)


# -- the user ------------------------------------------------------------------------------------


class Typist(FastHttpUser):
    """Types sentences key by key; weights: 20 keystrokes : 2 phrases : 1 re-ranking."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.sentences = load_sentences((options.text if options else "") or default_text())
        rate = options.rate if options else 0.0
        users = max(1, options.num_users if options else 1)
        self.mean_gap_s = users / rate if rate > 0 else 0.0
        self.next_send = time.monotonic()
        self.new_sentence()

    def new_sentence(self) -> None:
        self.sentence = random.choice(self.sentences)
        self.typed = 0
        self.session_id = uuid.uuid4().hex

    def wait_time(self) -> float:
        """Open-loop schedule: the next send is due an exponential gap after the last one was."""
        if self.mean_gap_s == 0.0:
            return 0.0
        self.next_send += random.expovariate(1.0 / self.mean_gap_s)
        return max(0.0, self.next_send - time.monotonic())

    def lag_ms(self) -> float:
        return max(0.0, (time.monotonic() - self.next_send) * 1000.0) if self.mean_gap_s else 0.0

    def context_text(self) -> str:
        """What is typed so far, up to and including the last space: a next-word position."""
        typed = self.sentence[: self.typed]
        return typed[: typed.rfind(" ") + 1]

    def post(
        self, name: str, path: str, payload: dict[str, Any], check: Callable[[Any], str | None]
    ) -> None:
        context = {"lag_ms": self.lag_ms()}
        with self.client.post(
            path, json=payload, name=name, catch_response=True, context=context
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                problem = check(response.json())
            except (ValueError, AttributeError, TypeError) as exc:
                problem = f"bad body ({exc})"
            if problem:
                response.failure(f"{problem} for {payload.get('text')!r}")

    @task(20)
    def keystroke(self) -> None:
        if self.typed >= len(self.sentence):
            self.new_sentence()
        self.typed += 1
        payload = {"text": self.sentence[: self.typed], "k": 3, "session_id": self.session_id}
        self.post("/v1/suggest [key]", "/v1/suggest", payload, lambda b: check_suggestions(b, 3, 1))

    @task(2)
    def phrase(self) -> None:
        payload = {
            "text": self.context_text(),
            "k": 3,
            "max_words": PHRASE_WORDS,
            "session_id": self.session_id,
        }
        self.post(
            "/v1/suggest [phrase]",
            "/v1/suggest",
            payload,
            lambda b: check_suggestions(b, 3, PHRASE_WORDS),
        )

    @task(1)
    def rerank(self) -> None:
        context = self.context_text()
        words = self.sentence.split()
        upcoming = self.sentence[len(context) :].split()
        candidates = list(dict.fromkeys(upcoming[:1] + random.sample(words, min(4, len(words)))))
        candidates = candidates[:SCORE_CANDIDATES]
        payload = {"text": context, "candidates": candidates}
        self.post("/v1/score", "/v1/score", payload, lambda b: check_scores(b, candidates))


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(Typist)
