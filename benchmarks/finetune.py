"""Fine-tuning the default model on a second corpus against training on it from scratch.

The corpus is the King James Bible from Debian's ``bible-kjv`` (public domain; the package's
``bible`` command prints it), one document per chapter (1,189), verse numbers dropped, read as a
directory of ``.txt`` files. Both runs split it the same way (``--valid-fraction 0.05``, seed 0:
the split depends on the documents, not on the vocabulary), through the real command line:

* ``fine-tuned``: ``build --init BUNDLE --recipe finetune`` (1 M tokens at a tenth of the
  default learning rate, the default model's vocabulary and tree);
* ``from scratch``: ``build --recipe default`` (its own vocabulary and the recipe's token budget);
* ``not tuned``: the default bundle as it is, for reference.

Reported: test perplexity with the out-of-vocabulary rate (each run in its own vocabulary, so
the two perplexities are not the same measure when the OOV rates differ), training minutes, and
keystroke savings (``benchmarks/keystrokes.py``'s typing model, k = 3) typing the same verses
sampled from the test chapters, which neither run trained on.

    python benchmarks/finetune.py --bundle bundles/default [--entries 300]

Writes ``benchmarks/results/finetune_kjv.json``; runs and bundles go under ``runs/finetune_kjv``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.keystrokes import NextwordBackend, sample, simulate  # noqa: E402
from benchmarks.runinfo import run_info, write_result  # noqa: E402
from model_export.corpus import split_documents  # noqa: E402

_VERSE = re.compile(r"^(?P<book>\d?[A-Za-z]+)(?P<chapter>\d+):\d+ (?P<text>.*)$")
K = 3
FRACTION, SEED = 0.05, 0


def write_chapters(out: Path) -> list[Path]:
    """The KJV as one ``.txt`` file per chapter (sorted names keep the Bible's order)."""
    try:
        text = subprocess.run(
            ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"error: cannot run `bible` (apt-get install bible-kjv): {exc}")
    chapters: dict[str, list[str]] = {}
    for line in text.split("\n"):
        match = _VERSE.match(line.strip())
        if match:
            key = f"{match['book']} {match['chapter']}"
            chapters.setdefault(key, []).append(match["text"])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for number, verses in enumerate(chapters.values()):
        path = out / f"{number:04d}.txt"
        path.write_text("\n".join(verses) + "\n", encoding="utf-8")
        files.append(path)
    return files


def test_verses(files: list[Path]) -> list[str]:
    """The verses of the test chapters, as :func:`model_export.corpus.split_documents` splits."""
    indices = [[[str(i)]] for i in range(len(files))]  # the split looks at positions only
    held = split_documents(indices, FRACTION, SEED)["test"]
    return [v for doc in held for v in files[int(doc[0][0])].read_text().split("\n") if v]


def build(name: str, corpus: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    out = work / "bundles" / name
    command = [
        sys.executable, "-m", "model_export", "build", "--corpus", str(corpus), "--out", str(out),
        "--run-dir", str(work / "runs" / name), "--valid-fraction", str(FRACTION),
        "--seed", str(SEED), "--data-name", "King James Bible (bible-kjv)",
        "--licence", "public domain", "--no-progress", "--force", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    metrics = manifest["metrics"]
    return {
        "bundle": str(out),
        "command": " ".join(command[1:]),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
        "training": metrics["training"],
        "vocab_size": manifest["vocab_size"],
        "test": {key: metrics["test"][key] for key in ("perplexity", "top1", "top3", "oov_rate")},
        "valid_ppl": metrics["valid"]["perplexity"],
    }


def keystrokes(bundle: Path, entries: list[str]) -> dict[str, Any]:
    backend = NextwordBackend(bundle)
    try:
        row = simulate(backend, entries, K)
    finally:
        backend.close()
    return {key: row[key] for key in ("ksr", "next_word_top1", "next_word_topk", "keys")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default", help="to tune")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/finetune_kjv", help="outputs")
    parser.add_argument("--entries", type=int, default=300, help="test verses typed")
    args = parser.parse_args()

    info = run_info()
    files = write_chapters(args.work / "corpus")
    entries = sample(test_verses(files), args.entries, SEED)
    corpus = args.work / "corpus"
    runs = {
        "fine-tuned": build("tuned", corpus, args.work, ["--init", str(args.bundle),
                                                         "--recipe", "finetune"]),
        "from scratch": build("scratch", corpus, args.work, ["--recipe", "default"]),
    }  # fmt: skip
    runs["not tuned"] = {"bundle": str(args.bundle)}
    for row in runs.values():
        row["keystrokes"] = keystrokes(Path(row["bundle"]), entries)
    for name, row in runs.items():
        test = row.get("test", {})
        print(
            f"{name:<13} test ppl {test.get('perplexity', float('nan')):8.1f} "
            f"OOV {test.get('oov_rate', float('nan')):.3f}  KSR {row['keystrokes']['ksr']:.3f}"
        )
    path = write_result(
        "finetune_kjv",
        {**info, "chapters": len(files), "test_verses_typed": len(entries), "k": K, "runs": runs},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
