"""``python -m model_export {train,eval,export,download,build,build-default}``.

Every expected failure (bad data, flags, checkpoints, bundles) ends with one ``error:`` line on
stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import os

# OpenMP reads this when torch loads it, so it must be set before the first torch import.
# Passive workers sleep instead of spinning between parallel regions: as fast on an idle
# machine, and on a busy one 2 spinning threads were measured 8x slower than passive ones.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from model_export.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model_export.corpus import (
    DEFAULT_MAX_VOCAB,
    DEFAULT_VALID_FRACTION,
    FORMATS,
    CorpusOptions,
    read_corpus,
)
from model_export.data import (
    WIKITEXT2_INFO,
    Corpus,
    DataError,
    download_wikitext2,
    load_corpus,
)
from model_export.datadir import resolve_data_dir
from model_export.model import CELLS, HEADS, ConfigError
from model_export.recipes import RECIPES, get_recipe
from model_export.trees import TREE_KINDS
from service.bundle import BundleError
from service.tree import TreeError

if TYPE_CHECKING:
    from model_export.progress import BuildBar
    from model_export.train import TrainResult

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
TOPK_TOKENS = 20_000
TOPK_HELP = (
    "top-k accuracy over the first N targets of a split (0 = all; scoring every word of V = 33k "
    "costs a dense matmul per token, perplexity is always over the whole split)"
)


def _cutoffs(text: str) -> tuple[int, ...]:
    """``--cutoffs 2000,10000`` -> ``(2000, 10000)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        message = f"expected integers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


# Flags that override a recipe's ModelConfig / TrainConfig fields (None = keep the recipe's):
# name -> (type, help). Choices come from the config classes that validate them.
MODEL_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "cell": (str, f"recurrent cell ({', '.join(CELLS)})"),
    "emb_size": (int, "input embedding width"),
    "hidden_size": (int, "recurrent state width per layer"),
    "layers": (int, "recurrent layers"),
    "dropout": (float, "dropout on embeddings and RNN outputs, in [0, 1)"),
    "head": (str, f"output layer ({', '.join(HEADS)}: tree, full softmax, adaptive softmax)"),
    "proj_size": (int, "width of a linear projection after the RNN (0: none)"),
    "cutoffs": (
        _cutoffs,
        "adaptive head: comma-separated word ranks ending the shortlist and each tail cluster "
        "(default 1000,5000,15000, measured on WikiText-2)",
    ),
    "div_value": (
        float,
        "adaptive head: tail cluster i projects to d / DIV ** (i + 1) (default 2)",
    ),
}
TRAIN_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "tree": (str, f"hs head: the tree ({', '.join(TREE_KINDS)})"),
    "tree_from": (str, "clustered tree: checkpoint whose input embeddings are clustered"),
    "batch_size": (int, "sequences per step"),
    "bptt": (int, "time steps per window of truncated back-propagation"),
    "optimizer": (str, "sgd or adam"),
    "lr": (float, "learning rate"),
    "lr_decay": (float, "LR factor when validation perplexity does not improve, in (0, 1]"),
    "clip": (float, "gradient norm clip"),
    "weight_decay": (float, "L2 weight decay"),
    "epochs": (int, "at most this many passes over the training text"),
    "max_minutes": (float, "stop after this many minutes (resumes included)"),
    "max_tokens": (int, "stop after this many training tokens (resumes included)"),
    "eval_every": (int, "training tokens between validations (0: once per epoch)"),
    "seed": (int, "random seed"),
    "threads": (int, "intra-op threads (0: every core)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m model_export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model into a run directory")
    _add_data(train)
    train.add_argument("--out", required=True, type=Path, help="run directory (best.pt, last.pt)")
    train.add_argument(
        "--recipe", default="default", choices=list(RECIPES),
        help="training budget and model size (default: %(default)s)",
    )  # fmt: skip
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    for name, (kind, help_text) in {**MODEL_FLAGS, **TRAIN_FLAGS}.items():
        flag = f"--{name.replace('_', '-')}"
        train.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    train.add_argument(
        "--no-tie", dest="tie_weights", action="store_false", default=None,
        help="full softmax: do not share the output matrix with the embeddings",
    )  # fmt: skip
    train.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None,
        help="no progress bar",
    )  # fmt: skip

    ev = sub.add_parser("eval", help="perplexity and top-k accuracy of a checkpoint")
    ev.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run")
    _add_data(ev)
    ev.add_argument(
        "--split", action="append", choices=["train", "valid", "test"],
        help="split to evaluate; repeat for several (default: test)",
    )  # fmt: skip
    ev.add_argument("--topk-tokens", type=int, default=TOPK_TOKENS, help=TOPK_HELP)
    ev.add_argument("--json", type=Path, default=None, help="also write the results here")

    ex = sub.add_parser("export", help="write a serving bundle from a checkpoint")
    ex.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run")
    ex.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    ex.add_argument("--metrics", type=Path, default=None, help="eval JSON to put in the manifest")
    ex.add_argument(
        "--name", default=None, help="model name in the manifest (default: the bundle directory's)"
    )
    ex.add_argument("--force", action="store_true", help="replace an existing bundle")

    dl = sub.add_parser("download", help="fetch WikiText-2 (needs network)")
    dl.add_argument("--to", required=True, type=Path, help="directory to unpack WikiText-2 into")

    build = sub.add_parser("build", help="train, evaluate and export a bundle from any corpus")
    _add_corpus(build)
    _add_build(build)

    bd = sub.add_parser(
        "build-default", help="build on WikiText-2 (build --corpus with the WikiText-2 directory)"
    )
    _add_data(bd)
    _add_build(bd)
    return parser


def _vocab_cap(value: str) -> int | None:
    """``--max-vocab``: a number, or ``none`` for no cap (whether it is at least 2 is
    :class:`CorpusOptions`'s to say)."""
    if value.strip().lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from None


def _add_corpus(parser: argparse.ArgumentParser) -> None:
    """The flags of ``build`` that say what to train on (:mod:`model_export.corpus`)."""
    formats = ", ".join(FORMATS[1:])
    parser.add_argument(
        "--corpus", required=True, type=Path, metavar="PATH",
        help="a WikiText-style directory (train/valid/test.txt, already tokenized), a UTF-8 "
        "text file, a directory of .txt files (one document each) or a .jsonl file",
    )  # fmt: skip
    parser.add_argument(
        "--corpus-format", choices=FORMATS, default="auto",
        help=f"how to read --corpus ({formats}); auto: a directory with train/valid/test.txt is "
        "wikitext, another directory text-dir, a *.jsonl file jsonl, any other file text",
    )  # fmt: skip
    parser.add_argument(
        "--text-field", default="text", metavar="NAME",
        help="jsonl: the field holding each document's text (default: text)",
    )  # fmt: skip
    parser.add_argument(
        "--valid-fraction", type=float, default=DEFAULT_VALID_FRACTION, metavar="F",
        help="raw text: the fraction of documents held out for valid, and again for test, in "
        f"(0, 0.5) (default {DEFAULT_VALID_FRACTION}; at least one document each)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N",
        help="raw text: seed of the document shuffle that makes the splits (default 0; training "
        "keeps the recipe's seed)",
    )  # fmt: skip
    parser.add_argument(
        "--max-vocab", type=_vocab_cap, default=DEFAULT_MAX_VOCAB, metavar="N|none",
        help="keep at most N word types, <eos> and <unk> included, the most frequent in train "
        f"(default {DEFAULT_MAX_VOCAB:,}, chosen by benchmarks/vocab_cap.py: WikiText-2 keeps "
        "its published 33,278; 'none': no cap)",
    )  # fmt: skip
    parser.add_argument(
        "--min-count", type=int, default=1, metavar="N",
        help="drop word types seen fewer than N times in train (default 1: keep all); dropped "
        "and capped words become <unk>",
    )  # fmt: skip
    parser.add_argument(
        "--data-tokens", type=int, default=None, metavar="N",
        help="use only the first N tokens of each split (smoke runs)",
    )  # fmt: skip
    parser.add_argument(
        "--data-name", default=None, metavar="NAME",
        help="the corpus name the manifest records (default: the --corpus file or directory name)",
    )  # fmt: skip
    parser.add_argument(
        "--init", type=Path, default=None, metavar="PATH",
        help="fine-tune this model on the corpus instead of training a new one: a checkpoint, a "
        "run directory (its best.pt) or a hierarchical-softmax bundle (e.g. bundles/default); "
        "the corpus is read in its vocabulary and the recipe gives only the training settings "
        "(--recipe finetune: a lower learning rate)",
    )  # fmt: skip
    parser.add_argument(
        "--licence", default="unknown", metavar="TEXT",
        help="the corpus licence the manifest records (default: unknown)",
    )  # fmt: skip


def _add_build(parser: argparse.ArgumentParser) -> None:
    """The flags ``build`` and ``build-default`` share: the recipe, budgets and the output."""
    parser.add_argument(
        "--out", required=True, type=Path,
        help="the bundle directory to write; its name is the bundle's name",
    )  # fmt: skip
    parser.add_argument(
        "--recipe", default="default", choices=list(RECIPES),
        help="the model and training recipe (model_export/recipes.py)",
    )  # fmt: skip
    parser.add_argument(
        "--run-dir", type=Path, default=None,
        help="training run directory, resumed when it holds last.pt (default: runs/<bundle name>)",
    )  # fmt: skip
    parser.add_argument(
        "--max-minutes", type=float, default=None, metavar="M",
        help="stop training after M minutes (default: the recipe's budget)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens", type=int, default=None, metavar="N",
        help="stop training after N tokens (default: the recipe's budget)",
    )  # fmt: skip
    parser.add_argument("--topk-tokens", type=int, default=TOPK_TOKENS, help=TOPK_HELP)
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=True,
        help="no progress bar",
    )  # fmt: skip


def _add_data(parser: argparse.ArgumentParser) -> None:
    help_text = "WikiText-2 directory (else $NEXTWORD_DATA, else the copy in data/wikitext-2)"
    parser.add_argument("--data", default=None, help=help_text)
    parser.add_argument("--data-tokens", type=int, default=None, help="use only this many tokens")


def _corpus(args: argparse.Namespace, note: Callable[[str], None] | None = None) -> Corpus:
    data_dir = resolve_data_dir(args.data, note=note or _say)
    return load_corpus(data_dir, max_tokens=args.data_tokens)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _picked(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


# -- commands ----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    from model_export.train import describe, train
    from model_export.wordvectors import first_run_for, train_word_vectors

    corpus = _corpus(args)
    model_over = _picked(args, [*MODEL_FLAGS, "tie_weights"])
    train_over = _picked(args, [*TRAIN_FLAGS, "progress"])
    if args.resume:
        result = train(args.out, corpus, None, None, resume=True, overrides=train_over)
    else:
        recipe = get_recipe(args.recipe)
        model_cfg, train_cfg = recipe.build(len(corpus.vocab), model_over, train_over)
        first_run = first_run_for(train_cfg, recipe.first_run)
        if first_run is not None:
            train_cfg, first, _ = train_word_vectors(
                args.out,
                corpus,
                model_cfg,
                train_cfg,
                first_run,
                first_model=recipe.first_run_model,
            )
            if _is_main_process():
                print(f"word vectors for the clustered tree: {describe(first)}")
        result = train(args.out, corpus, model_cfg, train_cfg)
    if _is_main_process():  # under torchrun every rank returns the same result
        print(describe(result))


def _is_main_process() -> bool:
    from model_export.distributed import world_from_env

    return world_from_env(os.environ).is_main


def cmd_eval(args: argparse.Namespace) -> None:
    from model_export.evaluate import evaluate_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    splits = args.split or ["test"]
    results = evaluate_checkpoint(ckpt, _corpus(args), splits, args.topk_tokens or None)
    text = json.dumps(results, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)


def cmd_export(args: argparse.Namespace) -> None:
    from model_export.export import export_bundle

    if args.out.exists() and not args.force:
        raise BundleError(f"{args.out} already exists (pass --force to replace it)")
    ckpt = load_checkpoint(args.checkpoint)
    metrics = _read_metrics(args.metrics) if args.metrics else {}
    out, parity = export_bundle(ckpt, args.out, metrics=metrics, force=args.force, name=args.name)
    print(
        f"wrote {out} (parity: max |d log P| = {parity.max_abs_diff:.2e}, "
        f"{parity.comparisons} comparisons)"
    )


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--metrics {path}: not a readable JSON file ({exc})") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"--metrics {path}: expected a JSON object")
    return metrics


def cmd_download(args: argparse.Namespace) -> None:
    print(f"WikiText-2 is in {download_wikitext2(args.to)}")


def cmd_build(args: argparse.Namespace) -> None:
    _refuse_existing(args)
    options = CorpusOptions(
        format=args.corpus_format,
        text_field=args.text_field,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        max_vocab=args.max_vocab,
        min_count=args.min_count,
        max_tokens=args.data_tokens,
    )
    data = {"name": args.data_name or args.corpus.resolve().name, "licence": args.licence}
    build_bundle(args, args.corpus, options, data)


def cmd_build_default(args: argparse.Namespace) -> None:
    _refuse_existing(args)
    data_dir = resolve_data_dir(args.data, note=_say)
    options = CorpusOptions(format="wikitext", max_tokens=args.data_tokens)
    build_bundle(args, data_dir, options, dict(WIKITEXT2_INFO))


def build_bundle(
    args: argparse.Namespace, path: Path, options: CorpusOptions, data: dict[str, str]
) -> None:
    """Read the corpus, train (or resume) in the run directory, evaluate valid and test, export.

    The corpus is read and checked before anything is written: a bad one leaves no run
    directory and no bundle. ``data`` (name, licence) is what the manifest says it was.
    """
    from model_export.export import export_bundle
    from model_export.progress import BuildBar

    start = _start_model(args)
    sourced = read_corpus(path, options, None if start is None else start.vocab)
    sourced.corpus.about = data  # what the checkpoints and the manifest say the text is
    _say(sourced.describe())
    topk = args.topk_tokens or None
    bar = BuildBar(f"building {args.out}", topk_tokens=topk, enabled=args.progress)
    try:
        bar.corpus(len(sourced.corpus.valid), len(sourced.corpus.test))
        ckpt, metrics = _train_and_evaluate(args, sourced.corpus, bar, topk, start)
        metrics["corpus"] = sourced.summary()
        bar.stage("export")
        out, parity = export_bundle(ckpt, args.out, metrics=metrics, force=args.force)
    except BaseException:
        bar.close(finished=False)
        raise
    bar.close()
    test = metrics["test"]
    print(
        f"wrote {out}: test ppl {test['perplexity']:.1f}, top-1/3/10 {test['top1']:.3f}/"
        f"{test['top3']:.3f}/{test['top10']:.3f}, out of vocabulary valid "
        f"{metrics['valid']['oov_rate']:.2%} test {test['oov_rate']:.2%}, "
        f"parity {parity.max_abs_diff:.1e}"
    )


def _start_model(args: argparse.Namespace) -> Checkpoint | None:
    """``--init``'s model, checked against the other flags before anything is read."""
    init = getattr(args, "init", None)
    if init is None:
        return None
    if args.max_vocab != DEFAULT_MAX_VOCAB or args.min_count != 1:
        raise ConfigError("--init keeps the model's vocabulary: drop --max-vocab and --min-count")
    run_dir = args.run_dir or Path("runs") / args.out.name
    from model_export.finetune import load_start
    from model_export.train import LAST

    if (run_dir / LAST).exists():
        return None  # resuming the fine-tuning run, which already holds the model

    return load_start(init)


def _refuse_existing(args: argparse.Namespace) -> None:
    """Before the corpus is read and trained on: finding out at export would be too late."""
    if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1":
        # Every rank would evaluate and export to the same place: train, then export once.
        raise ConfigError(
            "build does not run under torchrun: train with torchrun (python -m model_export "
            "train), then eval and export the run's best.pt in one process"
        )
    if args.out.exists() and not args.force:
        raise BundleError(f"{args.out} already exists (pass --force to replace it)")


def _train_and_evaluate(
    args: argparse.Namespace,
    corpus: Corpus,
    bar: BuildBar,
    topk: int | None,
    start: Checkpoint | None,
) -> tuple[Checkpoint, dict[str, Any]]:
    """The best checkpoint of the run, and its metrics: valid and test, and the training.
    ``start``: the model a new run fine-tunes (its shape replaces the recipe's)."""
    from model_export.evaluate import evaluate_checkpoint
    from model_export.train import BEST, describe
    from model_export.wordvectors import first_run_summary

    run_dir = args.run_dir or Path("runs") / args.out.name
    result = _train_run(args, run_dir, corpus, bar, start)
    bar.write(describe(result))
    ckpt: Checkpoint = load_checkpoint(run_dir / BEST)
    metrics: dict[str, Any] = {}
    for split in ("valid", "test"):
        bar.stage(split)
        metrics.update(evaluate_checkpoint(ckpt, corpus, [split], topk))
        metrics[split]["oov_rate"] = round(corpus.oov_rate(split), 6)
    metrics["training"] = {
        "tokens": result.tokens,
        "minutes": round(result.minutes, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "recipe": args.recipe,
        "init": None if start is None else str(args.init),
        "first_run": first_run_summary(run_dir),
    }
    return ckpt, metrics


def _train_run(
    args: argparse.Namespace, run_dir: Path, corpus: Corpus, bar: BuildBar, start: Checkpoint | None
) -> TrainResult:
    """Train the build's run, or resume it; first, when the recipe's clustered tree needs
    them, the word vectors (:mod:`model_export.wordvectors`), the bar showing both as one."""
    from model_export.train import LAST, Reporter, describe, train
    from model_export.wordvectors import first_run_for, train_word_vectors

    budget = _picked(args, ["max_minutes", "max_tokens", "progress"])
    if (run_dir / LAST).exists():
        bar.write(f"resuming the run in {run_dir}")
        return train(run_dir, corpus, None, None, resume=True, overrides=budget, reporter=bar)
    recipe = get_recipe(args.recipe)
    model_cfg, train_cfg = recipe.build(len(corpus.vocab), {}, budget)
    first_run = None if start is not None else first_run_for(train_cfg, recipe.first_run)
    reporter: Reporter | None = bar
    if first_run is not None:
        train_cfg, first, reporter = train_word_vectors(
            run_dir, corpus, model_cfg, train_cfg, first_run, bar, recipe.first_run_model
        )
        bar.write(f"word vectors for the clustered tree: {describe(first)}")
    return train(run_dir, corpus, model_cfg, train_cfg, reporter=reporter, init=start)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "download": cmd_download,
    "build": cmd_build,
    "build-default": cmd_build_default,
}


def main(argv: Sequence[str] | None = None) -> int:
    from model_export.export import ExportError
    from model_export.train import TrainError, TrainInterrupted

    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except TrainInterrupted as exc:
        if _is_main_process():
            print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (
        DataError,
        ConfigError,
        CheckpointError,
        BundleError,
        TreeError,
        ExportError,
        TrainError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
