"""``truthprobe probe``: Truth Scores for every attention head of a model, written as a score file."""
from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="train per-head truthfulness probes and write a Truth Score file",
        description="Run the model over labelled (context, question, answer) examples, read every attention "
        "head's output at the final answer token, train one logistic-regression probe per head with grouped "
        "k-fold cross-validation, and write the per-head validation accuracy (the Truth Score), precision, "
        "recall, F1 and probe weights to a score file, with a heatmap PNG beside it. Activations are cached "
        "on disk shard by shard: rerunning an interrupted command resumes it.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias (default: smollm2-135m-instruct)")
    p.add_argument("--data", default="halueval",
                   help="'halueval' (embedded HaluEval QA, default), a HaluEval-format .jsonl, or a generic "
                   ".jsonl with context, question, answer, label[, image, group]")
    p.add_argument("--n", type=int, default=292, help="use the first N rows after --offset (default 292; a HaluEval row gives 2 examples)")
    p.add_argument("--offset", type=int, default=0, help="skip this many rows first (keep probing rows out of evaluation)")
    p.add_argument("--out", default=None, help="score file to write (default: scores/<model>[-<condition>].json); the heatmap goes to the same name with .png")
    p.add_argument("--preset", choices=("ours", "paper"), default="ours",
                   help="ours (default): both answers of a HaluEval row, grouped folds, the exact solver; paper: the "
                   "published pipeline (one drawn answer per row, KFold(5, shuffle, 42), the published AdamW trainer, "
                   "one prompt at a time). --seed, --trainer and --batch-size override it")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fold split (default: the preset's, 0 or 42)")
    p.add_argument("--trainer", choices=("exact", "paper", "published"), default=None,
                   help="exact: L2 logistic regression solved to convergence (ours); paper: the published AdamW trainer; "
                   "published: our earlier approximation of it (default: the preset's)")
    p.add_argument("--epochs", type=int, default=200, help="epochs of the published trainer (default 200)")
    p.add_argument("--prompt-format", choices=("auto", "text", "chat"), default="auto",
                   help="text: 'Context:/Question:/Answer:' (published); chat: the chat template; auto: text for LLMs, chat for MLLMs")
    p.add_argument("--condition", choices=("image", "black", "text"), default=None,
                   help="MLLMs: the row's image (default), a black image of its size, or no image")
    p.add_argument("--images", default=None, metavar="DIR", help="MLLMs: folder the rows' 'image' paths are relative to")
    p.add_argument("--batch-size", type=int, default=None, help="examples per forward pass (default: the preset's, 8 or 1)")
    p.add_argument("--padding-side", choices=("right", "left"), default="right", help="padding of batched prompts (default right)")
    p.add_argument("--keep-eos", action="store_true", help="read a trailing EOS token instead of the token before it")
    p.add_argument("--no-shared-prefix", action="store_true",
                   help="run every prompt whole (by default, LLM text prompts run each question's context once and "
                   "its answers on top of its KV cache: the same Truth Scores, about half the tokens)")
    p.add_argument("--float16", action="store_true", help="store activations as float16 (half the cache size)")
    p.add_argument("--cache-dir", default=None, help="activation cache root (default ~/.cache/truthprobe_eval/activations)")
    p.add_argument("--no-cache", action="store_true", help="keep activations in memory only (no resume)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--no-plot", action="store_true", help="do not write the heatmap PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def default_out(model: str, condition: str | None) -> Path:
    name = Path(model.rstrip("/")).name if Path(model).expanduser().exists() else model.split("/")[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"
    return Path("scores") / (f"{name}-{condition}.json" if condition else f"{name}.json")


def run(args: argparse.Namespace) -> int:
    from ..probing.pipeline import run_probing

    if args.no_cache and args.cache_dir:
        from ..probing.pipeline import ProbeSettingsError

        raise ProbeSettingsError("expected at most one of --cache-dir and --no-cache, found both")
    out = Path(args.out) if args.out else default_out(args.model, args.condition)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    run_probing(
        model=args.model, data=args.data, n=args.n, offset=args.offset, preset=args.preset,
        prompt_format=args.prompt_format,
        condition=args.condition, images_dir=args.images, n_folds=args.folds, seed=args.seed,
        trainer=args.trainer, epochs=args.epochs, batch_size=args.batch_size, padding_side=args.padding_side,
        drop_eos=not args.keep_eos, float16=args.float16,
        cache_dir=None if args.no_cache else (args.cache_dir or "auto"), dtype=args.dtype, device=args.device,
        out=out, plot=not args.no_plot, progress=not args.quiet, verbose=True,
        shared_prefix=False if args.no_shared_prefix else None,
    )
    return 0
