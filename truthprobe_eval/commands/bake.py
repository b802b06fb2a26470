"""``truthprobe bake``: fold the gates into W_o and write a standard Hugging Face checkpoint."""
from __future__ import annotations

import argparse

from ..gate_config import KINDS, NORMS, SITES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bake",
        help="write a gated model as a plain Hugging Face checkpoint",
        description="Fold TruthProbe gates into the attention output-projection weights and save a standard "
        "Hugging Face checkpoint that transformers or vLLM load with no code of ours. The config records "
        "the gating under `truthprobe_interventions`.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias (default: smollm2-135m-instruct)")
    p.add_argument("--scores", required=True, help="score file (.json, published .npy or cv5_head_metrics.csv)")
    p.add_argument("--alpha", type=float, default=4.5, help="gate strength (default 4.5)")
    p.add_argument("--norm", choices=NORMS, default="centered")
    p.add_argument("--site", choices=SITES, default="o_proj_output")
    p.add_argument("--gate", dest="kind", choices=KINDS, default="truthprobe")
    p.add_argument("--seed", type=int, default=0, help="seed for --gate random")
    p.add_argument("--dtype", default="float32", help="dtype to load and save in (default float32)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    from pathlib import Path

    from ..gating import bake, check_gate_settings
    from ..models import load_model
    from ..scores import TruthScores

    check_gate_settings(args.alpha, args.norm, args.site, args.kind)
    scores = TruthScores.load(args.scores)  # fail on a bad score file before loading the model
    model, helper = load_model(args.model, dtype=args.dtype)
    bake(model, scores, alpha=args.alpha, norm=args.norm, site=args.site, kind=args.kind, seed=args.seed)
    out = Path(args.out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    helper.save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    print(f"baked {model.config._name_or_path} (alpha={args.alpha}, norm={args.norm}, site={args.site}, gate={args.kind}) -> {out}")
    return 0
