"""service.settings: environment parsing, validation, no work at import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTWORD_BUNDLE", "bundles/x")
    settings = Settings()
    assert settings.bundle == Path("bundles/x")
    assert settings.providers == ["cpu"]
    assert settings.intra_op_threads == 1
    assert settings.max_candidates == 1000
    assert (settings.max_k, settings.max_words) == (50, 5)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.block_list == []


def test_environment_lists_and_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTWORD_BUNDLE", "b")
    monkeypatch.setenv("NEXTWORD_PROVIDERS", "CUDA, cpu")
    monkeypatch.setenv("NEXTWORD_BLOCK_LIST", "Darn,heck  Blast")
    monkeypatch.setenv("NEXTWORD_MAX_WAIT_US", "250")
    monkeypatch.setenv("NEXTWORD_SESSION_TTL_S", "1.5")
    settings = Settings()
    assert settings.providers == ["cuda", "cpu"]
    assert settings.block_list == ["Darn", "heck", "Blast"]
    assert settings.max_wait_us == 250
    assert settings.session_ttl_s == 1.5


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTWORD_PORT", "9000")
    assert Settings(bundle=Path("b"), port=9100).port == 9100


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("providers", "tpu"),
        ("providers", ""),
        ("intra_op_threads", "0"),
        ("max_k", "51"),
        ("max_words", "6"),
        ("max_candidates", "1001"),
        ("port", "70000"),
        ("session_ttl_s", "0"),
        ("max_batch_size", "many"),
        ("request_timeout_s", "0"),
        ("max_header_bytes", "512"),
        ("max_connections", "0"),
        ("max_in_flight", "0"),
    ],
)
def test_invalid_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv("NEXTWORD_BUNDLE", "b")
    monkeypatch.setenv(f"NEXTWORD_{field.upper()}", value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_bundle_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTWORD_BUNDLE", raising=False)
    with pytest.raises(ValidationError, match="bundle"):
        Settings()


def test_unknown_arguments_are_rejected() -> None:
    with pytest.raises(ValidationError, match="colour"):
        Settings(bundle=Path("b"), colour="red")  # type: ignore[call-arg]


def test_import_reads_no_environment() -> None:
    env = {"NEXTWORD_PORT": "not a port", "PYTHONPATH": str(ROOT)}
    code = "import service.settings, service.app; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
