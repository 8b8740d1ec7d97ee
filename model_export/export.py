"""Export a checkpoint as a serving bundle (format in :mod:`service.bundle`), checked for parity.

The encoder goes to ONNX through torch's TorchScript exporter (``dynamo=False``): on torch 2.13
it maps ``nn.LSTM``/``nn.GRU`` to the native ONNX ``LSTM``/``GRU`` ops with dynamic batch and
time axes in about a second, while the dynamo exporter took 10-30 s for the same graph and
pinned the time axis of ``hidden`` to the example's length. The bundle is staged by
:func:`service.bundle.write_bundle`, whose ``verify`` hook runs the parity check below on the
staged files before they are renamed into place.

Parity: for random token prefixes, ``log P(word | prefix)`` computed from the bundle alone
(onnxruntime for the encoder, numpy ``Tree.leaf_log_probs`` for the tree) must equal the torch
model's within ``tolerance`` for random words, and feeding the prefix in two pieces through the
``state``/``state_out`` pair must give the hidden vectors of one pass.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from model_export.checkpoint import Checkpoint
from model_export.model import Encoder, LanguageModel
from service.bundle import (
    EOS,
    INPUT_STATE,
    INPUT_TOKENS,
    OUTPUT_HIDDEN,
    OUTPUT_STATE,
    UNK,
    BundleError,
    load_bundle,
    write_bundle,
)
from service.text import TOKENIZER, TOKENIZER_VERSION

OPSET = 17


class ExportError(Exception):
    """The bundle could not be produced or failed its parity check. One line."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    state_max_abs_diff: float
    comparisons: int


def export_onnx(encoder: Encoder, path: Path, *, opset: int = OPSET) -> None:
    """Write the encoder with embedded weights; batch and time axes are dynamic."""
    encoder = encoder.eval()
    tokens = torch.zeros(2, 3, dtype=torch.int64)
    state = encoder.initial_state(2)
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about batch_first RNNs and its own deprecation; the parity check,
        # not the warnings, is what decides whether the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (tokens, state),
            str(path),
            input_names=[INPUT_TOKENS, INPUT_STATE],
            output_names=[OUTPUT_HIDDEN, OUTPUT_STATE],
            dynamic_axes={
                INPUT_TOKENS: {0: "batch", 1: "time"},
                INPUT_STATE: {1: "batch"},
                OUTPUT_HIDDEN: {0: "batch", 1: "time"},
                OUTPUT_STATE: {1: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )


def encoder_manifest(model: LanguageModel, opset: int) -> dict[str, Any]:
    cfg = model.config
    state_shape = [cfg.layers, "batch", cfg.state_size]
    return {
        "cell": cfg.cell,
        "layers": cfg.layers,
        "state_size": cfg.state_size,
        "embedding_size": cfg.emb_size,
        "rnn_hidden_size": cfg.hidden_size,
        "opset": opset,
        "inputs": {
            INPUT_TOKENS: {"dtype": "int64", "shape": ["batch", "time"]},
            INPUT_STATE: {"dtype": "float32", "shape": state_shape},
        },
        "outputs": {
            OUTPUT_HIDDEN: {"dtype": "float32", "shape": ["batch", "time", cfg.output_size]},
            OUTPUT_STATE: {"dtype": "float32", "shape": state_shape},
        },
    }


def build_manifest(
    ckpt: Checkpoint, name: str, metrics: dict[str, Any], opset: int
) -> dict[str, Any]:
    tree, _, _ = ckpt.model.tree_arrays()
    return {
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "vocab_size": len(ckpt.vocab),
        "hidden_size": ckpt.model.config.output_size,
        "encoder": encoder_manifest(ckpt.model, opset),
        "tree": {
            "kind": ckpt.tree_kind,
            "num_internal": tree.num_internal,
            "max_children": tree.max_children,
            "depth": tree.depth_stats(ckpt.counts).as_dict(),
        },
        "special_tokens": {"eos": EOS, "unk": UNK},
        # Every corpus is in service.text's tokens: raw text is tokenized by it, and it
        # reproduces the tokenisation of WikiText-style directories, which are read as they are.
        "tokenizer": {"name": TOKENIZER, "version": TOKENIZER_VERSION},
        "metrics": metrics,
        "data": {
            "name": ckpt.data.get("name", "unknown"),
            "licence": ckpt.data.get("licence", "unknown"),
        },
        "model": ckpt.model.config.to_dict(),
    }


def export_bundle(
    ckpt: Checkpoint,
    out: Path,
    *,
    metrics: dict[str, Any] | None = None,
    force: bool = False,
    name: str | None = None,
    opset: int = OPSET,
    tolerance: float = 1e-4,
) -> tuple[Path, ParityReport]:
    """Write ``out`` atomically; raise :class:`ExportError` and leave nothing if parity fails."""
    if out.exists() and not force:
        raise ExportError(f"{out} already exists (pass --force to replace it)")
    model = ckpt.model.eval()
    tree, weight, bias = model.tree_arrays()
    manifest = build_manifest(ckpt, name or out.name, {**ckpt.metrics, **(metrics or {})}, opset)
    reports: list[ParityReport] = []

    def verify(staged: Path) -> None:
        reports.append(check_parity(model, staged, tolerance=tolerance))

    with tempfile.TemporaryDirectory(prefix="nextword-export-") as tmp:
        onnx_path = Path(tmp) / "encoder.onnx"
        export_onnx(model.encoder, onnx_path, opset=opset)
        try:
            write_bundle(
                out,
                manifest=manifest,
                vocab=ckpt.vocab,
                tree=tree,
                weight=weight,
                bias=bias,
                encoder_onnx=onnx_path,
                factors=model.tree_factors(),
                force=force,
                verify=verify,
            )
        except BundleError as exc:
            raise ExportError(str(exc)) from None
    return out, reports[0]


# -- parity ------------------------------------------------------------------------------------


@torch.no_grad()
def check_parity(
    model: LanguageModel,
    bundle_dir: Path,
    *,
    tolerance: float = 1e-4,
    prefixes: int = 6,
    max_len: int = 12,
    words: int = 64,
    seed: int = 0,
) -> ParityReport:
    """Compare the staged bundle with the torch model; raise :class:`ExportError` on mismatch."""
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(seed)
    cfg = model.config
    tokens = rng.integers(0, cfg.vocab_size, size=(prefixes, int(rng.integers(2, max_len + 1))))
    session = _session(bundle.encoder_path)
    zero = np.zeros((cfg.layers, prefixes, cfg.state_size), dtype=np.float32)
    hidden, _ = session.run(None, {INPUT_TOKENS: tokens, INPUT_STATE: zero})  # (B, T, d)
    state_diff = _state_parity(session, tokens, hidden, zero)

    torch_hidden, _ = model.encoder(torch.from_numpy(tokens), torch.from_numpy(zero))
    flat_onnx = hidden.reshape(-1, hidden.shape[-1])  # (B*T, d)
    flat_torch = torch_hidden.reshape(-1, torch_hidden.shape[-1])
    # (B*T, V), through the factored nodes where the bundle has them, as the decoder scores
    bundle_lp = bundle.tree.leaf_log_probs(bundle.weight, bundle.bias, flat_onnx, bundle.factors)
    chosen = rng.integers(0, cfg.vocab_size, size=(len(flat_onnx), words))
    positions = np.repeat(np.arange(len(flat_onnx)), words)
    torch_lp = (
        model.head.log_prob(
            flat_torch[torch.from_numpy(positions)], torch.from_numpy(chosen.reshape(-1))
        )
        .double()
        .numpy()
    )
    diff = float(np.abs(bundle_lp[positions, chosen.reshape(-1)] - torch_lp).max())
    if not diff <= tolerance or not state_diff <= tolerance:
        raise ExportError(
            f"parity check failed: max |log P(bundle) - log P(torch)| = {diff:.2e}, state-chaining "
            f"hidden diff = {state_diff:.2e} (tolerance {tolerance:.0e})"
        )
    return ParityReport(
        max_abs_diff=diff, state_max_abs_diff=state_diff, comparisons=len(positions)
    )


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _state_parity(
    session: ort.InferenceSession, tokens: np.ndarray, hidden: np.ndarray, zero: np.ndarray
) -> float:
    """Encode the prefix in two pieces, passing ``state_out`` on; the hidden vectors must agree."""
    cut = tokens.shape[1] // 2
    first, state = session.run(None, {INPUT_TOKENS: tokens[:, :cut], INPUT_STATE: zero})
    second, _ = session.run(None, {INPUT_TOKENS: tokens[:, cut:], INPUT_STATE: state})
    return float(np.abs(np.concatenate([first, second], axis=1) - hidden).max())
