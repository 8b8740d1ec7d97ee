"""service.bundle: the tokenizer a bundle records must be the one the service has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.bundle import MANIFEST_FILE, BundleError, load_bundle, read_manifest, write_bundle
from service.text import TOKENIZER, TOKENIZER_VERSION
from service.tree import Tree

CURRENT = {"name": TOKENIZER, "version": TOKENIZER_VERSION}


def small_bundle(out: Path, **extra: Any) -> Path:
    """A 3-word bundle (one root with three leaves); load_bundle never runs its encoder."""
    encoder = out.parent / "encoder.onnx"
    encoder.write_bytes(b"not an ONNX graph: loading checks only its checksum")
    manifest = {
        "name": out.name,
        "created": "2026-01-01T00:00:00+00:00",
        "vocab_size": 3,
        "hidden_size": 4,
        "encoder": {},
        "tree": {},
        "special_tokens": {"eos": "<eos>", "unk": "<unk>"},
        "metrics": {},
        "data": {"name": "test", "licence": "none"},
        **extra,
    }
    return write_bundle(
        out,
        manifest=manifest,
        vocab=["<eos>", "<unk>", "a"],
        tree=Tree(3, [0, 3], [0, 1, 2]),
        weight=np.zeros((2, 4), dtype=np.float32),
        bias=np.zeros(2, dtype=np.float32),
        encoder_onnx=encoder,
    )


def set_tokenizer(bundle: Path, value: object) -> None:
    path = bundle / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["tokenizer"] = value
    path.write_text(json.dumps(manifest), encoding="utf-8")  # the manifest has no checksum


def test_a_bundle_without_the_key_is_taken_to_use_the_current_tokenizer(tmp_path: Path) -> None:
    bundle = load_bundle(small_bundle(tmp_path / "old"))
    assert "tokenizer" not in bundle.manifest
    assert bundle.vocab == ["<eos>", "<unk>", "a"]


def test_the_current_tokenizer_loads(tmp_path: Path) -> None:
    assert load_bundle(small_bundle(tmp_path / "b", tokenizer=CURRENT)).manifest["tokenizer"] == {
        "name": "wikitext-moses",
        "version": 1,
    }


@pytest.mark.parametrize(
    ("recorded", "named"),
    [
        ({"name": "sentencepiece", "version": 1}, "'sentencepiece' version 1"),
        ({"name": TOKENIZER, "version": TOKENIZER_VERSION + 1}, f"'{TOKENIZER}' version 2"),
        ({"name": TOKENIZER}, f"'{TOKENIZER}' version None"),
        ("wikitext-moses", "'wikitext-moses'"),
    ],
)
def test_an_unknown_tokenizer_is_refused(tmp_path: Path, recorded: object, named: str) -> None:
    bundle = small_bundle(tmp_path / "b")
    set_tokenizer(bundle, recorded)
    expected = (
        f"bundle {bundle}: trained with tokenizer {named}, but this release tokenizes with "
        f"'{TOKENIZER}' version {TOKENIZER_VERSION}; rebuild the bundle with this release"
    )
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    assert str(caught.value) == expected
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle)  # what `python -m service serve` checks before starting workers
    assert str(caught.value) == expected


def test_writing_a_bundle_with_an_unknown_tokenizer_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="tokenizer 'other' version 1"):
        small_bundle(tmp_path / "b", tokenizer={"name": "other", "version": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx"]
