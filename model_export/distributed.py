"""Data-parallel training over processes started by ``torchrun`` (PyTorch DistributedDataParallel).

A run of ``W`` processes (ranks) is one run, not ``W`` runs:

* **Data.** The training split is batchified into ``W * B`` streams (``B = batch_size``) and rank
  ``r`` trains on rows ``r*B .. (r+1)*B - 1``, a contiguous ``1/W`` of the token stream. A step
  therefore consumes a global batch of ``W * B`` streams, and ``W`` ranks at ``batch_size = B``
  compute the gradient of one process at ``batch_size = W * B`` (up to float summation order);
  token counts and ``max_tokens`` are global.
* **Decisions.** Ranks agree on everything that ends or steers the run: the clock (the latest
  rank's, so a time budget and the cosine LR read alike everywhere), a stop signal seen by any
  rank, a diverged loss on any rank. Rank 0 validates and broadcasts the perplexity, so the LR
  decay and best-checkpoint decisions are its.
* **Files.** Rank 0 alone writes ``best.pt``, ``last.pt`` and ``log.jsonl``; ``last.pt`` holds the
  carried state of all ``W * B`` streams and every rank's RNG state, and a resume needs the same
  ``W``. Dropout draws from ``seed + rank``.

Without ``torchrun`` (or with one process) nothing here runs a collective: the run is the
single-process run, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model_export.model import LanguageModel

LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
"""What ``torchrun`` sets in every worker (``MASTER_ADDR``/``MASTER_PORT`` are read by torch)."""
CPU = torch.device("cpu")


class LaunchError(Exception):
    """The launch environment is not one torchrun makes. The message is one line."""


def backend(device: torch.device) -> str:
    """gloo reduces CPU tensors; NCCL only CUDA ones, and is the fast path there."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of the run; ``World()`` is a single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    """Ranks on this machine: they share its cores."""
    device: torch.device = CPU

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def threads(self) -> int:
        """Intra-op threads when none are asked for: this machine's cores split between its ranks
        (each taking them all oversubscribes the cores and every rank slows down)."""
        return max(1, (os.cpu_count() or 1) // self.local_size)

    # -- data --------------------------------------------------------------------------------

    def shard(self, rows: Tensor, dim: int = 0) -> Tensor:
        """This rank's contiguous ``1/W`` of ``rows`` along ``dim`` (a view)."""
        total = rows.shape[dim]
        if total % self.size:
            raise ValueError(f"{total} rows do not split evenly over {self.size} ranks")
        part = total // self.size
        return rows.narrow(dim, self.rank * part, part)

    def unshard(self, part: Tensor, dim: int = 0) -> Tensor:
        """Every rank's :meth:`shard`, rejoined in rank order (the inverse of ``shard``)."""
        if not self.distributed:
            return part
        return torch.cat(self.gather(part), dim=dim)

    # -- collectives (no-ops in a single process) --------------------------------------------

    def agree(self, values: Sequence[float]) -> list[float]:
        """The maximum of each value over the ranks, the same on every rank."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [float(v) for v in tensor.tolist()]

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (same shape and dtype on all), on the CPU, in rank order."""
        if not self.distributed:
            return [tensor]
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return [part.cpu() for part in parts]


class _Objective(nn.Module):
    """``LanguageModel.loss`` as a module's ``forward``.

    DDP averages gradients in hooks that only its own ``forward`` arms for the next backward
    pass; the loss of :class:`LanguageModel` is a method, not its ``forward`` (which returns
    hidden vectors for ONNX), so DDP wraps this module, whose parameters are the model's own.
    """

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, targets: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.loss(inputs, targets, state)


def data_parallel(model: LanguageModel, world: World) -> nn.Module:
    """The module whose ``forward`` returns ``(loss, state)`` with gradients averaged over ranks.

    Rank 0's parameters are broadcast to every rank here, so all ranks start alike.
    """
    # The adaptive softmax skips a tail cluster that no target of the batch falls in; DDP must
    # then look for parameters without gradients, or it waits for them forever.
    unused = model.config.head == "adaptive"
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(
        _Objective(model), device_ids=device_ids, find_unused_parameters=unused
    )


def world_from_env(env: Mapping[str, str], *, cuda: bool = False) -> World:
    """The world torchrun describes in ``env``; a single process when it describes none."""
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size, rank, local_rank = (int(env[name]) for name in LAUNCH_ENV)
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except KeyError as exc:
        raise LaunchError(
            f"WORLD_SIZE is set but {exc.args[0]} is not (launch with torchrun)"
        ) from None
    except ValueError as exc:
        raise LaunchError(f"bad torchrun environment: {exc}") from None
    if not (0 <= rank < size and 0 <= local_rank < local_size):
        raise LaunchError(f"rank {rank} (local {local_rank}) does not fit a world of {size}")
    device = torch.device("cuda", local_rank) if cuda else CPU
    return World(rank, size, local_rank, local_size, device)


@contextmanager
def process_group(env: Mapping[str, str] | None = None, *, cuda: bool = False) -> Iterator[World]:
    """Join the run's process group for the duration (torchrun's ``env://`` rendezvous).

    ``cuda`` puts each rank on its local GPU with NCCL; otherwise ranks are CPU processes on gloo.
    """
    world = world_from_env(os.environ if env is None else env, cuda=cuda)
    if not world.distributed:
        yield world
        return
    if cuda:
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend(world.device), rank=world.rank, world_size=world.size)
    finished = False
    try:
        yield world
        finished = True
    finally:
        # Tear down together: a rank that destroys its gloo pairs while its peer is still
        # connected can make the peer's gloo thread abort it ("terminate called without an
        # active exception", seen once in CI). After an error the peers may never arrive, so
        # only a run that finished waits for them.
        if finished:
            dist.barrier()
        dist.destroy_process_group()
