"""``truthprobe compare-methods``: the baseline, every registered method and their controls on one model."""
from __future__ import annotations

import argparse
from typing import Any

from ._options import add_verbose, job_log


def _assignment(value: str) -> tuple[str, str, str]:
    """``iti.k=16`` -> ("iti", "k", "16") (values parsed by the method's own parser later)."""
    target, sep, v = value.partition("=")
    method, dot, name = target.partition(".")
    if not sep or not dot or not method.strip() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected METHOD.NAME=VALUE (e.g. iti.k=16), found {value!r}")
    return method.strip(), name.strip(), v.strip()


def _count(value: str) -> int | None:
    return None if value.lower() == "all" else int(value)


def add_parser(subparsers) -> None:
    from ..interventions import methods

    known = methods()
    described = "; ".join(f"{name}: {', '.join(list(cls.control_titles.values()) + [t for t, _ in cls.ablations.values()]) or 'no controls'}"
                          for name, cls in known.items())
    p = subparsers.add_parser(
        "compare-methods",
        help="every method and its controls side by side on one model, with significance",
        description="On one loaded model: the baseline and every registered method (--methods), each with the file "
        "it reads (" + ", ".join(f"{cls.title}: {cls.artifact}" for cls in known.values() if cls.artifact) + ") fit "
        "here (on HaluEval rows the "
        "evaluation does not use, or on one TruthfulQA half for evaluating the other) or given with --set "
        "METHOD.FILE_SETTING=PATH, and its controls and the papers' ablations, each named for what it is ("
        + described + "); --no-controls drops them. Benchmarks: the HaluEval TruthProbe-paper protocol, TruthfulQA "
        "MC1/MC2 and the cross-entropy / KL divergence on neutral text. Each run is tested against the baseline "
        "(exact McNemar, Wilcoxon, paired bootstrap intervals). Writes comparison.md, comparison.json, "
        "comparison.png, leaderboard/ (for `truthprobe leaderboard`), the fitted files and every lm-eval result to "
        "--out.")
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias")
    p.add_argument("--out", default="runs/compare-methods")
    p.add_argument("--truthfulqa-csv", default=None, help="TruthfulQA.csv (default: $TRUTHPROBE_TRUTHFULQA_CSV)")
    p.add_argument("--questions", type=_count, default=100, metavar="N|all",
                   help="TruthfulQA questions, a seeded random subset split in two halves (default 100)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the question split (default 0)")
    p.add_argument("--halueval-offset", type=int, default=342, help="first HaluEval row evaluated (default 342)")
    p.add_argument("--halueval-rows", type=int, default=200, help="HaluEval rows evaluated (default 200)")
    p.add_argument("--neutral-texts", type=int, default=50, help="HaluEval knowledge paragraphs for CE/KL (default 50)")
    p.add_argument("--preset", choices=("ours", "paper"), default="ours",
                   help="ours (default): our fits (both answers per HaluEval row, grouped folds and the exact solver, "
                   "ITI on seeded question halves); paper: the published pipelines (TruthProbe's probing and reply "
                   "parse; ITI's contiguous halves, 80/20 head ranking and sigma from the end-of-question prompts)")
    p.add_argument("--methods", default=",".join(known), help=f"any of {','.join(known)} (default all; the baseline "
                   "always runs)")
    p.add_argument("--set", dest="settings", action="append", type=_assignment, default=[],
                   metavar="METHOD.NAME=VALUE", help="a setting of a method or of its fit (repeatable), e.g. "
                   "--set iti.k=16 --set iti.folds=2 --set truthprobe.scores=scores.json --set rve.rows=100; "
                   "defaults: each method's own (truthprobe fit METHOD --help lists them)")
    p.add_argument("--benchmarks", default="halueval,truthfulqa,neutral", help="any of halueval,truthfulqa,neutral")
    p.add_argument("--no-controls", action="store_true", help="leave out the controls and ablations")
    p.add_argument("--control-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..experiments.method_comparison import ComparisonConfig, format_comparison, run_comparison

    settings: dict[str, dict[str, Any]] = {}
    for method, name, value in args.settings:
        settings.setdefault(method, {})[name] = value
    cfg = ComparisonConfig(model=args.model, out=args.out, truthfulqa_csv=args.truthfulqa_csv, questions=args.questions,
                           split_seed=args.split_seed, halueval_offset=args.halueval_offset,
                           halueval_rows=args.halueval_rows, neutral_texts=args.neutral_texts, preset=args.preset,
                           methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), settings=settings,
                           benchmarks=tuple(b.strip() for b in args.benchmarks.split(",") if b.strip()),
                           controls=not args.no_controls, control_seed=args.control_seed, batch_size=args.batch_size,
                           device=args.device, dtype=args.dtype, progress=not args.quiet)
    cfg.check()  # bad settings fail before the log folder is made
    with job_log(args, Path(args.out) / "run.log") as log:
        log.say(f"truthprobe compare-methods: {args.model}, methods {args.methods}, preset {args.preset}; library "
                f"output: {Path(args.out) / 'run.log'}")
        result = run_comparison(cfg, log=log)
        log.say("")
        log.say(format_comparison(result).rstrip("\n"))
        log.say(f"\nwrote {args.out}/comparison.md, comparison.json, comparison.png, leaderboard/, run.log and lm_eval/")
    return 0
