"""``truthprobe align SCORES_A SCORES_B``: Procrustes alignment of probes across model families."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "align",
        help="align A's probes to B's (orthogonal Procrustes) and score them on B's activations",
        description="The published appendix's cross-family analysis: probe weights of both score files as "
        "head-level vectors, mean-centred and L2-normalized, an orthogonal Procrustes rotation from A's basis to "
        "B's, and A's probes (before and after rotation) scored on B's cached activations (AUROC per head), "
        "correlated with B's Truth Scores. Needs probe weights in both files and B's activation cache (recorded "
        "in its score file by `truthprobe probe`, or --activations).",
    )
    p.add_argument("scores_a", metavar="SCORES_A", help="score file of model A (with probe weights)")
    p.add_argument("scores_b", metavar="SCORES_B", help="score file of model B (with probe weights)")
    p.add_argument("--activations", metavar="DIR", help="B's activation cache (default: the one B's score file records)")
    p.add_argument("--out", metavar="DIR", help="write align.md, align_heads.csv, align_summary.json, rotation.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import align

    result = align.align_files(args.scores_a, args.scores_b, args.activations)
    print(align.to_markdown(result))
    if args.out:
        align.write_outputs(result, args.out)
        print(f"written to {args.out}: align.md, align_heads.csv, align_summary.json, rotation.csv")
    return 0
