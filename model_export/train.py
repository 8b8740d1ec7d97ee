"""Training: truncated BPTT with gradient clipping, LR decay on validation perplexity, budgets.

A run directory holds ``best.pt`` (the best validation perplexity so far), ``last.pt`` (everything
needed to resume exactly where the run stopped) and ``log.jsonl`` (one line per validation).
Budgets are totals over the run, resumes included: ``max_tokens`` training tokens (the fair
budget for comparing trees on a busy machine) and ``max_minutes`` of wall-clock time.

Under ``torchrun`` the run is data-parallel over its processes; :mod:`model_export.distributed`
says how the batch, the budgets and the files are shared between them.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from model_export.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model_export.data import Corpus
from model_export.distributed import LaunchError, World, data_parallel, process_group
from model_export.evaluate import perplexity
from model_export.model import ConfigError, LanguageModel, ModelConfig
from model_export.streams import batchify, windows
from model_export.trees import TREE_KINDS, adaptive_tree, build_tree
from service.tree import Tree

OPTIMIZERS = ("sgd", "adam")
ANNEALS = ("none", "cosine")
BEST, LAST, LOG = "best.pt", "last.pt", "log.jsonl"


class TrainError(Exception):
    """The run cannot start or continue. The message is one line."""


class TrainInterrupted(TrainError):
    """SIGINT or SIGTERM stopped the run after a whole step; ``last.pt`` holds it."""


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """SIGINT / SIGTERM become a request the loop honours after its current step (a second
    one stops at once). Only the main thread can take signals; elsewhere nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def request(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    for sig in signals:
        signal.signal(sig, request)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's shape is :class:`ModelConfig`)."""

    tree: str = "huffman"
    tree_from: str | None = None
    """Checkpoint whose input embeddings are clustered into the tree (``tree="clustered"``)."""
    batch_size: int = 64
    bptt: int = 35
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_decay: float = 0.5
    """Multiply the learning rate by this when validation perplexity does not improve."""
    min_lr: float = 1e-6
    anneal: str = "none"
    """``cosine``: also follow a cosine from ``lr`` down to ``anneal_floor * lr`` over the budget
    (the larger of the token and time fractions spent), which pays off when the budget, not
    convergence, ends the run."""
    anneal_floor: float = 0.05
    clip: float = 1.0
    weight_decay: float = 0.0
    epochs: int = 100
    max_minutes: float | None = None
    max_tokens: int | None = None
    eval_every: int = 0
    """Training tokens between validations; 0 validates once per epoch."""
    eval_batch_size: int = 10
    seed: int = 0
    threads: int = 0
    """Intra-op threads; 0 uses every core."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.tree not in TREE_KINDS:
            raise ConfigError(f"unknown tree {self.tree!r} (choose from {', '.join(TREE_KINDS)})")
        if self.anneal not in ANNEALS:
            raise ConfigError(f"unknown anneal {self.anneal!r} (choose from {', '.join(ANNEALS)})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r} (choose from sgd, adam)")
        positive = {"batch_size": self.batch_size, "bptt": self.bptt, "epochs": self.epochs}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1 or self.clip <= 0:
            raise ConfigError("lr and clip must be positive and lr_decay in (0, 1]")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be positive, got {self.max_tokens}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**values)


@dataclass
class Progress:
    """The mutable part of a run; saved in ``last.pt`` for resuming."""

    epoch: int = 0
    window: int = 0
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    """Wall-clock seconds of the run so far, validation included (what budgets count)."""
    train_seconds: float = 0.0
    """Seconds spent in training steps only (what tokens/s is measured over)."""
    lr: float = 0.0
    lr_scale: float = 1.0
    """Product of the decays applied when validation perplexity did not improve."""
    best_valid: float = math.inf
    last_valid: float | None = None
    evaluated_at: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


class Reporter(Protocol):
    """Where the loop reports progress (``build-default`` passes its one bar for the build)."""

    def step(self, tokens: int, elapsed: float, spent: float) -> None:
        """After every step: tokens so far, seconds so far, fraction of the budget spent."""

    def status(self, values: dict[str, str]) -> None:
        """Every few steps: loss, perplexity, learning rate, last validation."""

    def validated(self, seconds: float) -> None:
        """After every validation pass, with its duration."""


class _TokenBar:
    """``train``'s own bar: tokens, over the token budget when there is one."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="tok",
            unit_scale=True,
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def step(self, tokens: int, elapsed: float, spent: float) -> None:
        self.bar.update(tokens - self.bar.n)

    def status(self, values: dict[str, str]) -> None:
        self.bar.set_postfix(values, refresh=False)

    def validated(self, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_valid_ppl: float
    tokens: int
    minutes: float
    tokens_per_s: float


# -- set-up ------------------------------------------------------------------------------------


def make_tree(kind: str, corpus: Corpus, tree_from: str | None) -> Tree:
    """Build the output tree; ``clustered`` takes word vectors from an earlier checkpoint."""
    vectors = None
    if kind == "clustered":
        if tree_from is None:
            raise TrainError(
                "the clustered tree needs --tree-from CKPT (a first model's checkpoint)"
            )
        first = load_checkpoint(Path(tree_from))
        if first.vocab != corpus.vocab:
            raise TrainError(f"--tree-from {tree_from} was trained on another vocabulary")
        vectors = first.model.encoder.embedding.weight.detach().numpy()
    try:
        return build_tree(kind, corpus.counts, vectors)
    except ValueError as exc:
        raise TrainError(f"cannot build the {kind} tree: {exc}") from None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # fused=True: one kernel over all tensors; the per-tensor loop took 10x longer on the
    # (V, d) matrices (measured 275 ms vs 28 ms a step at V = 33k, d = 256).
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _fresh(model_config: ModelConfig, cfg: TrainConfig, corpus: Corpus) -> Checkpoint:
    torch.manual_seed(cfg.seed)
    tree, kind = None, "flat"
    if model_config.head == "hs":
        tree, kind = make_tree(cfg.tree, corpus, cfg.tree_from), cfg.tree
    elif model_config.head == "adaptive":
        tree, kind = adaptive_tree(corpus.counts, model_config.cutoffs), "adaptive"
    torch.manual_seed(cfg.seed)
    model = LanguageModel(model_config, tree)
    return Checkpoint(model, corpus.vocab, corpus.counts, kind, dict(corpus.about))


def _from_init(init: Checkpoint, corpus: Corpus) -> Checkpoint:
    """A new run of ``init``'s model on ``corpus``, whose counts and description it takes."""
    if init.vocab != corpus.vocab:
        raise TrainError("the model to start from has another vocabulary than the corpus")
    return Checkpoint(init.model, init.vocab, corpus.counts, init.tree_kind, dict(corpus.about))


def _resume(run_dir: Path, corpus: Corpus) -> tuple[Checkpoint, TrainConfig]:
    ckpt = load_checkpoint(run_dir / LAST)
    if ckpt.train is None:
        raise TrainError(f"{run_dir / LAST} has no training state to resume from")
    if ckpt.vocab != corpus.vocab:
        raise TrainError(f"{run_dir / LAST} was trained on another vocabulary than this data")
    return ckpt, TrainConfig.from_dict(dict(ckpt.train["config"]))


# -- the loop ----------------------------------------------------------------------------------


def train_step(
    model: LanguageModel,
    opt: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    carry: torch.Tensor,
    *,
    clip: float,
    objective: nn.Module | None = None,
) -> tuple[float, torch.Tensor]:
    """One optimisation step on a window; returns the mean loss and the state to carry on.

    ``objective`` computes ``(loss, state)`` in place of ``model.loss``: the data-parallel
    wrapper of :func:`model_export.distributed.data_parallel`, which averages the gradients.
    """
    compute = model.loss if objective is None else objective
    # Truncated BPTT: the state carries over, its history does not.
    loss, carry = compute(inputs, targets, carry.detach())
    opt.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach()), carry


def train(
    run_dir: Path,
    corpus: Corpus,
    model_config: ModelConfig | None,
    cfg: TrainConfig | None,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
    init: Checkpoint | None = None,
) -> TrainResult:
    """Train into ``run_dir``; with ``resume`` continue from ``run_dir/last.pt``; with ``init``
    start a new run from that model (fine-tuning: its shape, vocabulary and tree; ``model_config``
    is then ignored and the corpus must be read in its vocabulary).

    ``overrides`` (budgets, progress) replace fields of the resumed run's config. ``reporter``
    replaces the run's own token bar (``cfg.progress`` then no longer applies). Launched by
    torchrun, every process calls this and they train one run together.
    """
    try:
        # Training stays on the CPU (gloo): the heads keep their index tables in plain tensors.
        with process_group() as world:
            start = (model_config, init)
            return _train_in(world, run_dir, corpus, start, cfg, resume, overrides, reporter)
    except LaunchError as exc:
        raise TrainError(str(exc)) from None


def _train_in(
    world: World,
    run_dir: Path,
    corpus: Corpus,
    start: tuple[ModelConfig | None, Checkpoint | None],
    cfg: TrainConfig | None,
    resume: bool,
    overrides: dict[str, Any] | None,
    reporter: Reporter | None,
) -> TrainResult:
    model_config, init = start
    if resume:
        ckpt, cfg = _resume(run_dir, corpus)
        cfg = replace(cfg, **(overrides or {}))
    else:
        if (model_config is None and init is None) or cfg is None:
            raise TrainError("a new run needs a model config (or a model to start from)")
        if (run_dir / LAST).exists() or (run_dir / BEST).exists():
            raise TrainError(
                f"{run_dir} already holds a run (pass --resume, or choose another --out)"
            )
        if init is not None:
            ckpt = _from_init(init, corpus)
        else:
            assert model_config is not None
            ckpt = _fresh(model_config, cfg, corpus)
    torch.set_num_threads(cfg.threads or world.threads())
    return _Loop(run_dir, corpus, ckpt, cfg, reporter, world).run()


class _Loop:
    def __init__(
        self,
        run_dir: Path,
        corpus: Corpus,
        ckpt: Checkpoint,
        cfg: TrainConfig,
        reporter: Reporter | None,
        world: World,
    ) -> None:
        self.run_dir, self.corpus, self.ckpt, self.cfg = run_dir, corpus, ckpt, cfg
        self.reporter, self.world = reporter, world
        self.model = ckpt.model
        self.opt = make_optimizer(self.model, cfg)
        # The global streams (budgets and epochs count them); this rank trains on its rows.
        self.streams = batchify(corpus.train, cfg.batch_size * world.size)
        self.rows = world.shard(self.streams)
        self.progress = Progress(lr=cfg.lr)
        self.carry = self.model.encoder.initial_state(cfg.batch_size)
        torch.manual_seed(cfg.seed + world.rank)
        if ckpt.train is not None:
            self._restore(ckpt.train)
        self.objective = data_parallel(self.model, world) if world.distributed else None

    def _restore(self, saved: dict[str, Any]) -> None:
        ranks = saved.get("world_size", 1)
        if ranks != self.world.size:
            raise TrainError(
                f"{self.run_dir / LAST} is a run of {ranks} process(es), not {self.world.size}: "
                f"resume it with as many (torchrun --nnodes x --nproc-per-node = {ranks})"
            )
        try:
            self.opt.load_state_dict(saved["optimizer"])
            self.progress = Progress(**saved["progress"])
            self.carry = self.world.shard(saved["carry"], dim=1)
            torch.set_rng_state(saved["rngs"][self.world.rank] if ranks > 1 else saved["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"training state in last.pt is unusable ({detail})") from None
        self._set_lr(self.progress.elapsed)

    # -- budget ----------------------------------------------------------------------------------

    def _token_target(self) -> int | None:
        """The progress bar's total; None (no percentage) when time is the binding budget."""
        cfg = self.cfg
        if cfg.max_tokens is not None:
            return cfg.max_tokens
        return None if cfg.max_minutes is not None else self.streams.numel() * cfg.epochs

    def _out_of_budget(self, elapsed: float) -> bool:
        cfg, p = self.cfg, self.progress
        if cfg.max_tokens is not None and p.tokens >= cfg.max_tokens:
            return True
        if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
            return True
        return cfg.lr * p.lr_scale < cfg.min_lr or p.epoch >= cfg.epochs

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        p, cfg = self.progress, self.cfg
        started, base = time.perf_counter(), p.elapsed
        own_bar = None
        if self.reporter is None:
            enabled = cfg.progress and self.world.is_main
            own_bar = _TokenBar(self._token_target(), p.tokens, enabled)
            self.reporter = own_bar
        self.model.train()
        try:
            with _stop_requests() as stop:
                self._train(stop, self.reporter, started, base)
            p.elapsed = self._clock(started, base)
            if p.evaluated_at != p.tokens:
                self._validate()
        finally:
            if own_bar is not None:
                own_bar.bar.close()
        return TrainResult(
            run_dir=self.run_dir,
            best_valid_ppl=p.best_valid,
            tokens=p.tokens,
            minutes=p.elapsed / 60,
            tokens_per_s=p.tokens / max(p.train_seconds, 1e-9),
        )

    def _train(self, stop: list[int], report: Reporter, started: float, base: float) -> None:
        """Steps until a budget runs out; a stop request saves ``last.pt`` and raises."""
        p, cfg = self.progress, self.cfg
        ema: float | None = None
        next_eval = self._next_eval()
        while not self._out_of_budget(self._clock(started, base)):
            for index, inputs, targets in windows(self.rows, cfg.bptt, p.window):
                tick = time.perf_counter()
                loss = self._step(inputs, targets)
                p.train_seconds += time.perf_counter() - tick
                elapsed, signum = self._agree(base + time.perf_counter() - started, stop, loss)
                tokens = targets.numel() * self.world.size
                p.window, p.step, p.tokens = index + 1, p.step + 1, p.tokens + tokens
                ema = loss if ema is None else 0.98 * ema + 0.02 * loss
                p.elapsed = elapsed
                report.step(p.tokens, p.elapsed, self._budget_spent(p.elapsed))
                if p.step % 10 == 0:
                    report.status(self._postfix(ema))
                if cfg.anneal != "none":
                    self._set_lr(p.elapsed)
                if p.tokens >= next_eval:
                    self._validate()
                    next_eval = self._next_eval()
                if signum:
                    self._save_last()
                    raise TrainInterrupted(
                        f"stopped by signal {signum} after {p.tokens:,} tokens; "
                        f"{self.run_dir / LAST} holds the run (continue it with --resume)"
                    )
                if self._out_of_budget(p.elapsed):
                    break
            else:
                p.epoch, p.window = p.epoch + 1, 0
                self.carry = self.model.encoder.initial_state(cfg.batch_size)

    def _clock(self, started: float, base: float) -> float:
        """Seconds of the run so far, the same on every rank (budgets and the LR read it)."""
        return self.world.agree([base + time.perf_counter() - started])[0]

    def _agree(self, elapsed: float, stop: list[int], loss: float) -> tuple[float, int]:
        """After a step: the run's clock and any rank's stop signal (0: none); a loss that
        diverged on any rank ends the run on all of them."""
        diverged = 0.0 if math.isfinite(loss) else 1.0
        elapsed, signum, diverged = self.world.agree([elapsed, stop[0] if stop else 0, diverged])
        if diverged:
            raise TrainError(f"the loss diverged at step {self.progress.step} (try a lower --lr)")
        return elapsed, int(signum)

    def _next_eval(self) -> int:
        every = self.cfg.eval_every or self.streams.numel()
        return (self.progress.tokens // every + 1) * every

    def _postfix(self, ema: float | None) -> dict[str, str]:
        p = self.progress
        loss = ema or 0.0
        out = {"loss": f"{loss:.3f}", "ppl": f"{math.exp(min(loss, 50)):.1f}", "lr": f"{p.lr:.2g}"}
        if p.last_valid is not None:
            out["valid"] = f"{p.last_valid:.1f}"
        if self.cfg.max_minutes is not None:
            left = max(0.0, self.cfg.max_minutes * 60 - p.elapsed)
            out["left"] = f"{int(left // 60)}:{int(left % 60):02d}"
        return out

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        model, opt, clip = self.model, self.opt, self.cfg.clip
        value, self.carry = train_step(
            model, opt, inputs, targets, self.carry, clip=clip, objective=self.objective
        )
        return value

    def _budget_spent(self, elapsed: float) -> float:
        cfg, p = self.cfg, self.progress
        spent = [p.tokens / (self.streams.numel() * cfg.epochs)]
        if cfg.max_tokens is not None:
            spent.append(p.tokens / cfg.max_tokens)
        if cfg.max_minutes is not None:
            spent.append(elapsed / (cfg.max_minutes * 60))
        return min(1.0, max(spent))

    def _set_lr(self, elapsed: float) -> None:
        cfg = self.cfg
        lr = cfg.lr * self.progress.lr_scale
        if cfg.anneal == "cosine":
            wave = 0.5 * (1.0 + math.cos(math.pi * self._budget_spent(elapsed)))
            lr *= cfg.anneal_floor + (1.0 - cfg.anneal_floor) * wave
        self.progress.lr = lr
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _validate(self) -> None:
        p, world = self.progress, self.world
        tick = time.perf_counter()
        ppl = math.nan
        if world.is_main:
            ppl = perplexity(self.model, self.corpus.valid, batch_size=self.cfg.eval_batch_size)
        # Rank 0's figure decides the LR decay everywhere (other ranks' float sums could differ).
        ppl = world.from_main(ppl)
        if self.reporter is not None:
            self.reporter.validated(time.perf_counter() - tick)
        p.last_valid, p.evaluated_at = ppl, p.tokens
        record = {"tokens": p.tokens, "minutes": p.elapsed / 60, "valid_ppl": ppl, "lr": p.lr}
        p.history.append(record)
        if ppl < p.best_valid:
            p.best_valid = ppl
            self.ckpt.metrics = {"valid_ppl": ppl, "train_tokens": p.tokens}
            self.ckpt.train = None
            if world.is_main:
                save_checkpoint(self.run_dir / BEST, self.ckpt)
        else:
            p.lr_scale *= self.cfg.lr_decay
            self._set_lr(p.elapsed)
        self._save_last()
        if world.is_main:
            with (self.run_dir / LOG).open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")

    def _save_last(self) -> None:
        """Rank 0 writes; every rank must call it, since each one's carry and RNG go in."""
        world = self.world
        # The carry of all W * B streams, laid out as a one-process run with that batch would.
        carry = world.unshard(self.carry.detach(), dim=1)
        rngs = world.gather(torch.get_rng_state())
        if not world.is_main:
            return
        self.ckpt.train = {
            "config": asdict(self.cfg),
            "optimizer": self.opt.state_dict(),
            "progress": asdict(self.progress),
            "carry": carry,
            "rng": rngs[0],
            "world_size": world.size,
        }
        if world.distributed:
            self.ckpt.train["rngs"] = rngs
        save_checkpoint(self.run_dir / LAST, self.ckpt)
        self.ckpt.train = None


def describe(result: TrainResult) -> str:
    return (
        f"best valid ppl {result.best_valid_ppl:.2f} after {result.tokens:,} tokens in "
        f"{result.minutes:.1f} min ({result.tokens_per_s:,.0f} tok/s); "
        f"checkpoint {result.run_dir / BEST}"
    )
