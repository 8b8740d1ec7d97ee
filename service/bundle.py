"""The serving bundle: the contract between training (``model_export``) and serving.

Bundle format ``nextword-bundle`` version 2 (the only place it is defined)
-------------------------------------------------------------------------
A bundle is a directory holding exactly these files:

``manifest.json``
    UTF-8 JSON object. Required keys (:data:`REQUIRED_KEYS`): ``format`` (= ``nextword-bundle``),
    ``format_version`` (2; version 1, which has no factors, still loads), ``name``, ``created``
    (ISO 8601), ``vocab_size`` (V), ``hidden_size``
    (d, the width of the vectors the tree scores), ``encoder`` (``{"cell": "lstm"|"gru",
    "layers": L, "state_size": S, "opset": int, "inputs": {...}, "outputs": {...}}`` with the
    ONNX names and shapes below), ``tree`` (``{"kind": str, "num_internal": int, "max_children":
    int, "depth": {...}}``), ``special_tokens`` (``{"eos": "<eos>", "unk": "<unk>"}``),
    ``metrics`` (evaluation results, free-form numbers), ``data`` (``{"name", "licence"}``) and
    ``files`` (``{file name: sha256 hex}`` for every other file of the bundle). Optional:
    ``tokenizer`` (``{"name": str, "version": int}``), the rules of :mod:`service.text` the
    training text went through; a bundle naming a tokenizer this release lacks is refused, and
    a bundle without the key (all written before it existed) is taken to use the current one.
``vocab.txt``
    One token per line, UTF-8, ``\\n``-terminated; line ``i`` (0-based) is word id ``i`` and leaf
    ``i`` of the tree. Tokens contain no whitespace.
``encoder.onnx``
    The recurrent encoder with its weights embedded. Inputs: ``tokens`` int64 ``(batch, time)``
    and ``state`` float32 ``(L, batch, S)``. Outputs: ``hidden`` float32 ``(batch, time, d)``,
    the vector the tree scores after each input token, and ``state_out`` float32 ``(L, batch,
    S)``. Batch and time are dynamic. The state is opaque to serving (an LSTM packs ``h`` and
    ``c`` side by side in ``S``); all zeros is the start of a text.
``tree.npz``
    Uncompressed numpy archive (``allow_pickle=False``) with ``child_ptr`` int64, ``children``
    int64 (the encoding of :mod:`service.tree`), ``weight`` float32 ``(V - 1, d)`` and ``bias``
    float32 ``(V - 1,)``. Since version 2, optionally the factored nodes of :mod:`service.tree`
    (``factor_node``, ``factor_rank`` int64, ``factor_proj``, ``factor_rows`` float32, all 1-d):
    the adaptive softmax's tail clusters. Loading checks that ``weight`` holds their products.

Bundles are written to a temporary sibling directory and renamed into place, so a reader never
sees a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.text import TOKENIZER, TOKENIZER_VERSION
from service.tree import Factors, Tree, TreeError

FORMAT_NAME = "nextword-bundle"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
FACTOR_ARRAYS = ("factor_node", "factor_rank", "factor_proj", "factor_rows")

MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.txt"
ENCODER_FILE = "encoder.onnx"
TREE_FILE = "tree.npz"
PAYLOAD_FILES = (VOCAB_FILE, ENCODER_FILE, TREE_FILE)

INPUT_TOKENS = "tokens"
INPUT_STATE = "state"
OUTPUT_HIDDEN = "hidden"
OUTPUT_STATE = "state_out"

EOS = "<eos>"
UNK = "<unk>"

REQUIRED_KEYS = (
    "format",
    "format_version",
    "name",
    "created",
    "vocab_size",
    "hidden_size",
    "encoder",
    "tree",
    "special_tokens",
    "metrics",
    "data",
    "files",
)

Manifest = dict[str, Any]


class BundleError(Exception):
    """A bundle is missing, corrupt or of another format. The message is one line."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: everything serving needs, loaded once."""

    path: Path
    manifest: Manifest
    vocab: list[str]
    tree: Tree
    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    factors: Factors | None = None

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def eos_id(self) -> int:
        return self.vocab.index(self.manifest["special_tokens"]["eos"])

    @property
    def unk_id(self) -> int:
        return self.vocab.index(self.manifest["special_tokens"]["unk"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- reading -----------------------------------------------------------------------------------


def read_manifest(path: Path) -> Manifest:
    """Read and check ``manifest.json`` of the bundle at ``path`` (no checksums)."""
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleError(f"bundle {path}: no such directory")
    if not manifest_path.is_file():
        raise BundleError(f"bundle {path}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {path}: {MANIFEST_FILE} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {path}: {MANIFEST_FILE} is not a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(
            f"bundle {path}: format {manifest.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    if manifest.get("format_version") not in READS_VERSIONS:
        raise BundleError(
            f"bundle {path}: format version {manifest.get('format_version')!r} is not supported "
            f"(this release reads versions {', '.join(map(str, READS_VERSIONS))})"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"bundle {path}: {MANIFEST_FILE} lacks {', '.join(missing)}")
    # Here rather than only in load_bundle: `python -m service serve` reads the manifest before
    # uvicorn starts, so it refuses with one line instead of a lifespan traceback.
    check_tokenizer(path, manifest)
    return manifest


def verify_checksums(path: Path, manifest: Manifest) -> None:
    files = manifest["files"]
    for name in PAYLOAD_FILES:
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"bundle {path}: {name} is missing")
        expected = files.get(name) if isinstance(files, dict) else None
        if expected is None:
            raise BundleError(f"bundle {path}: {MANIFEST_FILE} has no checksum for {name}")
        if sha256_file(file_path) != expected:
            raise BundleError(
                f"bundle {path}: {name} is corrupt (sha256 does not match the manifest)"
            )


def read_vocab(path: Path) -> list[str]:
    try:
        text = (path / VOCAB_FILE).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"bundle {path}: {VOCAB_FILE} is not UTF-8") from None
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def read_tree(
    path: Path,
) -> tuple[Tree, npt.NDArray[np.float32], npt.NDArray[np.float32], Factors | None]:
    try:
        with np.load(path / TREE_FILE, allow_pickle=False) as arrays:
            child_ptr, children = arrays["child_ptr"], arrays["children"]
            weight = np.ascontiguousarray(arrays["weight"], dtype=np.float32)
            bias = np.ascontiguousarray(arrays["bias"], dtype=np.float32)
            present = [name for name in FACTOR_ARRAYS if name in arrays.files]
            factor_arrays = [arrays[name] for name in present]
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle {path}: {TREE_FILE} is unreadable ({exc})") from None
    if present and len(present) != len(FACTOR_ARRAYS):
        missing = sorted(set(FACTOR_ARRAYS) - set(present))
        raise BundleError(f"bundle {path}: {TREE_FILE} has factors without {', '.join(missing)}")
    try:
        tree = Tree(weight.shape[0] + 1, child_ptr, children)
        tree.check_parameters(weight, bias)
        factors = None
        if present:
            factors = Factors(tree, weight.shape[1], *factor_arrays)
            factors.check_rows(tree, weight)
    except TreeError as exc:
        raise BundleError(f"bundle {path}: {TREE_FILE}: {exc}") from None
    return tree, weight, bias, factors


def check_tokenizer(path: Path, manifest: Manifest) -> None:
    """Refuse a model trained on text tokenized by rules this release does not have: served
    through :func:`service.text.tokenize`, it would be given tokens unlike its training text."""
    current = {"name": TOKENIZER, "version": TOKENIZER_VERSION}
    recorded = manifest.get("tokenizer", current)  # absent: written before the key existed
    if recorded == current:
        return
    if isinstance(recorded, dict):
        named = f"{recorded.get('name')!r} version {recorded.get('version')!r}"
    else:
        named = repr(recorded)
    raise BundleError(
        f"bundle {path}: trained with tokenizer {named}, but this release tokenizes with "
        f"{TOKENIZER!r} version {TOKENIZER_VERSION}; rebuild the bundle with this release"
    )


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load and verify a bundle: format, version, checksums, and vocabulary/tree agreement."""
    root = Path(path)
    manifest = read_manifest(root)
    verify_checksums(root, manifest)
    vocab = read_vocab(root)
    tree, weight, bias, factors = read_tree(root)
    if len(vocab) != manifest["vocab_size"] or tree.num_leaves != len(vocab):
        raise BundleError(
            f"bundle {root}: vocab.txt has {len(vocab)} tokens, tree has {tree.num_leaves} leaves, "
            f"manifest says {manifest['vocab_size']}"
        )
    if weight.shape[1] != manifest["hidden_size"]:
        raise BundleError(
            f"bundle {root}: tree vectors have {weight.shape[1]} dims, manifest says "
            f"{manifest['hidden_size']}"
        )
    for token in manifest["special_tokens"].values():
        if token not in vocab:
            raise BundleError(f"bundle {root}: special token {token!r} is not in vocab.txt")
    return Bundle(root, manifest, vocab, tree, weight, bias, factors)


# -- writing -----------------------------------------------------------------------------------


def write_bundle(
    out: str | os.PathLike[str],
    *,
    manifest: Mapping[str, Any],
    vocab: Sequence[str],
    tree: Tree,
    weight: npt.NDArray[np.floating],
    bias: npt.NDArray[np.floating],
    encoder_onnx: Path,
    factors: Factors | None = None,
    force: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write a bundle atomically; ``verify(staged_path)`` may raise to abandon it.

    ``manifest`` supplies every key but ``format``, ``format_version`` and ``files``, which
    are filled in here.
    """
    target = Path(out)
    if target.exists() and not force:
        raise BundleError(f"{target} already exists (pass --force to replace it)")
    bad = [token for token in vocab if not token or any(ch.isspace() for ch in token)]
    if bad:
        raise BundleError(f"vocabulary tokens may not be empty or contain whitespace: {bad[:3]!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staged / VOCAB_FILE).write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
        shutil.copyfile(encoder_onnx, staged / ENCODER_FILE)
        arrays: dict[str, npt.NDArray[Any]] = {
            "child_ptr": tree.child_ptr,
            "children": tree.children,
            "weight": np.asarray(weight, dtype=np.float32),
            "bias": np.asarray(bias, dtype=np.float32),
        }
        if factors is not None and len(factors):
            arrays.update(zip(FACTOR_ARRAYS, factors.stored_arrays, strict=True))
        np.savez(staged / TREE_FILE, allow_pickle=False, **arrays)
        full = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **manifest,
            "files": {name: sha256_file(staged / name) for name in PAYLOAD_FILES},
        }
        (staged / MANIFEST_FILE).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
        load_bundle(staged)
        if verify is not None:
            verify(staged)
        # mkdtemp makes the directory owner-only; a server running as another user must read it.
        staged.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return target
