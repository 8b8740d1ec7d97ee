"""Checkpoints: a plain dict of tensors and primitives, never a pickled module.

``{"format", "version", "model_config", "state_dict", "vocab", "counts", "tree", "data",
"metrics", "train": {...}}``. ``tree`` is ``{"kind", "child_ptr", "children"}`` for the
hierarchical and the adaptive softmax and ``None`` for the full softmax; ``train`` holds what
resuming needs (optimizer state, position, carried recurrent state, RNG states) and is absent
from exported or evaluation-only use. Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.model import ConfigError, LanguageModel, ModelConfig
from service.tree import Tree, TreeError

FORMAT = "nextword-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or does not match what it is used with. One line."""


@dataclass
class Checkpoint:
    """A rebuilt model plus what travels with it."""

    model: LanguageModel
    vocab: list[str]
    counts: np.ndarray
    tree_kind: str
    data: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write atomically (temp file + rename): a crash never leaves a truncated checkpoint."""
    model = ckpt.model
    tree = model.tree
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "vocab": list(ckpt.vocab),
        "counts": torch.from_numpy(np.asarray(ckpt.counts, dtype=np.int64)),
        "tree": None
        if tree is None
        else {
            "kind": ckpt.tree_kind,
            "child_ptr": torch.from_numpy(tree.child_ptr),
            "children": torch.from_numpy(tree.children),
        },
        "data": dict(ckpt.data),
        "metrics": dict(ckpt.metrics),
    }
    if ckpt.train is not None:
        payload["train"] = ckpt.train
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and rebuild; any defect becomes a one-line :class:`CheckpointError`."""
    payload = _read(path)
    try:
        config = ModelConfig.from_dict(dict(payload["model_config"]))
        vocab = [str(word) for word in payload["vocab"]]
        tree_entry = payload["tree"]
        tree = None
        if tree_entry is not None:
            tree = Tree(len(vocab), tree_entry["child_ptr"].numpy(), tree_entry["children"].numpy())
        if len(vocab) != config.vocab_size:
            raise CheckpointError(
                f"checkpoint {path}: {len(vocab)} vocabulary entries, "
                f"config says {config.vocab_size}"
            )
        model = LanguageModel(config, tree)
        model.load_state_dict(payload["state_dict"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, ConfigError, TreeError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} does not match its model: {detail}") from None
    return Checkpoint(
        model=model,
        vocab=vocab,
        counts=payload["counts"].numpy(),
        tree_kind="flat" if tree_entry is None else str(tree_entry["kind"]),
        data=dict(payload.get("data", {})),
        metrics=dict(payload.get("metrics", {})),
        train=payload.get("train"),
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
    ) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({detail})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a nextword checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {payload.get('version')!r}; "
            f"this release reads {VERSION}"
        )
    return payload
