"""Distributed training: torchrun's ranks train one run over gloo, each on its own rows, and rank 0
writes one set of checkpoints that loads, exports and resumes."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from model_export.checkpoint import load_checkpoint
from model_export.data import Corpus, load_corpus
from model_export.distributed import LaunchError, World, backend, process_group, world_from_env
from model_export.evaluate import perplexity
from model_export.model import LanguageModel
from model_export.recipes import get_recipe
from model_export.streams import batchify
from model_export.train import TrainError, make_tree, train

SLICE = 30_000
RANKS = 2
BATCH = 16
"""The global batch: each of the two ranks trains on ``BATCH // RANKS`` streams."""
OVER = {"eval_every": 10_000, "progress": False, "threads": 1}


# -- the sharding convention and the launch environment ----------------------------------------


def test_each_rank_trains_on_its_own_contiguous_rows() -> None:
    ids = np.arange(4 * 2 * 5 + 3, dtype=np.int64)  # the 3 left over are dropped
    streams = batchify(ids, 2 * 4)  # the global streams: 2 ranks x 4 rows of 5 tokens
    shards = [World(rank, 2).shard(streams) for rank in range(2)]
    for rank, rows in enumerate(shards):
        assert rows.shape == (4, 5)
        np.testing.assert_array_equal(rows.reshape(-1).numpy(), ids[rank * 20 : (rank + 1) * 20])
    torch.testing.assert_close(torch.cat(shards), streams)
    # One process: its shard is every row and rejoining a shard gives back the same tensor.
    assert World().shard(streams).equal(streams)
    assert World().unshard(streams) is streams
    with pytest.raises(ValueError, match="do not split evenly"):
        World(0, 3).shard(streams)


def test_torchruns_environment_names_the_world() -> None:
    assert world_from_env({}) == World()
    assert not world_from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}).distributed
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    world = world_from_env(env)
    assert (world.rank, world.size, world.local_rank, world.local_size) == (3, 4, 1, 2)
    assert world.distributed
    assert not world.is_main
    assert world.threads() == max(1, (os.cpu_count() or 1) // 2)
    with pytest.raises(LaunchError, match="RANK is not"):
        world_from_env({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(LaunchError, match="does not fit"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    assert backend(torch.device("cpu")) == "gloo"
    assert backend(torch.device("cuda", 0)) == "nccl"


def test_a_single_process_run_joins_no_process_group(data_dir: Path, tmp_path: Path) -> None:
    """Without torchrun, training runs no collective (its results are the pre-DDP ones: the
    resume and signal tests of test_train.py pin them)."""
    seen: list[bool] = []

    class Probe:
        def step(self, tokens: int, elapsed: float, spent: float) -> None:
            seen.append(dist.is_initialized())

        def status(self, values: dict[str, str]) -> None:
            pass

        def validated(self, seconds: float) -> None:
            pass

    corpus = load_corpus(data_dir, max_tokens=SLICE)
    model_cfg, cfg = get_recipe("tiny").build(len(corpus.vocab), {}, {**OVER, "max_tokens": 600})
    train(tmp_path / "run", corpus, model_cfg, cfg, reporter=Probe())
    assert seen
    assert not any(seen)
    saved = load_checkpoint(tmp_path / "run" / "last.pt").train
    assert saved is not None
    assert saved["world_size"] == 1
    assert "rngs" not in saved


def _collectives(rank: int, port: int, out: str) -> None:
    """One of two ranks: what each collective of :class:`World` gives back."""
    os.environ.update(
        {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )  # fmt: skip
    with process_group() as world:
        seen = {
            "agreed": world.agree([float(rank), 1.0 - rank, 5.0]),
            "main": world.from_main(10.0 + rank),
            "gathered": world.gather(torch.tensor([rank, 7], dtype=torch.uint8)),
            "unsharded": world.unshard(torch.full((1, 2, 3), float(rank)), dim=1),
        }
    seen["left"] = dist.is_initialized()
    torch.save(seen, Path(out) / f"{rank}.pt")


@pytest.mark.slow
def test_ranks_agree_on_the_largest_value_and_on_rank_zeros(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter, as torchrun starts
    workers = [spawn.Process(target=_collectives, args=(r, port, str(tmp_path))) for r in range(2)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=120)
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0]
    for rank in range(2):
        seen = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert seen["agreed"] == [1.0, 1.0, 5.0]
        assert seen["main"] == 10.0
        assert [t.tolist() for t in seen["gathered"]] == [[0, 7], [1, 7]]
        assert seen["unsharded"].shape == (1, 4, 3)
        assert seen["unsharded"][0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
        assert not seen["left"]


# -- two processes through torchrun ------------------------------------------------------------


def _torchrun(out: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(RANKS), "-m", "model_export", "train", "--recipe", "tiny",
        "--data", str(data_dir), "--data-tokens", str(SLICE), "--eval-every", "10000",
        "--threads", "1", "--batch-size", str(BATCH // RANKS), "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # set: torchrun warns when it picks it
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _single(corpus: Corpus, out: Path, max_tokens: int) -> Path:
    """The one-process run with the whole global batch that two ranks should reproduce."""
    over = {**OVER, "batch_size": BATCH, "max_tokens": max_tokens}
    model_cfg, cfg = get_recipe("tiny").build(len(corpus.vocab), {}, over)
    train(out, corpus, model_cfg, cfg)
    return out


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|``: float noise is ~1e-5 here, training on other rows ~1. Element-wise
    tolerances do not fit Adam, which blows noise up to a full step on rows of rare words."""
    return float((a - b).norm() / b.norm())


def _assert_same_run(two: Path, one: Path) -> None:
    """Two ranks at batch B / 2 train what one process at batch B does: the same steps, tokens,
    validations and weights (up to float summation order), and the same carried state."""
    a, b = load_checkpoint(two / "last.pt"), load_checkpoint(one / "last.pt")
    assert a.train is not None
    assert b.train is not None
    pa, pb = a.train["progress"], b.train["progress"]
    assert (pa["step"], pa["tokens"], pa["window"]) == (pb["step"], pb["tokens"], pb["window"])
    assert [r["tokens"] for r in pa["history"]] == [r["tokens"] for r in pb["history"]]
    assert pa["best_valid"] == pytest.approx(pb["best_valid"], rel=1e-4)
    weights = a.model.state_dict()
    for name, value in b.model.state_dict().items():
        assert _relative_gap(weights[name], value) < 1e-3, name
    assert _relative_gap(a.train["carry"], b.train["carry"]) < 1e-3
    assert a.train["world_size"] == RANKS
    rngs = a.train["rngs"]
    assert len(rngs) == RANKS
    assert not rngs[0].equal(rngs[1])  # seed + rank


@pytest.fixture(scope="module")
def corpus(data_dir: Path) -> Corpus:
    return load_corpus(data_dir, max_tokens=SLICE)


@pytest.fixture(scope="module")
def two_rank_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    _torchrun(out, data_dir, "--max-tokens", "20000")
    return out


@pytest.mark.slow
def test_two_ranks_train_one_run_with_one_set_of_files(
    two_rank_run: Path, corpus: Corpus, tmp_path: Path
) -> None:
    assert sorted(p.name for p in two_rank_run.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
    log = [json.loads(line) for line in (two_rank_run / "log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in log] == [10240, 20160]  # once per validation, not once per rank
    _assert_same_run(two_rank_run, _single(corpus, tmp_path / "one", 20_000))

    trained = load_checkpoint(two_rank_run / "best.pt")
    torch.manual_seed(0)
    fresh = LanguageModel(trained.model.config, make_tree("huffman", corpus, None))
    before, after = perplexity(fresh, corpus.valid), perplexity(trained.model, corpus.valid)
    assert math.isfinite(after)
    assert after < 0.9 * before, (before, after)
    assert trained.metrics["valid_ppl"] == pytest.approx(after, rel=1e-6)


@pytest.mark.slow
def test_the_checkpoint_of_two_ranks_exports(two_rank_run: Path, tmp_path: Path) -> None:
    from model_export.export import export_bundle

    path, parity = export_bundle(load_checkpoint(two_rank_run / "best.pt"), tmp_path / "bundle")
    assert (path / "manifest.json").is_file()
    assert parity.comparisons > 0


@pytest.mark.slow
def test_resuming_two_ranks_continues_the_run(
    two_rank_run: Path, data_dir: Path, corpus: Corpus, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_rank_run, run)
    _torchrun(run, data_dir, "--resume", "--max-tokens", "30000")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in log][:2] == [10240, 20160]
    assert log[-1]["tokens"] >= 30_000
    # The split run is the straight one: the carry and every rank's RNG were put back.
    _assert_same_run(run, _single(corpus, tmp_path / "one", 30_000))


@pytest.mark.slow
def test_a_two_rank_run_resumes_only_with_two_ranks(two_rank_run: Path, corpus: Corpus) -> None:
    before = (two_rank_run / "last.pt").read_bytes()
    with pytest.raises(TrainError, match="a run of 2 process"):
        train(two_rank_run, corpus, None, None, resume=True, overrides={"max_tokens": 30_000})
    assert (two_rank_run / "last.pt").read_bytes() == before
