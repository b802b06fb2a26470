"""``truthprobe ars score``: each head's action-relation sensitivity (ARS) for RVE, as a score file."""
from __future__ import annotations

import argparse

from ._options import add_action, add_device_options


def add_parser(subparsers) -> None:
    s = add_action(subparsers, (
        "ars", "ARS: how much each head's attention to the evidence changes with the text",
        "Action-relation sensitivity (the RVE paper). `score` writes an (L, H) score "
        "file with meta.kind 'ars' for `method=rve,ars=FILE` in VLMEvalKit, lm-eval and the "
        "comparison command."), (
        "score", "score every head on pairs of texts that share their evidence",
        "For each pair (the same image or context, two texts differing in one phrase), "
        "A = the last token's post-softmax attention over the span (the image tokens, or with "
        "--span context the text between --span-start and --span-end), for both texts; per head "
        "ARS = ||A - A'|| / (0.5 (||A|| + ||A'||)), averaged over the pairs. --pairs reads a JSONL "
        "file (image, text, text_swapped, group); --halueval-rows N makes text pairs from HaluEval QA "
        "rows 0..N-1 (the right and the hallucinated answer under the same knowledge)."))
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="JSONL pair file")
    src.add_argument("--halueval-rows", type=int, help="text pairs from the first N HaluEval QA rows")
    s.add_argument("--halueval", default=None, help="HaluEval qa_data.json (default: the shared copy)")
    s.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias (LLM or MLLM)")
    s.add_argument("--span", choices=("image", "context"), default=None,
                   help="image (MLLMs; the default with --pairs) or context (the default with --halueval-rows)")
    s.add_argument("--span-start", help="span=context: the text right before the span (default: RVE's, HaluEval's "
                   "'#Knowledge:')")
    s.add_argument("--span-end", help="span=context: the text right after it (default: RVE's, '#Question#:')")
    add_device_options(s)
    s.add_argument("--out", required=True, help="score file to write (.json); a heatmap goes beside it")
    s.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..plots import plot_heatmap
    from ..probing.ars import ars_scores, halueval_pairs, read_pairs
    from ..probing.data import load_halueval
    from ..spans import context_span, image_span

    pairs = read_pairs(args.pairs) if args.pairs else halueval_pairs(load_halueval(args.halueval, 0, args.halueval_rows))
    span = args.span or ("context" if args.halueval_rows else "image")
    multimodal = any(p.image for p in pairs)
    if span == "image" and not multimodal:
        from ..errors import TruthProbeError

        raise TruthProbeError("--span image: expected pairs with images, found text pairs only; use --span context")
    if multimodal:
        from ..model_adapters.vlmeval_gated import TruthGatedVLM

        vlm = TruthGatedVLM(model_path=args.model, method="none", device=args.device, dtype=args.dtype)
        model, tokenizer = vlm.model, getattr(vlm.processor, "tokenizer", vlm.processor)

        def encode(pair, text):
            message = ([{"type": "image", "value": pair.image}] if pair.image else []) + [{"type": "text", "value": text}]
            return vlm.encode(message)
    else:
        from ..models import load_model

        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)

        def encode(pair, text):
            return tokenizer(text, return_tensors="pt").to(args.device)
    from ..interventions.rve import KNOWLEDGE_END, KNOWLEDGE_START

    find = image_span(model) if span == "image" else context_span(tokenizer, args.span_start or KNOWLEDGE_START,
                                                                   args.span_end or KNOWLEDGE_END)
    scores = ars_scores(model, encode, pairs, find, progress=not args.quiet,
                        meta={"model_source": args.model, "span": span, "pairs": args.pairs or "halueval",
                              "halueval_rows": args.halueval_rows})
    path = scores.save(args.out)
    png = plot_heatmap(scores, Path(path).with_suffix(".png"), title=f"ARS of {args.model} ({len(pairs)} pairs, "
                       f"span {span})")
    top = ", ".join(f"{l}.{h} {v:.3f}" for l, h, v in scores.top_k(5))
    print(f"ARS of {args.model}: {len(pairs)} pairs, span {span}; most sensitive heads (layer.head ARS): {top}")
    print(f"wrote {path} and {png}")
    return 0
