"""``truthprobe ars score``: each head's action-relation sensitivity (ARS) for RVE, as a score file.
``truthprobe ars knockout``: the RVE paper's check of ARS: zero the top-K ARS heads, and K random heads, and
compare the HaluEval judge's accuracy drops (``analysis/knockout.py``)."""
from __future__ import annotations

import argparse

from ._options import add_device_options, job_log, log_beside


def add_parser(subparsers) -> None:
    group = subparsers.add_parser(
        "ars", help="ARS: how much each head's attention to the evidence changes with the text",
        description="Action-relation sensitivity (the RVE paper). `score` writes an (L, H) score "
        "file with meta.kind 'ars' for `method=rve,ars=FILE` in VLMEvalKit, lm-eval and the "
        "comparison command; `knockout` checks the ranking by zeroing the top-K ARS heads against K random heads.")
    actions = group.add_subparsers(dest="ars_command", metavar="COMMAND", required=True)
    s = actions.add_parser(
        "score", help="score every head on pairs of texts that share their evidence",
        description="For each pair (the same image or context, two texts differing in one phrase), "
        "A = the last token's post-softmax attention over the span (the image tokens, or with "
        "--span context the text between --span-start and --span-end), for both texts; per head "
        "ARS = ||A - A'|| / (0.5 (||A|| + ||A'||)), averaged over the pairs. --pairs reads a JSONL "
        "file (image, text, text_swapped, group); --halueval-rows N makes text pairs from HaluEval QA "
        "rows 0..N-1 (the right and the hallucinated answer under the same knowledge).")
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

    from .ablate import _common

    k = actions.add_parser(
        "knockout", help="zero the top-K ARS heads vs K random heads; the HaluEval judge's accuracy drop",
        description="The RVE paper's validation of ARS on the HaluEval QA judge task (lm-eval, one loaded model): "
        "the baseline, the top-K heads of the ARS map zeroed, and --draws draws of K random heads zeroed (seeds "
        "--seed, --seed + 1, ...). A head is zeroed at the output projection's input (its true output). By default "
        "the top-K and the random heads come from every head of the model; --layers restricts both to some layers "
        "(e.g. RVE's edited ones). Writes knockout.json, knockout.md and lm-eval's result and per-sample files "
        "(lm_eval/) to --out. Evaluation rows must not overlap the HaluEval rows ARS was scored on.")
    k.add_argument("--ars", required=True, help="ARS score file (truthprobe ars score)")
    k.add_argument("--k", type=int, default=10, help="heads zeroed per run (default 10)")
    k.add_argument("--draws", type=int, default=5, help="random draws of K heads (default 5)")
    k.add_argument("--seed", type=int, default=0, help="seed of the first random draw (default 0)")
    k.add_argument("--layers", default=None, help="the pool: only heads of these layers (N, A-B or a comma list; "
                   "default every layer)")
    k.add_argument("--metric", default="acc", help="the judge metric whose drop is reported (default acc)")
    _common(k, offset=342, n=100, out="runs/ars-knockout")
    k.set_defaults(func=run_knockout)


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
    with job_log(args, log_beside(args.out), bars_on_screen=True) as log:
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
        log.say(f"ARS of {args.model}: {len(pairs)} pairs, span {span}; most sensitive heads (layer.head ARS): {top}")
        log.say(f"wrote {path} and {png}")
    return 0


def _check_rows_clear_of_ars(meta: dict, offset: int, n: int) -> None:
    """Refuse evaluation rows among the HaluEval rows the ARS pairs were made of (``ars score --halueval-rows N``:
    rows 0..N-1)."""
    from ..analysis.knockout import KnockoutError

    used = meta.get("halueval_rows")
    if meta.get("pairs") == "halueval" and isinstance(used, int) and offset < used:
        raise KnockoutError(f"evaluation rows {offset}-{offset + n - 1} overlap the HaluEval rows ARS was scored on "
                            f"(0-{used - 1}); start at --offset {used} or later")


def run_knockout(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .._io import atomic_write_text
    from ..analysis import reports
    from ..analysis.knockout import KnockoutError, head_knockout, head_pool, top_heads
    from ..experiments.halueval_judge import METRICS
    from ..interventions.rve import parse_layers
    from ..scores import TruthScores
    from .ablate import _describe, _setup

    scores = TruthScores.load(args.ars)  # every setting is checked before the model loads
    if scores.meta.get("kind") != "ars":
        raise KnockoutError(f"--ars: expected a score file with meta.kind 'ars' (truthprobe ars score), found "
                            f"{scores.meta.get('kind')!r} in {args.ars}")
    if args.metric not in METRICS:
        raise KnockoutError(f"--metric: expected one of {', '.join(METRICS)}, found {args.metric!r}")
    if args.draws < 1:
        raise KnockoutError(f"--draws: expected at least 1, found {args.draws}")
    layers = parse_layers(args.layers, scores.num_layers) if args.layers else None
    head_pool(scores.shape, layers)
    top_heads(scores.values, args.k, layers)
    _check_rows_clear_of_ars(scores.meta, args.offset, args.n)
    with job_log(args, Path(args.out) / "run.log", bars_on_screen=False) as log:
        out, model, _, judge = _setup(args)

        def evaluate(name, intervention):
            return judge(name, "knockout", args.offset, args.n, intervention).metrics

        result = head_knockout(model, scores, evaluate, k=args.k, draws=args.draws, seed=args.seed, layers=layers,
                               metric=args.metric, log=log.say)
        title = (f"Head knockout on HaluEval rows {args.offset}-{args.offset + args.n - 1}: top-{args.k} ARS heads vs "
                 f"{args.k} random heads ({result.pool}), {args.draws} draws")
        text = result.markdown(title)
        reports.write_text(out / "knockout.md", text)
        payload = {**_describe(args, judge), "ars": str(args.ars), **result.to_dict()}
        atomic_write_text(out / "knockout.json", json.dumps(payload, indent=2, default=str) + "\n")
        log.say(f"\n{text}\nwrote {out}/knockout.md, knockout.json and lm_eval/")
    return 0
