"""service.schemas: strict request bodies that still take an integral number as an integer."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.schemas import ScoreRequest, SuggestRequest
from service.settings import Settings


@pytest.mark.parametrize(("raw", "k"), [("48", 48), ("48.0", 48), ("4.8e1", 48), ("1.0", 1)])
def test_an_integral_number_is_an_integer(raw: str, k: int) -> None:
    # JSON Schema counts 48.0 as an integer, and JavaScript clients send it.
    body = SuggestRequest.model_validate_json(f'{{"text": "a", "k": {raw}, "max_words": 5.0}}')
    assert body.k == k
    assert type(body.k) is int
    assert body.max_words == 5
    assert type(body.max_words) is int


@pytest.mark.parametrize("raw", ["48.5", "1e-3", '"48"', "true", "false", "null", "[48]", "1e400"])
def test_anything_else_is_not_an_integer(raw: str) -> None:
    for field in ("k", "max_words"):
        with pytest.raises(ValidationError):
            SuggestRequest.model_validate_json(f'{{"text": "a", "{field}": {raw}}}')


def test_the_bounds_hold_after_conversion() -> None:
    for raw in ("0.0", "51.0", "-3.0", "1e300"):
        with pytest.raises(ValidationError):
            SuggestRequest.model_validate_json(f'{{"text": "a", "k": {raw}}}')


def test_other_fields_stay_strict() -> None:
    for body in (
        '{"text": 3}',
        '{"text": "a", "min_prob": "0.5"}',
        '{"text": "a", "include_eos": 1}',
        '{"text": "a", "colour": "red"}',
    ):
        with pytest.raises(ValidationError):
            SuggestRequest.model_validate_json(body)
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate_json('{"text": "a", "candidates": [1.0]}')
    assert SuggestRequest.model_validate_json('{"text": "a", "min_prob": 0}').min_prob == 0.0


def test_the_published_schema_still_says_integer() -> None:
    properties = SuggestRequest.model_json_schema()["properties"]
    assert properties["k"]["type"] == "integer"
    assert properties["max_words"]["type"] == "integer"


def test_the_api_takes_48_0_as_48_and_refuses_48_5(tiny_bundle: Path) -> None:
    text = "weaponry"  # the case schemathesis found
    with TestClient(create_app(Settings(bundle=tiny_bundle))) as client:
        integral = client.post("/v1/suggest", json={"text": text, "k": 48.0, "max_words": 5.0})
        plain = client.post("/v1/suggest", json={"text": text, "k": 48, "max_words": 5})
        assert integral.status_code == 200, integral.text
        texts = [s["text"] for s in integral.json()["suggestions"]]
        assert texts == [s["text"] for s in plain.json()["suggestions"]]
        for body in ({"k": 48.5}, {"max_words": 2.5}, {"k": True}, {"k": "48"}):
            refused = client.post("/v1/suggest", json={"text": text, **body})
            assert refused.status_code == 422, body
            assert refused.json()["error"]["code"] == "invalid_request"
