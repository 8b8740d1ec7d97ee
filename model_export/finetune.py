"""The model a fine-tuning run starts from (``build --init``): a checkpoint, a run or a bundle.

A checkpoint (``best.pt``, ``last.pt``) or a run directory (its ``best.pt``) is loaded as it is.
A bundle holds no torch weights, so its model is rebuilt from what it does hold: the output tree's
rows as they are, and the encoder's weights from the ONNX initialisers, reordered from ONNX's gate
layout to torch's (``LSTM``: ONNX ``i, o, f, c`` -> torch ``i, f, g, o``; ``GRU``: ONNX ``z, r, h``
-> torch ``r, z, n``; ONNX's bias ``B`` is torch's input bias then its hidden bias). The rebuilt
model must pass the export parity check against its bundle, so a wrong mapping cannot go unseen.
Only hierarchical-softmax bundles are rebuilt: the full and adaptive softmax store their rows as
differences (an equivalent but differently parametrised model); start those from their run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from model_export.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model_export.data import WIKITEXT2_INFO
from model_export.export import ExportError, check_parity
from model_export.model import ConfigError, LanguageModel, ModelConfig
from model_export.train import BEST
from service.bundle import MANIFEST_FILE, BundleError, load_bundle

GATES = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2]}
"""ONNX gate blocks in torch's order, per cell."""


def load_start(path: Path) -> Checkpoint:
    """The model at ``path`` (a checkpoint file, a run directory or a bundle directory)."""
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return from_bundle(path)
    if path.is_dir():
        path = path / BEST
    ckpt = load_checkpoint(path)
    ckpt.train = None  # a new run: its own optimiser and schedule
    return ckpt


def from_bundle(path: Path) -> Checkpoint:
    """Rebuild a hierarchical-softmax bundle's model in torch (see the module docstring)."""
    bundle = load_bundle(path)
    try:
        config = ModelConfig.from_dict(dict(bundle.manifest["model"]))
    except (KeyError, TypeError) as exc:
        raise BundleError(
            f"bundle {path}: its manifest has no usable model config ({exc})"
        ) from None
    if config.head != "hs":
        raise ConfigError(
            f"bundle {path} has a {config.head} head: only hierarchical-softmax bundles are "
            "rebuilt from the bundle; pass its run's best.pt to --init instead"
        )
    model = LanguageModel(config, bundle.tree)
    with torch.no_grad():
        model.head.weight.copy_(_tensor(bundle.weight))  # type: ignore[operator]
        model.head.bias.copy_(_tensor(bundle.bias))  # type: ignore[operator]
        _load_encoder(model, onnx.load(str(bundle.encoder_path)))
    try:
        check_parity(model.eval(), path)
    except ExportError as exc:
        raise BundleError(f"bundle {path}: the rebuilt model does not match it ({exc})") from None
    kind = str(bundle.manifest["tree"]["kind"])
    data = dict(bundle.manifest.get("data", WIKITEXT2_INFO))
    counts = np.zeros(len(bundle.vocab), dtype=np.int64)  # the fine-tuning corpus sets them
    return Checkpoint(model, bundle.vocab, counts, kind, data)


def _load_encoder(model: LanguageModel, graph: onnx.ModelProto) -> None:
    """Copy the ONNX encoder's initialisers into ``model.encoder`` (torch's gate order)."""
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    encoder = model.encoder
    encoder.embedding.weight.copy_(_tensor(weights["embedding.weight"]))
    cells = [node for node in graph.graph.node if node.op_type in GATES]
    if len(cells) != encoder.config.layers:
        raise CheckpointError(f"the encoder has {len(cells)} recurrent layers, config says more")
    for layer, node in enumerate(cells):
        order = GATES[node.op_type]
        w, r, b = (weights[name] for name in node.input[1:4])
        params = {
            f"weight_ih_l{layer}": _reorder(w[0], order),
            f"weight_hh_l{layer}": _reorder(r[0], order),
            f"bias_ih_l{layer}": _reorder(b[0][: b.shape[1] // 2], order),
            f"bias_hh_l{layer}": _reorder(b[0][b.shape[1] // 2 :], order),
        }
        for name, value in params.items():
            getattr(encoder.rnn, name).copy_(_tensor(value))
    if encoder.proj is not None:
        encoder.proj.weight.copy_(_tensor(_projection(weights, encoder.proj.weight.shape)))
        encoder.proj.bias.copy_(_tensor(weights["proj.bias"]))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A torch copy: ONNX's and the bundle's arrays are read-only."""
    return torch.from_numpy(np.array(array))


def _reorder(blocks: np.ndarray, order: list[int]) -> np.ndarray:
    """Gate blocks stacked along axis 0, put in ``order``."""
    parts = np.split(blocks, len(order), axis=0)
    return np.ascontiguousarray(np.concatenate([parts[i] for i in order], axis=0))


def _projection(weights: dict[str, np.ndarray], shape: torch.Size) -> np.ndarray:
    """The projection's ``(d, H)`` matrix: kept by name, or transposed into a MatMul's input."""
    if "proj.weight" in weights:
        return weights["proj.weight"]
    candidates = [w for w in weights.values() if w.shape == (shape[1], shape[0])]
    if len(candidates) != 1:
        raise CheckpointError("cannot find the encoder's projection in the bundle's ONNX graph")
    return np.ascontiguousarray(candidates[0].T)
