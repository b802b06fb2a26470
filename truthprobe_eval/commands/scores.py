"""``truthprobe scores show FILE``: summary, top heads, layer distribution, heatmap."""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("scores", help="inspect Truth Score files", description="Inspect Truth Score files.")
    sub = p.add_subparsers(dest="scores_command", metavar="ACTION", required=True)
    show = sub.add_parser(
        "show",
        help="shape, statistics, top-k heads, layer distribution, heatmap",
        description="Print a score file's shape, summary statistics, top-k heads and layer distribution. "
        "Reads our JSON format and the published .npy / cv5_head_metrics.csv files.",
    )
    show.add_argument("file", help="score file (.json, .npy or .csv)")
    show.add_argument("--top", type=int, default=10, help="how many top heads to list (default 10)")
    show.add_argument("--plot", metavar="PNG", help="write a layers x heads heatmap here")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from ..plots import layer_bar, plot_heatmap
    from ..scores import TruthScores

    scores = TruthScores.load(args.file)
    summary = scores.summary(k=args.top)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        meta = scores.meta
        print(f"{args.file}: Truth Scores of {scores.model}")
        print(f"  shape: {scores.num_layers} layers x {scores.num_heads} heads", end="")
        print(f", head_dim {meta['head_dim']}" if meta.get("head_dim") else "")
        for key in ("architecture", "data", "n_samples", "folds", "trainer", "epochs", "seed", "condition", "created"):
            if key in meta:
                print(f"  {key}: {meta[key]}")
        print(
            f"  mean {summary['mean']:.4f}  std {summary['std']:.4f}  min {summary['min']:.4f}  "
            f"median {summary['median']:.4f}  max {summary['max']:.4f}"
        )
        print(f"  top {args.top} heads (layer, head: score):")
        for row in summary["top_k"]:
            print(f"    L{row['layer']:<3d} H{row['head']:<3d} {row['score']:.4f}")
        k20 = min(20, scores.values.size)
        counts = scores.layer_counts(k20)
        print(f"  top-{k20} heads per layer (layer 0 -> {scores.num_layers - 1}): {layer_bar(counts)}")
        print(f"  share of top-{k20} heads in the later half of the layers: {summary['top20_share_later_half']:.0%}")
        if scores.metrics:
            print(f"  extra per-head metrics: {', '.join(sorted(scores.metrics))}")
        if scores.probe_weights is not None:
            print(f"  probe weights: {tuple(scores.probe_weights.shape)}")
    if args.plot:
        plot_heatmap(scores, args.plot)
        print(f"heatmap written to {args.plot}")
    return 0
