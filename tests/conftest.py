"""Session fixtures: the WikiText-2 directory and a tiny real bundle built by the real code.

``tiny_bundle`` trains a small LSTM on a slice of WikiText-2 with :func:`model_export.train.train`
and exports it with :func:`model_export.export.export_bundle` (parity check included), once per
test session. torch is imported inside the fixtures only, so test modules that must run without
torch are unaffected unless they ask for a bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from model_export.data import Corpus

# Before anything loads torch: OpenMP workers that spin collapse on a busy machine (see
# model_export/__main__.py); passive ones cost nothing when it is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DATA_ENV = "NEXTWORD_DATA"
TINY_DATA_TOKENS = 30_000
TINY_TRAIN_TOKENS = 40_000


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The WikiText-2 directory from ``$NEXTWORD_DATA``, else the copy the project ships."""
    from model_export.data import DataError
    from model_export.datadir import resolve_data_dir

    value = os.environ.get(DATA_ENV)
    if not value:
        try:
            return resolve_data_dir(None)
        except DataError as exc:
            pytest.skip(f"{DATA_ENV} is not set and {exc}")
    path = Path(value)
    if not (path / "train.txt").is_file():
        pytest.skip(f"{DATA_ENV}={value} has no train.txt: tests that need WikiText-2 are skipped")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(data_dir: Path) -> Corpus:
    """The WikiText-2 slice the tiny model is trained on (its vocabulary is the model's)."""
    from model_export.data import load_corpus

    return load_corpus(data_dir, max_tokens=TINY_DATA_TOKENS)


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory (``best.pt``, ``last.pt``) of a tiny model trained on a corpus slice."""
    from model_export.recipes import get_recipe
    from model_export.train import train

    corpus = tiny_corpus
    overrides = {"max_tokens": TINY_TRAIN_TOKENS, "eval_every": 20_000, "progress": False}
    model_cfg, train_cfg = get_recipe("tiny").build(len(corpus.vocab), {}, overrides)
    run_dir = tmp_path_factory.mktemp("tiny-run")
    train(run_dir, corpus, model_cfg, train_cfg)
    return run_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "best.pt"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified bundle directory exported from the tiny checkpoint."""
    from model_export.checkpoint import load_checkpoint
    from model_export.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    path, _ = export_bundle(load_checkpoint(tiny_checkpoint), out)
    return path


@pytest.fixture(scope="session")
def tiny_adaptive_bundle(tiny_corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe with an adaptive softmax head (two tail clusters), trained and exported."""
    from model_export.checkpoint import load_checkpoint
    from model_export.export import export_bundle
    from model_export.recipes import get_recipe
    from model_export.train import BEST, train

    corpus = tiny_corpus
    overrides = {"max_tokens": TINY_TRAIN_TOKENS, "eval_every": 20_000, "progress": False}
    head = {"head": "adaptive", "cutoffs": (100, 1000), "div_value": 2.0}
    model_cfg, train_cfg = get_recipe("tiny").build(len(corpus.vocab), head, overrides)
    run_dir = tmp_path_factory.mktemp("tiny-adaptive-run")
    train(run_dir, corpus, model_cfg, train_cfg)
    out = tmp_path_factory.mktemp("bundles") / "tiny-adaptive"
    path, _ = export_bundle(load_checkpoint(run_dir / BEST), out)
    return path
