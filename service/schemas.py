"""Request and response bodies of the HTTP API (they also feed the OpenAPI document at /docs).

Requests are strict (no string-to-number coercion, no booleans as numbers) and forbid unknown
fields; an integral number such as ``48.0`` is an integer, as JSON Schema counts it.  The bounds
here are the API's hard limits; settings may tighten ``k``, ``max_words``, the text length and the
candidate count further (the app publishes the tightened bounds in its OpenAPI document).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_K = 50
MAX_WORDS = 5
MAX_CANDIDATES = 1000
MAX_CANDIDATE_CHARS = 1000


def _integral(value: object) -> object:
    """``48.0`` as ``48``: JSON has one number type, and JavaScript clients send integral floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]
"""An integer field that also takes an integral number (``48.0``, not ``48.5`` or ``true``)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SuggestRequest(_Request):
    text: str = Field(
        description="typed text; if it does not end in whitespace its last word is being typed",
        examples=["I like the wea"],
    )
    k: JsonInt = Field(default=3, ge=1, le=MAX_K, description="number of suggestions")
    max_words: JsonInt = Field(default=1, ge=1, le=MAX_WORDS, description="words per suggestion")
    min_prob: float = Field(default=0.0, ge=0.0, le=1.0, description="drop less probable ones")
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="reuse the encoder state of this session's previous request",
    )
    budget_ms: float | None = Field(
        default=None, gt=0.0, le=1000.0, description="decode time budget; best found so far after"
    )
    include_eos: bool = Field(default=False, description="allow <eos> (end of sentence)")
    include_punctuation: bool = Field(
        default=False, description='let punctuation (, . " ...) take word slots'
    )
    reoffer: bool | None = Field(
        default=None,
        description="with a session_id: show again one-word suggestions already shown and passed "
        "over while typing the same word (null: the server's default, NEXTWORD_REOFFER)",
    )


class ScoreRequest(_Request):
    text: str = Field(
        description="context; a trailing partly typed word is what the candidates replace",
        examples=["I like the "],
    )
    candidates: Annotated[
        list[Annotated[str, Field(max_length=MAX_CANDIDATE_CHARS)]],
        Field(min_length=1, max_length=MAX_CANDIDATES),
    ] = Field(examples=[["weather", "New York", "<eos>"]])
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="score under this session's cache mixture (as /v1/suggest ranks for it)",
    )


class Suggestion(BaseModel):
    text: str
    prob: float
    logprob: float


class Timing(BaseModel):
    tokenize: float
    encode: float
    decode: float
    total: float


class ModelRef(BaseModel):
    name: str
    version: str


class SuggestResponse(BaseModel):
    suggestions: list[Suggestion]
    partial_word: str = Field(description="the typed characters the suggestions complete")
    exact: bool = Field(description="false when the budget or expansion cap stopped the search")
    expansions: int
    unexplored_mass: float = Field(
        description="upper bound on the total probability of the qualifying words not returned"
    )
    timing_ms: Timing
    model: ModelRef


class CandidateScore(BaseModel):
    candidate: str
    logprob: float
    prob: float
    in_vocab: bool


class ScoreResponse(BaseModel):
    scores: list[CandidateScore]
    timing_ms: float
    model: ModelRef


class ModelInfo(BaseModel):
    name: str
    version: str
    manifest: dict[str, Any]
    providers: list[str]


class Status(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
