"""``truthprobe overlay``: attention of the final query token to the image, top-k vs bottom-k heads."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "overlay",
        help="draw top-k / bottom-k heads' attention to the image over the image (MLLMs)",
        description="For an MLLM: the final query token's attention to the image tokens, relative to a generic "
        "query, for the k highest- and k lowest-scoring heads by Truth Score, drawn over the image as a grid of "
        "panels. Writes overlay.png, overlay_heads.csv and overlay.md to --out.",
    )
    p.add_argument("--model", required=True, help="MLLM checkpoint folder or hub id (loaded with eager attention)")
    p.add_argument("--scores", required=True, help="Truth Score file fitting the MLLM's language model")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--question", required=True, help="the query about the image")
    p.add_argument("--generic", default=None, help='generic query (default "Write a general description of the image.")')
    p.add_argument("--k", type=int, default=4, help="heads per group (default 4)")
    p.add_argument("--mode", choices=["diff", "ratio"], default="diff", help="relative map: difference (default) or ratio")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", help="torch dtype (default float32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..experiments import overlay
    from ..models import load_model
    from ..scores import TruthScores

    scores = TruthScores.load(args.scores)  # a bad score file fails before the model loads
    path = Path(args.image)
    if not path.is_file():
        raise overlay.OverlayError(f"image not found: expected an image file at {path}")
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise overlay.OverlayError(f"image {path}: expected a readable image file ({exc})") from None
    model, processor = load_model(args.model, dtype=args.dtype, device=args.device, attn_implementation="eager")
    if not hasattr(processor, "image_processor"):
        raise overlay.OverlayError(f"{args.model} loaded as a text-only model: overlays need an MLLM with a processor")
    result = overlay.attention_overlay(model, processor, image, scores, args.question, k=args.k,
                                       generic=args.generic or overlay.GENERIC_QUERY, mode=args.mode)
    written = overlay.write_outputs(result, args.out)
    print(written["markdown"].read_text())
    print(f"written to {args.out}: overlay.png, overlay_heads.csv, overlay.md")
    return 0
