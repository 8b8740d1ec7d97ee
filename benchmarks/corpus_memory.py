"""Peak memory of a build on a corpus far larger than its share of memory (issue 12, streaming).

Writes a ``--size-mb`` (1,024) text file of WikiText-2's training text, detokenized into typed
text (:func:`service.text.detokenize`) and repeated, each copy's lines ending in a word of its
own (``v7``) so that no two copies' documents are the same. Then runs

    python -m model_export build --corpus FILE --recipe tiny --max-tokens 20000 ...

as a child process and records its peak resident set size (``ru_maxrss`` of the child's own
rusage from ``os.wait4``: the kernel's high-water mark, not a sample) and its wall time. The
build reads the whole corpus (no ``--data-tokens``); the tiny token budget and a small
``--valid-fraction`` (0.001: ~200k tokens each for valid and test at 1 GB) keep training and
evaluation short. Torch, training and export take a few hundred MiB of their own whatever the
corpus, so a second child that only reads the corpus (:func:`model_export.corpus.read_corpus`,
no torch) is measured first: what streaming itself costs. The children's ``TMPDIR`` is the
work directory, so their id files are written (and removed) there. Target: the build's peak
RSS <= 3 GiB.

Writes ``benchmarks/results/corpus_memory.json`` (date, machine, commit, settings, peak RSS,
wall time and the ends of the output of both runs, id files left behind), or ``--out``.

    python benchmarks/corpus_memory.py                       # 1 GB: minutes, ~4 GB of disk
    python benchmarks/corpus_memory.py --size-mb 5 --out /tmp/corpus_memory.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.runinfo import RESULTS, run_info  # noqa: E402  (a script: the repo is not installed)
from service.text import detokenize  # noqa: E402

TARGET_GIB = 3.0
MIB = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="corpus size (default 1024)")
    parser.add_argument(
        "--source", type=Path, default=None,
        help="the text repeated (default: train.txt of WikiText-2, found as the build finds it)",
    )  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=20_000, help="training budget")
    parser.add_argument(
        "--valid-fraction", type=float, default=0.001, help="of the corpus held out for validation"
    )
    parser.add_argument(
        "--recipe", default="tiny", help="the build's recipe (model_export build --help lists them)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None,
        help="where the corpus, run, bundle and id files go (default: a temporary directory, "
        "removed afterwards)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "corpus_memory.json", help="result file"
    )
    return parser.parse_args()


def source_path(given: Path | None) -> Path:
    if given is not None:
        return given
    from model_export.datadir import resolve_data_dir  # no torch: the parent stays small

    return resolve_data_dir(None, note=print) / "train.txt"


def write_corpus(source: Path, target: Path, size: int) -> int:
    """Copies of ``source``, detokenized, up to the line that reaches ``size`` bytes; the number
    of copies begun."""
    lines = [detokenize(line.split()) for line in source.read_text(encoding="utf-8").split("\n")]
    written = copies = 0
    with target.open("w", encoding="utf-8") as out:
        while written < size:
            suffix = f" v{copies}"  # a word of each copy's own: its documents are new text
            copies += 1
            for line in lines:
                text = f"{line}{suffix}\n" if line else "\n"
                out.write(text)
                written += len(text.encode())
                if written >= size:
                    break
            else:
                out.write("\n")  # the copy's last document ends here
                written += 1
    return copies


READ_ONLY = """
import sys
from pathlib import Path
from model_export.corpus import CorpusOptions, read_corpus
options = CorpusOptions(valid_fraction=float(sys.argv[2]))
print(read_corpus(Path(sys.argv[1]), options).describe())
"""
"""The reading alone, without torch, training or export: what streaming itself costs."""


def run_child(command: list[str], work: Path) -> dict[str, Any]:
    """Run ``command``; its exit status, wall time, peak RSS and the ends of its output."""
    env = {**os.environ, "TMPDIR": str(work)}  # the id files go to (and leave) the work dir
    tick = time.perf_counter()
    with (work / "stdout").open("w+") as out, (work / "stderr").open("w+") as err:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        # wait4 gives this child's own rusage: ru_maxrss is its high-water mark, in KiB on Linux.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - tick
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().strip().splitlines(), err.read().strip().splitlines()
    return {
        "command": command,
        "returncode": child.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss * 1024 / MIB, 1),
        "stdout": stdout[-3:],
        "stderr": stderr[-5:],
    }


def build_command(args: argparse.Namespace, corpus: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "model_export", "build", "--corpus", str(corpus),
        "--out", str(work / "bundle"), "--run-dir", str(work / "run"), "--force",
        "--recipe", args.recipe, "--max-tokens", str(args.max_tokens),
        "--valid-fraction", str(args.valid_fraction), "--topk-tokens", "1000", "--no-progress",
    ]  # fmt: skip


def main() -> int:
    args = parse_args()
    source = source_path(args.source)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="corpus-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "corpus.txt"
        tick = time.perf_counter()
        copies = write_corpus(source, corpus, int(args.size_mb * MIB))
        size = corpus.stat().st_size
        print(f"wrote {corpus}: {size / MIB:,.0f} MiB, {copies} copies of {source}", flush=True)
        generated = time.perf_counter() - tick
        read = run_child(
            [sys.executable, "-c", READ_ONLY, str(corpus), str(args.valid_fraction)], work
        )
        result = run_child(build_command(args, corpus, work), work)
        leftovers = sorted(p.name for p in work.glob("nextword-corpus-*"))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        **run_info(),
        "corpus": {"bytes": size, "copies": copies, "source": str(source)},
        "settings": {
            "recipe": args.recipe,
            "max_tokens": args.max_tokens,
            "valid_fraction": args.valid_fraction,
        },
        "generate_s": round(generated, 1),
        "read_only": read,
        "build": result,
        "id_files_left": leftovers,
        "target_peak_rss_gib": TARGET_GIB,
        "within_target": result["returncode"] == 0 and result["peak_rss_mib"] <= TARGET_GIB * 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'run':>10} {'corpus MiB':>11} {'peak RSS MiB':>13} {'wall s':>8} {'exit':>5}")
    for name, run in (("read only", read), ("build", result)):
        print(f"{name:>10} {size / MIB:11,.0f} {run['peak_rss_mib']:13,.1f} {run['wall_s']:8.1f} "
              f"{run['returncode']:5d}")  # fmt: skip
    for line in result["stderr"]:
        print(f"  {line}")
    print(f"wrote {args.out}")
    return 0 if report["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
