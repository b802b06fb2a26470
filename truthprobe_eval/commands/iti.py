"""``truthprobe iti fit``: ITI directions (direction, sigma, probe accuracy per head) from TruthfulQA."""
from __future__ import annotations

import argparse

from ..presets import PRESET_NAMES
from ._options import (add_action, add_device_options, add_truthfulqa_questions, chosen_questions, job_log,
                       log_beside)


def add_parser(subparsers) -> None:
    f = add_action(subparsers, (
        "iti", "ITI: fit truthful directions per head from TruthfulQA",
        "Inference-time intervention (Li et al. 2023). `fit` writes a direction file "
        "for `method=iti,directions=FILE` in lm-eval, VLMEvalKit and the other commands."), (
        "fit", "fit directions on TruthfulQA questions",
        "Per head, at the o_proj input of the last token of 'Q: {question} A: {answer}': a probe accuracy "
        "(it ranks the heads), the mass-mean direction (or the probe's weights) from the chosen questions, and "
        "sigma. --preset ours (default): --half 0/1 is one half of a seeded permutation of the questions, the "
        "grouped k-fold accuracy, sigma from the chosen questions' activations (ddof 0). --preset paper (the "
        "published code): contiguous halves in the CSV's order (--split-seed unused), one 80/20 split of the "
        "chosen questions (seed 42) with a scikit-learn logistic regression per head, sigma (ddof 1) from "
        "'Q: {question} A: {answer} Q: {other question}' over every question (the first --questions N when given). "
        "--half all uses every question."))
    add_truthfulqa_questions(f, "fit on", None)
    f.add_argument("--preset", choices=PRESET_NAMES, default="ours",
                   help="ours (default) or paper: the published split, ranking and sigma")
    f.add_argument("--direction", choices=("mass_mean", "probe"), default="mass_mean")
    f.add_argument("--folds", type=int, default=4, help="probe folds for the accuracies (default 4; preset ours)")
    f.add_argument("--batch-size", type=int, default=16)
    add_device_options(f)
    f.add_argument("--out", required=True, help="direction file to write (.json)")
    f.set_defaults(func=run_fit)


def paper_questions(csv: str, half: str, limit: int | None) -> tuple[list[int], list[int] | None]:
    """Preset ``paper``: (the chosen questions, the questions sigma is taken over). The data set is the CSV's first
    ``limit`` rows (all by default; then sigma's set is ``None``: every row), cut in contiguous halves."""
    from ..probing.iti import question_halves
    from ..tasks.truthfulqa.utils import read_rows

    halves = question_halves(len(read_rows(csv)), limit=limit, preset="paper")
    every = sorted(halves[0] + halves[1])
    return (every if half == "all" else halves[int(half)]), (None if limit is None else every)


def run_fit(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..probing.cache import default_cache_root
    from ..probing.iti import fit_iti

    csv, questions = chosen_questions(args)  # before the model loads
    sigma_questions = None
    if args.preset == "paper":
        questions, sigma_questions = paper_questions(csv, args.half, args.questions)
    with job_log(args, log_beside(args.out), bars_on_screen=True) as log:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
        made = fit_iti(model, tokenizer, questions, csv=csv, direction=args.direction, folds=args.folds,
                       seed=args.split_seed, batch_size=args.batch_size, cache_dir=default_cache_root(),
                       progress=not args.quiet, preset=args.preset, sigma_questions=sigma_questions,
                       meta={"model_source": args.model, "half": args.half, "split_seed": args.split_seed})
        made.save(args.out)
        top = made.top_heads(5)
        log.say(f"ITI directions of {args.model} (preset {args.preset}): {len(questions)} questions, "
                f"{made.meta['n_examples']} answers; best heads (layer.head accuracy): "
                + ", ".join(f"{l}.{h} {made.accuracy[l, h]:.3f}" for l, h in top))
        log.say(f"wrote {args.out} (log: {log_beside(args.out)})")
    return 0
