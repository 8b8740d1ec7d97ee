"""Training throughput of one process against data-parallel ranks (torchrun, gloo) on WikiText-2.

Each configuration ``PxB`` (P processes, B streams per rank, global batch P * B) trains the
recipe from scratch through the real command line (``python -m model_export train``, under
``torchrun --standalone --nproc-per-node P`` when P > 1) for the same global token budget. The
token rate is the run's training tokens over the seconds its steps took (``last.pt``'s progress:
start-up and validation excluded, the gradient all-reduce included); the wall time of the whole
command is recorded next to it. ``1x64`` is today's default run, ``2x32`` the same global batch
(the same arithmetic, split), ``2x64`` what a second rank buys when each keeps its batch. Threads
per process default to the machine's cores split between the ranks.

    python benchmarks/train_ddp_speed.py --data DIR [--recipe default] [--tokens 200000]
        [--configs 1x64 2x32 2x64] [--repeats 1]

Prints a table and writes ``benchmarks/results/train_ddp_speed.json`` (``--json PATH`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.runinfo import run_info, write_result  # noqa: E402

NAME = "train_ddp_speed"
NO_TIME_LIMIT = 10_000.0
"""Minutes: the recipes' own time budget would cut a slow configuration's run short."""


def parse_config(text: str) -> tuple[int, int]:
    """``2x32`` -> ``(2, 32)``."""
    try:
        procs, batch = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROCSxBATCH, e.g. 2x32, got {text!r}") from None
    if procs < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"processes and batch must be positive, got {text!r}")
    return procs, batch


def command(args: argparse.Namespace, procs: int, batch: int, out: Path) -> list[str]:
    launch = [sys.executable, "-m", "model_export"]
    if procs > 1:
        launch = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(procs), "-m", "model_export",
        ]  # fmt: skip
    train = [
        # A Huffman tree: a clustered one would first train its word vectors' run, untimed here.
        "train", "--recipe", args.recipe, "--tree", "huffman", "--max-tokens", str(args.tokens),
        "--max-minutes", str(NO_TIME_LIMIT), "--batch-size", str(batch),
        "--threads", str(threads_per_process(args, procs)), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    if args.data is not None:
        train += ["--data", args.data]
    if args.data_tokens is not None:
        train += ["--data-tokens", str(args.data_tokens)]
    return [*launch, *train]


def threads_per_process(args: argparse.Namespace, procs: int) -> int:
    return args.threads or max(1, (os.cpu_count() or 1) // procs)


def run_once(args: argparse.Namespace, procs: int, batch: int) -> dict[str, Any]:
    """Train one configuration in a scratch directory; its throughput from ``last.pt``."""
    threads = threads_per_process(args, procs)
    # torchrun sets OMP_NUM_THREADS=1 (with a warning) unless told; the run sets its own threads.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="ddp-speed-") as scratch:
        out = Path(scratch) / "run"
        start = time.perf_counter()
        done = subprocess.run(
            command(args, procs, batch, out), env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{procs}x{batch} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["train"]
    progress = saved["progress"]
    return {
        "procs": procs,
        "batch_per_rank": batch,
        "global_batch": procs * batch,
        "threads_per_process": threads,
        "tokens": progress["tokens"],
        "train_seconds": progress["train_seconds"],
        "tokens_per_s": progress["tokens"] / progress["train_seconds"],
        "wall_seconds": wall,
        "valid_ppl": progress["best_valid"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="WikiText-2 directory")
    parser.add_argument("--data-tokens", type=int, default=None, help="smoke runs: a slice")
    parser.add_argument("--recipe", default="default", help="model shape and optimizer")
    parser.add_argument("--tokens", type=int, default=200_000, help="global training tokens")
    parser.add_argument(
        "--configs", nargs="+", type=parse_config, default=[(1, 64), (2, 32), (2, 64)],
        metavar="PxB", help="processes x streams per rank (default: 1x64 2x32 2x64)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the configurations")
    parser.add_argument("--threads", type=int, default=0, help="per process (0: cores / P)")
    parser.add_argument("--json", type=Path, default=None, help=f"default: results/{NAME}.json")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {f"{p}x{b}": [] for p, b in args.configs}
    for _ in range(args.repeats):  # round-robin: load from elsewhere hits every configuration
        for procs, batch in args.configs:
            result = run_once(args, procs, batch)
            runs[f"{procs}x{batch}"].append(result)
            print(f"{procs}x{batch}: {result['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    medians = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    base = next(iter(medians.values()))  # the first configuration is the yardstick
    print(f"recipe {args.recipe}, {args.tokens:,} global tokens per run, {os.cpu_count()} cores")
    print(f"{'config':<8}{'global batch':>13}{'tok/s':>10}{'vs first':>9}{'wall s':>8}{'ppl':>8}")
    for name, rs in runs.items():
        last = rs[-1]
        print(
            f"{name:<8}{last['global_batch']:>13}{medians[name]:>10,.0f}"
            f"{medians[name] / base:>8.2f}x{last['wall_seconds']:>8.0f}{last['valid_ppl']:>8.1f}"
        )
    payload = {
        **run_info(),
        "recipe": args.recipe,
        "global_tokens_per_run": args.tokens,
        "data_tokens": args.data_tokens,
        "backend": "gloo",
        "runs": runs,
        "median_tokens_per_s": medians,
        "speedup_over_first": {name: value / base for name, value in medians.items()},
    }
    if args.json is None:
        path = write_result(NAME, payload)
    else:
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        path = args.json
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
