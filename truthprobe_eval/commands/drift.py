"""``truthprobe drift MODEL_A MODEL_B``: attention-weight drift between two checkpoints of one lineage."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "drift",
        help="layer- and head-wise attention weight drift between two checkpoints",
        description="Frobenius norms of the differences of the q, k, v, o attention weights (sliced per head; "
        "grouped-query K/V heads mapped to their query heads), absolute and relative to MODEL_A, per layer and "
        "per head, streamed one layer at a time from safetensors files. An MLLM's language model can be compared "
        "with its base LLM. MODEL is a local checkpoint folder or an alias (smollm2-135m-instruct).",
    )
    p.add_argument("model_a", metavar="MODEL_A", help="reference checkpoint (e.g. the base LLM)")
    p.add_argument("model_b", metavar="MODEL_B", help="descendant checkpoint (e.g. the fine-tuned LLM or the MLLM)")
    p.add_argument("--out", metavar="DIR", help="write drift.md, drift_layers.csv, drift_heads.csv, drift_summary.json, drift.png")
    p.add_argument("--top", type=int, default=10, help="most drifted heads to list (default 10)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import drift

    result = drift.weight_drift(args.model_a, args.model_b)
    print(drift.to_markdown(result, top=args.top))
    if args.out:
        written = drift.write_outputs(result, args.out, plots=not args.no_plots)
        print(f"written to {args.out}: {', '.join(sorted(p.name for p in written.values()))}")
    return 0
