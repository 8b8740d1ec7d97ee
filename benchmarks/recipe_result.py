"""Record a built bundle's training result (a recipe's measured quality) in benchmarks/results/.

``python -m model_export build-default --recipe NAME`` trains, evaluates and exports; the bundle's
manifest holds the evaluation and the run directory the validation log. This copies both, with
the date, machine and commit, into ``benchmarks/results/recipe_<name>.json`` so the README's
model-quality table points at a committed file (bundles and runs are not committed):

    python benchmarks/recipe_result.py bundles/quality --run-dir runs/quality
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.runinfo import run_info, write_result  # noqa: E402  (a script, not installed)
from model_export.wordvectors import VECTORS_DIR  # noqa: E402


def read_log(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def summarise(bundle: Path, run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    log = read_log(run_dir / "log.jsonl")
    first_log = run_dir / VECTORS_DIR / "log.jsonl"  # a clustered tree's first run
    metrics = manifest["metrics"]
    return {
        "benchmark": "recipe",
        **run_info(),
        "bundle": manifest["name"],
        "bundle_created": manifest.get("created"),
        "model": manifest.get("model"),
        "tree": manifest.get("tree"),
        "data": manifest.get("data"),
        "training": metrics.get("training"),
        "valid": metrics.get("valid"),
        "test": metrics.get("test"),
        "validation_log": log,
        "first_run_validation_log": read_log(first_log) if first_log.is_file() else None,
        "note": "valid/test: the best checkpoint by validation perplexity, evaluated on the "
        "whole split; top-k accuracy over the first targets of each split (topk_tokens)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle the run exported")
    parser.add_argument("--run-dir", type=Path, required=True, help="holds log.jsonl")
    parser.add_argument("--name", default=None, help="results/NAME.json (default recipe_<recipe>)")
    args = parser.parse_args()
    for path in (args.bundle / "manifest.json", args.run_dir / "log.jsonl"):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    result = summarise(args.bundle, args.run_dir)
    recipe = (result["training"] or {}).get("recipe") or result["bundle"]
    path = write_result(args.name or f"recipe_{recipe}", result)
    test = result["test"] or {}
    print(f"{recipe}: test ppl {test.get('perplexity', float('nan')):.1f} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
