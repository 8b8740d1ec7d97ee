"""One progress bar for a whole ``build-default``: training, evaluation and export, with time left.

The bar counts wall-clock seconds: its position is the time the build has taken, its length that
plus the estimated time left, so its percentage and its ``left`` figure are one estimate.

* Training's time left comes from the budget that binds the run (``spent``: the largest of the
  token, time and epoch fractions used): exactly ``max_minutes`` less the time taken when time
  binds (the default recipe), extrapolated at the measured rate when tokens do. A run that ends
  early (its learning rate decayed to the floor) makes the bar jump to the next stage.
* Evaluation and export are estimated from the measured cost of scoring a token (the validation
  passes during training; before the first, from the training throughput), by the ratios below,
  and rescaled by how long each finished stage took against its estimate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # the protocol's type only: importing train at run time loads torch
    from model_export.train import Reporter

TOPK_COST = 55.0
"""A top-k target costs this many perplexity targets (all V words are scored): measured 26 s for
20k top-k targets and 5.1 s for the 217k of a validation pass (V = 33,278, d = 256, 2 cores)."""
EXPORT_COST = 0.5
"""ONNX export and parity check, in validation passes (measured 2.6 s against 5.1 s)."""
SCORE_SPEEDUP = 2.5
"""Scoring a token is this much faster than training on it (measured 25.8k against 10.1k tok/s)."""
REFRESH_S = 1.0
STAGES = ("valid", "test", "export")


class RunShare:
    """One training run reported as a part of a build's training (a clustered tree's first run,
    then the main run): the run's budget fraction ``spent`` becomes ``start + share * spent``
    of the whole, and its tokens and seconds continue those of the runs before it."""

    def __init__(
        self, inner: Reporter, *, start: float, share: float, tokens: int = 0, seconds: float = 0.0
    ) -> None:
        self._inner, self._start, self._share = inner, start, share
        self._tokens, self._seconds = tokens, seconds

    def step(self, tokens: int, elapsed: float, spent: float) -> None:
        whole = self._start + self._share * spent
        self._inner.step(self._tokens + tokens, self._seconds + elapsed, whole)

    def status(self, values: dict[str, str]) -> None:
        self._inner.status(values)

    def validated(self, seconds: float) -> None:
        self._inner.validated(seconds)


class BuildBar:
    """The bar; pass it to ``train(..., reporter=)``, then call :meth:`stage` before each of
    evaluating valid, evaluating test and exporting, and :meth:`close` at the end."""

    def __init__(
        self,
        label: str,
        *,
        topk_tokens: int | None,
        enabled: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._topk = topk_tokens
        self._sizes = {"valid": 0, "test": 0}
        self._left_training: float | None = None
        self._token_s: float | None = None
        """Seconds to score one token (a perplexity target), measured by a validation pass."""
        self._token_guess: float | None = None
        """The same, guessed from the training throughput until a validation is measured."""
        self._stage: str | None = None
        self._stage_start = 0.0
        self._scale = 1.0
        self._done_estimate = self._done_actual = 0.0
        self._status = ""
        self._shown = 0.0
        self._first: tuple[int, float] | None = None
        self._bar = tqdm(
            total=1.0,
            desc=label,
            # tqdm puts ", " before the postfix: "... | 07:02 so far, about 12:01 left; ..."
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} so far{postfix}",
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self._show()

    def corpus(self, valid_tokens: int, test_tokens: int) -> None:
        """The split sizes, which evaluation's estimate needs (known once the corpus is read)."""
        self._sizes = {"valid": valid_tokens, "test": test_tokens}

    # -- training (model_export.train.Reporter) --------------------------------------------------

    def step(self, tokens: int, elapsed: float, spent: float) -> None:
        if self._first is None:
            self._first = (tokens, elapsed)
        if spent > 0:
            self._left_training = elapsed * (1.0 - spent) / spent
        if self._token_s is None:
            first_tokens, first_elapsed = self._first
            if tokens > first_tokens and elapsed > first_elapsed:
                train_rate = (tokens - first_tokens) / (elapsed - first_elapsed)
                self._token_guess = 1.0 / (SCORE_SPEEDUP * train_rate)
        if self._clock() - self._shown >= REFRESH_S:
            self._show()

    def status(self, values: dict[str, str]) -> None:
        shown = {key: value for key, value in values.items() if key != "left"}
        self._status = "training: " + " ".join(f"{key} {value}" for key, value in shown.items())

    def validated(self, seconds: float) -> None:
        if self._sizes["valid"] > 0:
            self._token_s = seconds / self._sizes["valid"]

    # -- evaluation and export ------------------------------------------------------------------

    def stage(self, name: str) -> None:
        """Starting ``valid`` or ``test`` (evaluation) or ``export``."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        now = self._clock()
        if self._stage is not None:
            self._done_estimate += self._estimate(self._stage)
            self._done_actual += now - self._stage_start
            self._scale = self._done_actual / max(self._done_estimate, 1e-9)
        self._left_training = 0.0
        self._stage, self._stage_start = name, now
        self._status = "exporting" if name == "export" else f"evaluating {name}"
        self._show()

    def write(self, message: str) -> None:
        """A line above the bar (the bar is redrawn below it)."""
        self._bar.write(message, file=sys.stderr)

    def close(self, *, finished: bool = True) -> None:
        """Fill the bar when the build finished; leave it where it stopped when it failed."""
        if finished:
            taken = self._clock() - self._start
            self._bar.total = self._bar.n = max(taken, 1e-9)
            self._bar.set_postfix_str("done", refresh=False)
        self._bar.close()

    # -- the estimate ----------------------------------------------------------------------------

    @property
    def _per_token(self) -> float | None:
        return self._token_s if self._token_s is not None else self._token_guess

    def _estimate(self, stage: str) -> float:
        per_token = self._per_token or 0.0
        if stage == "export":
            return EXPORT_COST * per_token * self._sizes["valid"]
        size = self._sizes[stage]
        topk = size if self._topk is None else min(self._topk, size)
        return per_token * (size + TOPK_COST * topk)

    def left(self) -> float | None:
        """Seconds the build has left, by the current estimate; None before training reports."""
        if self._left_training is None or self._per_token is None:
            return None
        if self._stage is None:
            final_validation = self._per_token * self._sizes["valid"]
            stages = sum(self._estimate(stage) for stage in STAGES)
            return self._left_training + final_validation + stages
        later = STAGES[STAGES.index(self._stage) + 1 :]
        current = self._estimate(self._stage) * self._scale
        since = self._clock() - self._stage_start
        return max(0.0, current - since) + self._scale * sum(self._estimate(s) for s in later)

    def _show(self) -> None:
        now = self._clock()
        self._shown = now
        taken, left = now - self._start, self.left()
        if left is None:
            self._bar.total, self._bar.n = 1.0, 0.0
            text = "estimating the time left"
        else:
            self._bar.total, self._bar.n = max(taken + left, 1e-9), taken
            text = f"about {tqdm.format_interval(left)} left"
        self._bar.set_postfix_str(f"{text}; {self._status}" if self._status else text, False)
        self._bar.refresh()
