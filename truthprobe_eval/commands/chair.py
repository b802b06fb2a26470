"""``truthprobe chair CAPTIONS --coco ANNOTATIONS_DIR``: CHAIR object hallucination of image captions."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chair",
        help="CHAIR object hallucination of captions against COCO annotations",
        description="Score image captions with CHAIR (Rohrbach et al. 2018): CHAIRs (share of captions with a "
        "hallucinated object), CHAIRi (hallucinated / all object mentions), recall of ground-truth objects, "
        "and average length in words. Ground truth comes from COCO's instances_<split>.json and "
        "captions_<split>.json; the parsed ground truth is cached. Needs NLTK data (punkt_tab, "
        "averaged_perceptron_tagger_eng, wordnet) under NLTK_DATA.",
    )
    p.add_argument("captions", help='caption file: a JSON list or JSONL of {"image_id": int, "caption": str}')
    p.add_argument("--coco", required=True, metavar="ANNOTATIONS_DIR",
                   help="folder with COCO instances_<split>.json and captions_<split>.json (all splits there are used)")
    p.add_argument("--out", metavar="JSON", help="write CHAIRs, CHAIRi, recall, len and per_caption details here")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR",
                       help="ground-truth cache folder (default $TRUTHPROBE_CACHE/chair, ~/.cache/truthprobe_eval/chair)")
    cache.add_argument("--no-cache", action="store_true", help="build the ground truth without reading or writing the cache")
    p.add_argument("--skip-unknown-images", action="store_true",
                   help="count captions of images missing from the annotations as skipped (default: error)")
    p.add_argument("--synonyms", metavar="TXT", help="another synonym list in the CHAIR format (default: the packaged one)")
    p.set_defaults(func=run)


def format_table(result: dict) -> str:
    rows = [
        ("CHAIRs", f"{100 * result['CHAIRs']:.2f}%"),
        ("CHAIRi", f"{100 * result['CHAIRi']:.2f}%"),
        ("recall", f"{100 * result['recall']:.2f}%"),
        ("len", f"{result['len']:.2f} words"),
    ]
    lines = [f"{'metric':<8} {'value':>12}"]
    lines += [f"{name:<8} {value:>12}" for name, value in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..tasks.chair import CHAIREvaluator, read_captions

    records = read_captions(args.captions)  # bad caption files fail before the ground truth is built
    evaluator = CHAIREvaluator.from_coco(
        args.coco, args.cache_dir, use_cache=not args.no_cache, synonyms=args.synonyms
    )
    result = evaluator.score(records, skip_unknown_images=args.skip_unknown_images)
    info = evaluator.info
    result["annotations"] = {k: info[k] for k in ("annotations_dir", "splits", "n_images", "cache") if k in info}

    print(
        f"CHAIR on {result['n_captions']} captions of {args.captions} "
        f"(COCO {', '.join(info.get('splits', []))}: {info.get('n_images')} images; "
        f"ground truth {'from cache' if info.get('cache') == 'hit' else 'built'} in {info.get('seconds', 0):.2f} s)"
    )
    print(format_table(result))
    print(
        f"{result['n_hallucinated_captions']} of {result['n_captions']} captions hallucinate; "
        f"{result['n_hallucinated_mentions']} of {result['n_object_mentions']} object mentions are hallucinated"
    )
    skipped = {k: v for k, v in result["skipped"].items() if v}
    if skipped:
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
        indices = ", ".join(str(e["index"]) for e in result["skipped_entries"][:10])
        more = " ..." if len(result["skipped_entries"]) > 10 else ""
        print(f"skipped {sum(skipped.values())} of {result['n_entries']} entries: {parts} (entries {indices}{more})",
              file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(f"written to {args.out}")
    return 0
