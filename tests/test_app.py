"""The HTTP API end to end on the real tiny bundle: every endpoint, every bad input, sessions."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle import read_vocab
from service.forms import HOSTS, MIN_CLITIC_PROB
from service.settings import Settings

SPECIAL = {"<eos>", "<unk>"}


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    app = create_app(Settings(bundle=tiny_bundle, max_text_chars=2000, max_body_bytes=64_000))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def vocab(tiny_bundle: Path) -> list[str]:
    return read_vocab(tiny_bundle)


def test_startup_moves_long_lived_objects_out_of_the_collector(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    assert gc.get_freeze_count() > 10_000


def _score_all(
    client: TestClient, text: str, candidates: list[str], session_id: str | None = None
) -> dict[str, dict[str, Any]]:
    scores: dict[str, dict[str, Any]] = {}
    for start in range(0, len(candidates), 1000):
        body = {"text": text, "candidates": candidates[start : start + 1000]}
        response = client.post("/v1/score", json={**body, "session_id": session_id})
        assert response.status_code == 200, response.text
        scores.update({row["candidate"]: row for row in response.json()["scores"]})
    return scores


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


# -- /v1/suggest -----------------------------------------------------------------------------


def test_suggest_answers_the_documented_shape(client: TestClient, tiny_bundle: Path) -> None:
    response = client.post("/v1/suggest", json={"text": "The game ", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "suggestions", "partial_word", "exact", "expansions", "unexplored_mass", "timing_ms",
        "model",
    }  # fmt: skip
    assert len(body["suggestions"]) == 5
    probs = [s["prob"] for s in body["suggestions"]]
    assert probs == sorted(probs, reverse=True)
    for s in body["suggestions"]:
        assert math.isclose(s["prob"], math.exp(s["logprob"]), rel_tol=1e-9)
        assert s["text"].strip()
        assert s["text"] not in SPECIAL
    assert body["partial_word"] == ""
    assert body["exact"] is True
    assert body["expansions"] > 0
    assert set(body["timing_ms"]) == {"tokenize", "encode", "decode", "total"}
    assert body["model"]["name"] == client.get("/v1/model").json()["name"]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]


def test_suggest_top_k_agrees_with_scoring_the_whole_vocabulary(
    client: TestClient, vocab: list[str]
) -> None:
    """The policy's ranking (service.policy) over /v1/score's log-probabilities: typed words
    only, a capital ranked as if CAPITAL_PENALTY times less probable mid-sentence; hosts such
    as "it" are split into the bare word and contractions scored as two tokens."""
    check_suggest_agrees_with_score(client, vocab)


def test_an_adaptive_softmax_bundle_serves_the_same_contract(tiny_adaptive_bundle: Path) -> None:
    """Its tail clusters are factored nodes (bundle format 2): suggestions, completions and
    scores still agree with scoring the whole vocabulary."""
    app = create_app(Settings(bundle=tiny_adaptive_bundle))
    with TestClient(app) as adaptive:
        check_suggest_agrees_with_score(adaptive, read_vocab(tiny_adaptive_bundle))
        body = {"text": "The first th", "k": 5}
        completed = adaptive.post("/v1/suggest", json=body).json()["suggestions"]
        assert completed
        assert all(s["text"].casefold().startswith("th") for s in completed)


def check_suggest_agrees_with_score(client: TestClient, vocab: list[str]) -> None:
    text = "In the first "
    scores = _score_all(client, text, vocab)
    assert math.isclose(sum(row["prob"] for row in scores.values()), 1.0, rel_tol=1e-5)
    assert all(row["in_vocab"] for row in scores.values())
    suggested = client.post("/v1/suggest", json={"text": text, "k": 10}).json()["suggestions"]
    texts = [s["text"] for s in suggested]
    forms = _score_all(client, text, [t for t in texts if t not in scores])
    penalty = math.log(Settings.model_fields["capital_penalty"].default)

    def rank(word: str, logprob: float) -> float:
        return logprob - (penalty if word[0].isupper() else 0.0)

    for suggestion in suggested:
        word, logprob = suggestion["text"], suggestion["logprob"]
        if word.casefold() in HOSTS:  # the bare word: the token less its contractions
            assert logprob <= scores[word]["logprob"] + 1e-6
        else:
            assert math.isclose(logprob, {**scores, **forms}[word]["logprob"], abs_tol=1e-5)
    ranks = [rank(s["text"], s["logprob"]) for s in suggested]
    assert ranks == sorted(ranks, reverse=True)
    typed_words = [
        w for w in vocab
        if w not in SPECIAL and any(c.isalnum() for c in w) and not w.startswith("'")
        and w.casefold() not in HOSTS and w not in texts
    ]  # fmt: skip
    assert all(rank(w, scores[w]["logprob"]) <= ranks[-1] + 1e-6 for w in typed_words)


def test_suggestions_are_words_a_person_types(client: TestClient) -> None:
    body = client.post("/v1/suggest", json={"text": "The game , ", "k": 50}).json()
    assert all(any(c.isalnum() for c in s["text"]) for s in body["suggestions"])
    assert not any(s["text"].startswith("'") for s in body["suggestions"])
    with_punctuation = client.post(
        "/v1/suggest", json={"text": "The game ", "k": 50, "include_punctuation": True}
    ).json()
    assert {",", "."} & {s["text"] for s in with_punctuation["suggestions"]}
    # A contraction is offered, with /v1/score's log-probability, where its clitic is at least
    # MIN_CLITIC_PROB likely after the host (which the tiny model may or may not reach).
    contraction = client.post("/v1/suggest", json={"text": "I said that it", "k": 50}).json()
    offered = {s["text"]: s["logprob"] for s in contraction["suggestions"]}
    scores = _score_all(client, "I said that ", ["it", "it's"])
    clitic = math.exp(scores["it's"]["logprob"] - scores["it"]["logprob"])
    assert ("it's" in offered) == (clitic >= MIN_CLITIC_PROB), (clitic, offered)
    if "it's" in offered:
        assert math.isclose(offered["it's"], scores["it's"]["logprob"], abs_tol=1e-5)


def test_a_session_does_not_show_a_passed_over_word_again(client: TestClient) -> None:
    seen: set[str] = set()
    typed = "It was the first"
    start = typed.rindex(" ") + 1
    for end in range(start, len(typed) + 1):
        body = client.post(
            "/v1/suggest", json={"text": typed[:end], "k": 3, "session_id": "passed-over"}
        ).json()
        words = [s["text"] for s in body["suggestions"]]
        fresh = [w for w in words if w not in seen]
        # Unseen words first; passed-over ones only fill slots nothing else would.
        assert words[: len(fresh)] == fresh, (typed[:end], words, seen)
        if end < start + 2:  # "" and "f" have far more than 3 completions
            assert len(fresh) == 3, (typed[:end], words, seen)
        seen |= set(words)
    again = client.post(
        "/v1/suggest",
        json={"text": typed, "k": 3, "session_id": "passed-over", "reoffer": True},
    ).json()
    plain = client.post("/v1/suggest", json={"text": typed, "k": 3}).json()
    assert [s["text"] for s in again["suggestions"]] == [s["text"] for s in plain["suggestions"]]


def test_partial_word_is_completed(client: TestClient, vocab: list[str]) -> None:
    body = client.post("/v1/suggest", json={"text": "It was th", "k": 5}).json()
    assert body["partial_word"] == "th"
    assert body["suggestions"]
    assert all(s["text"].lower().startswith("th") for s in body["suggestions"])
    matching = [w for w in vocab if w.lower().startswith("th")]
    scores = _score_all(client, "It was ", matching)
    best = max(scores.values(), key=lambda row: row["logprob"])
    assert math.isclose(body["suggestions"][0]["logprob"], best["logprob"], abs_tol=1e-5)


@pytest.fixture(scope="module")
def uncached_client(tiny_bundle: Path) -> Iterator[TestClient]:
    """The API without the session cache, whose mixture changes what a session is offered."""
    with TestClient(create_app(Settings(bundle=tiny_bundle, cache_size=0))) as test_client:
        yield test_client


def test_session_keystrokes_equal_full_encodes(uncached_client: TestClient) -> None:
    client = uncached_client
    typed = "The game was released in Japan , and it 's a new"
    for end in range(len(typed) + 1):
        text = typed[:end]
        fresh = client.post("/v1/suggest", json={"text": text, "k": 4}).json()
        kept = client.post(  # reoffer: the plain ranking, to compare with a fresh encode
            "/v1/suggest", json={"text": text, "k": 4, "session_id": "typing-1", "reoffer": True}
        ).json()
        assert [s["text"] for s in kept["suggestions"]] == [s["text"] for s in fresh["suggestions"]]
        for a, b in zip(kept["suggestions"], fresh["suggestions"], strict=True):
            assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4)
    edited = client.post(
        "/v1/suggest", json={"text": "A film was released ", "session_id": "typing-1"}
    ).json()
    fresh = client.post("/v1/suggest", json={"text": "A film was released "}).json()
    assert [s["text"] for s in edited["suggestions"]] == [s["text"] for s in fresh["suggestions"]]
    metrics = client.get("/metrics").text
    # The first keystroke and the edit encode in full; every other keystroke reuses the state.
    assert _metric(metrics, 'nextword_session_lookups_total{result="full_encode"}') >= 2
    assert _metric(metrics, 'nextword_session_lookups_total{result="reused"}') >= len(typed) - 1
    # Requests without a session resumed from the shared context cache on every keystroke
    # after the first (their text grows a word at a time, within the cache's lookback).
    assert (
        _metric(metrics, 'nextword_context_cache_lookups_total{result="reused"}') >= len(typed) - 1
    )


def test_phrases_and_options(client: TestClient) -> None:
    body = client.post("/v1/suggest", json={"text": "It was ", "k": 3, "max_words": 3}).json()
    assert len(body["suggestions"]) == 3
    assert all(len(s["text"].split()) >= 2 for s in body["suggestions"])
    strict = client.post("/v1/suggest", json={"text": "It was ", "k": 50, "min_prob": 0.01})
    assert all(s["prob"] >= 0.01 for s in strict.json()["suggestions"])
    tiny_budget = client.post("/v1/suggest", json={"text": "It ", "budget_ms": 0.001})
    assert tiny_budget.status_code == 200
    assert 0.0 <= tiny_budget.json()["unexplored_mass"] <= 1.0
    with_eos = client.post("/v1/suggest", json={"text": "It ", "include_eos": True, "k": 50})
    assert with_eos.status_code == 200


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t", "hello\x00\x07 world ", "I ❤️ 😀 ", "zzqxv blorptastic "],
)
def test_odd_text_is_served(client: TestClient, text: str) -> None:
    response = client.post("/v1/suggest", json={"text": text, "k": 5})
    assert response.status_code == 200, response.text
    suggestions = response.json()["suggestions"]
    assert len(suggestions) == 5
    assert not {s["text"] for s in suggestions} & SPECIAL


def test_lone_surrogates_are_refused_as_invalid_json(client: TestClient) -> None:
    # They cannot be encoded as UTF-8, so they never reach (or crash) the tokenizer.
    suggest = client.post("/v1/suggest", content=b'{"text": "ab\\ud800 "}')
    _assert_error(suggest, 400, "invalid_json")
    score = client.post("/v1/score", content=b'{"text": "a ", "candidates": ["\\udc00x"]}')
    _assert_error(score, 400, "invalid_json")


# -- /v1/score -------------------------------------------------------------------------------


def test_score_special_multi_token_and_unknown_candidates(client: TestClient) -> None:
    scores = _score_all(client, "The ", ["<eos>", "<unk>", "game was", "zzqxv", "game"])
    assert scores["<eos>"]["in_vocab"]
    assert scores["<unk>"]["in_vocab"]
    assert scores["zzqxv"]["in_vocab"] is False
    assert math.isclose(scores["zzqxv"]["logprob"], scores["<unk>"]["logprob"], abs_tol=1e-6)
    assert scores["game was"]["logprob"] < scores["game"]["logprob"]
    assert all(math.isclose(r["prob"], math.exp(r["logprob"])) for r in scores.values())


# -- other routes ----------------------------------------------------------------------------


def test_model_health_ready_metrics_docs(client: TestClient, tiny_bundle: Path) -> None:
    model = client.get("/v1/model")
    assert model.status_code == 200
    assert model.json()["manifest"]["vocab_size"] == len(read_vocab(tiny_bundle))
    assert model.json()["providers"] == ["CPUExecutionProvider"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        'nextword_requests_total{route="/v1/suggest",status="200"}',
        "nextword_request_seconds_bucket",
        "nextword_decode_expansions_bucket",
        "nextword_encoder_batch_size_bucket",
        "nextword_queue_depth",
    ):
        assert name in metrics.text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/suggest"]["post"]["requestBody"]["content"]["application/json"]
    assert "text" in body["schema"]["properties"]
    assert client.get("/docs").status_code == 200


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


# -- bad input -------------------------------------------------------------------------------

BAD_JSON: list[tuple[str, dict[str, Any], int, str]] = [
    ("/v1/suggest", {"text": 3}, 422, "invalid_request"),
    ("/v1/suggest", {"text": None}, 422, "invalid_request"),
    ("/v1/suggest", {}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "k": "3"}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "k": 0}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "k": 51}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "k": 2.5}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "max_words": 0}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "max_words": 6}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "budget_ms": 0}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "budget_ms": -1}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "budget_ms": 5000}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "min_prob": 1.5}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "session_id": ""}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a", "colour": "red"}, 422, "invalid_request"),
    ("/v1/suggest", {"text": "a" * 2001}, 413, "text_too_long"),
    ("/v1/score", {"text": "a", "candidates": []}, 422, "invalid_request"),
    ("/v1/score", {"text": "a", "candidates": ["x"] * 1001}, 422, "invalid_request"),
    ("/v1/score", {"text": "a", "candidates": [1]}, 422, "invalid_request"),
    ("/v1/score", {"text": "a", "candidates": "x"}, 422, "invalid_request"),
    ("/v1/score", {"text": "a" * 2001, "candidates": ["x"]}, 413, "text_too_long"),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), BAD_JSON)
def test_bad_json_bodies(
    client: TestClient, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    _assert_error(client.post(path, json=body), status, code)
    assert client.post("/v1/suggest", json={"text": "still serving "}).status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"text": "\xff\xfe"}', 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_request"),
        (b"null", 422, "invalid_request"),
        (b'{"text": "' + b"a" * 70_000 + b'"}', 413, "too_large"),
    ],
)
def test_bad_raw_bodies(client: TestClient, content: bytes, status: int, code: str) -> None:
    for path in ("/v1/suggest", "/v1/score"):
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        _assert_error(response, status, code)
    assert client.post("/v1/suggest", json={"text": "still serving "}).status_code == 200


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    _assert_error(client.get("/v2/suggest"), 404, "not_found")
    _assert_error(client.get("/v1/suggest"), 405, "method_not_allowed")
    _assert_error(client.post("/healthz"), 405, "method_not_allowed")
    metrics = client.get("/metrics").text
    assert 'route="unmatched",status="404"' in metrics


@pytest.mark.parametrize("when_idle", [True, False])
def test_collection_runs_between_requests_while_serving(tiny_bundle: Path, when_idle: bool) -> None:
    settings = Settings(bundle=tiny_bundle, gc_when_idle=when_idle)
    with TestClient(create_app(settings)) as serving:
        assert serving.post("/v1/suggest", json={"text": "The "}).status_code == 200
        assert gc.isenabled() is not when_idle  # the idle collector has taken over
    assert gc.isenabled()


def test_not_ready_before_the_lifespan_ran(tiny_bundle: Path) -> None:
    cold = TestClient(create_app(Settings(bundle=tiny_bundle)))  # no `with`: no lifespan
    assert cold.get("/healthz").status_code == 200
    response = cold.get("/readyz")
    _assert_error(response, 503, "not_ready")
    assert response.headers["retry-after"] == "1"
    _assert_error(cold.post("/v1/suggest", json={"text": "a"}), 503, "not_ready")


def test_settings_can_tighten_the_limits(tiny_bundle: Path) -> None:
    settings = Settings(bundle=tiny_bundle, max_k=5, max_words=2, max_candidates=3)
    cold = TestClient(create_app(settings))  # limits are checked before the model is needed
    response = cold.post("/v1/suggest", json={"text": "a", "k": 6})
    _assert_error(response, 422, "invalid_request")
    assert response.json()["error"]["message"] == "k is 6; this server allows at most 5"
    _assert_error(
        cold.post("/v1/suggest", json={"text": "a", "max_words": 3}), 422, "invalid_request"
    )
    too_many = cold.post("/v1/score", json={"text": "a", "candidates": ["x", "y", "z", "w"]})
    _assert_error(too_many, 422, "invalid_request")
    # The OpenAPI document publishes the tightened bounds (tests/test_fuzz.py holds it to them).
    paths = cold.get("/openapi.json").json()["paths"]
    suggest, score = (
        paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        for path in ("/v1/suggest", "/v1/score")
    )
    assert (suggest["k"]["maximum"], suggest["max_words"]["maximum"]) == (5, 2)
    assert score["candidates"]["maxItems"] == 3
    assert suggest["text"]["maxLength"] == score["text"]["maxLength"] == settings.max_text_chars


def test_a_full_queue_answers_429_with_retry_after(tiny_bundle: Path) -> None:
    settings = Settings(bundle=tiny_bundle, queue_limit=1, inline_light="never")
    app = create_app(settings)
    release = threading.Event()

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            predictor = app.state.runtime.predictor
            real = predictor.suggest

            def slow(*args: Any, **kwargs: Any) -> Any:
                release.wait(timeout=10)
                return real(*args, **kwargs)

            predictor.suggest = slow
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                first = asyncio.create_task(http.post("/v1/suggest", json={"text": "a "}))
                while app.state.runtime.admission.depth == 0:
                    await asyncio.sleep(0.005)
                second = await http.post("/v1/suggest", json={"text": "b "})
                release.set()
                return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200
    _assert_error(second, 429, "overloaded")
    assert second.headers["retry-after"] == "1"


def test_a_session_cache_adapts_and_scores_normalised(client: TestClient, vocab: list[str]) -> None:
    """After a session typed a text, its suggestions and scores are the cache's mixture:
    scoring the whole vocabulary with the session sums to 1, and a word the text repeats
    gains probability over the same request without the session."""
    text = "The team won the game . The team won the cup . The team won the "
    for end in range(len(text) + 1):
        client.post("/v1/suggest", json={"text": text[:end], "session_id": "adapting"})
    with_session = _score_all(client, text, vocab, session_id="adapting")
    assert math.isclose(sum(row["prob"] for row in with_session.values()), 1.0, rel_tol=1e-5)
    plain = _score_all(client, text, ["team", "won"])
    assert with_session["won"]["logprob"] > plain["won"]["logprob"]
    suggested = client.post(
        "/v1/suggest", json={"text": text, "k": 5, "session_id": "adapting", "reoffer": True}
    ).json()["suggestions"]
    for s in suggested:
        if s["text"] in with_session and s["text"].casefold() not in HOSTS:
            assert math.isclose(s["logprob"], with_session[s["text"]]["logprob"], abs_tol=1e-5)
