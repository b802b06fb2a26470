"""``truthprobe iti fit``: ITI directions (direction, sigma, probe accuracy per head) from TruthfulQA."""
from __future__ import annotations

import argparse

from ._options import add_action, add_device_options, add_truthfulqa_questions, chosen_questions


def add_parser(subparsers) -> None:
    f = add_action(subparsers, (
        "iti", "ITI: fit truthful directions per head from TruthfulQA",
        "Inference-time intervention (Li et al. 2023). `fit` writes a direction file "
        "for `method=iti,directions=FILE` in lm-eval, VLMEvalKit and the other commands."), (
        "fit", "fit directions on TruthfulQA questions",
        "Per head, at the o_proj input of the last token of 'Q: {question} A: {answer}': "
        "the grouped k-fold probe accuracy, the mass-mean direction (or the probe's weights) and sigma, "
        "from the chosen questions only. --half 0/1 takes one half of the published 2-fold split "
        "(the other half is then held out); --half all uses every question."))
    add_truthfulqa_questions(f, "fit on", None)
    f.add_argument("--direction", choices=("mass_mean", "probe"), default="mass_mean")
    f.add_argument("--folds", type=int, default=4, help="probe folds for the accuracies (default 4)")
    f.add_argument("--batch-size", type=int, default=16)
    add_device_options(f)
    f.add_argument("--out", required=True, help="direction file to write (.json)")
    f.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..probing.cache import default_cache_root
    from ..probing.iti import fit_iti

    csv, questions = chosen_questions(args)  # before the model loads
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    made = fit_iti(model, tokenizer, questions, csv=csv, direction=args.direction, folds=args.folds,
                   seed=args.split_seed, batch_size=args.batch_size, cache_dir=default_cache_root(),
                   progress=not args.quiet, meta={"model_source": args.model, "half": args.half,
                                                  "split_seed": args.split_seed})
    made.save(args.out)
    top = made.top_heads(5)
    print(f"ITI directions of {args.model}: {len(questions)} questions, {made.meta['n_examples']} answers; "
          f"best heads (layer.head accuracy): " + ", ".join(f"{l}.{h} {made.accuracy[l, h]:.3f}" for l, h in top))
    print(f"wrote {args.out}")
    return 0
