"""``truthprobe leaderboard RESULT_DIRS...``: one table from lm-eval and VLMEvalKit result folders."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "leaderboard",
        help="collect lm-eval / lmms-eval / VLMEvalKit results into one table (Markdown, CSV, sortable HTML)",
        description="Collects lm-eval results_*.json and lmms-eval <time>_results.json (method read from the recorded "
        "config.intervention), "
        "VLMEvalKit <model>/<model>_<dataset>_score.csv / _acc.csv and truthprobe-results JSON files into one "
        "table: rows model x method (vanilla, TruthProbe with base-LLM or own scores, random gate), columns per "
        "benchmark metric, deltas against the model's vanilla run, significance marks where per-sample logs exist.",
    )
    p.add_argument("folders", nargs="+", metavar="RESULT_DIR", help="result folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="write leaderboard.md, leaderboard.csv, leaderboard.html")
    p.add_argument("--no-significance", action="store_true", help="skip the paired tests on per-sample logs")
    p.add_argument("--keep-seeds", action="store_true",
                   help="one row per gate seed (default: runs differing only in seed= are averaged, mean +- std)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import leaderboard as lb

    entries, notes = lb.collect(args.folders)
    board = lb.build(entries, significance=not args.no_significance, seeds=not args.keep_seeds)
    board.notes = notes + board.notes
    lb.write_outputs(board, args.out)
    print(lb.to_markdown(board))
    print(f"written to {args.out}: leaderboard.md, leaderboard.csv, leaderboard.html")
    return 0
