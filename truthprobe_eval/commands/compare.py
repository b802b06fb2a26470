"""``truthprobe compare SCORES...``: correlations and top-k overlap between Truth Score files."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="correlate Truth Score maps of several models (inheritance analysis)",
        description="Pearson/Spearman correlation matrices, top-k overlap (Jaccard) and top-k share per layer "
        "band between score files (our JSON, published .npy or cv5_head_metrics.csv). Files of different "
        "shapes are listed as not comparable. Writes compare.md, CSV tables and PNGs to --out.",
    )
    p.add_argument("scores", nargs="+", metavar="SCORES", help="two or more score files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--labels", help="comma-separated display labels, one per file (default: model name or file name)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], metavar="K", help="top-k sizes (default 10 20 50)")
    p.add_argument("--bands", type=int, default=3, help="number of layer bands (default 3: early/middle/late)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import compare as cmp

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    entries = cmp.load_entries(args.scores, labels)
    result = cmp.compare(entries, ks=args.k, n_bands=args.bands)
    written = cmp.write_outputs(result, args.out, plots=not args.no_plots)
    print(cmp.to_markdown(result))
    print(f"written to {args.out}: {', '.join(sorted(p.name for p in written.values()))}")
    if not result.groups:
        print("truthprobe compare: no two score files share a shape; nothing was correlated")
        return 1
    return 0
