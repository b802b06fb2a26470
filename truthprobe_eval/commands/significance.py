"""``truthprobe significance RUN_A RUN_B``: paired comparison of two runs on the same samples."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "significance",
        help="paired significance of two runs (lm-eval / lmms-eval --log_samples or VLMEvalKit predictions)",
        description="Paired comparison of per-sample correctness between run A (e.g. the baseline) and run B (e.g. "
        "the gated model): mean difference, paired t-test (one-sided, B better, by default), bootstrap confidence "
        "interval and, for 0/1 outcomes, McNemar's test. RUN is an lm-eval output folder or samples_*.jsonl file, "
        "an lmms-eval output folder or <time>_samples_<task>.jsonl file, "
        "or a VLMEvalKit work folder or <model>_<dataset>.xlsx/.tsv/.csv file. Every task the runs share is "
        "compared; runs whose sample sets differ are refused.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="reference run (e.g. vanilla)")
    p.add_argument("run_b", metavar="RUN_B", help="run compared against it (e.g. TruthProbe)")
    p.add_argument("--task", help="compare only this task / data set")
    p.add_argument("--metric", help="per-sample metric field (lm-eval: e.g. acc, exact_match; VLMEvalKit: a column)")
    p.add_argument("--filter", dest="filter_name", help="lm-eval filter name (default: the first logged)")
    p.add_argument("--alternative", choices=["greater", "less", "two-sided"], default="greater",
                   help="t-test alternative hypothesis about B - A (default greater: B is better)")
    p.add_argument("--bootstrap", type=int, default=10000, metavar="N", help="bootstrap resamples (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the interval (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="also write significance.md and significance.csv here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import significance as sig

    results, notes = sig.compare_runs(args.run_a, args.run_b, args.task, args.metric, args.filter_name,
                                      args.alternative, args.bootstrap, args.confidence, args.seed)
    name_a, name_b = sig.run_name(args.run_a), sig.run_name(args.run_b)  # labelled by what each run recorded
    print(sig.to_markdown(results, notes, name_a, name_b))
    if args.out:
        sig.write_outputs(results, notes, args.out, name_a, name_b)
        print(f"written to {args.out}: significance.md, significance.csv")
    return 0
