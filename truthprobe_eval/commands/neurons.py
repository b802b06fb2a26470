"""``truthprobe neurons find``: truth neurons by integrated gradients on TruthfulQA, and their map."""
from __future__ import annotations

import argparse

from ._options import (add_action, add_device_options, add_truthfulqa_questions, chosen_questions, job_log,
                       log_beside)


def _count(value: str) -> int | None:
    return None if value.lower() in ("none", "all") else int(value)


def add_parser(subparsers) -> None:
    f = add_action(subparsers, (
        "neurons", "truth neurons: attribute MLP neurons on TruthfulQA, select, map",
        "Truth neurons (Li et al. 2025). `find` writes a neuron score file for "
        "`method=neurons,neurons=FILE` in lm-eval, VLMEvalKit and the other commands."), (
        "find", "attribute and select truth neurons on TruthfulQA questions",
        "Per question (a two-option lettered TruthfulQA prompt), integrated gradients of "
        "p(correct letter) - p(incorrect letter) for every MLP neuron (input of the MLP output "
        "projection) at the last prompt position, from a zero baseline, layer by layer; then a "
        "one-sided one-sample t-test across questions. --half 0/1 takes one half of the 2-fold "
        "question split (the other half stays for evaluation). Writes the score file and a map (.png)."))
    add_truthfulqa_questions(f, "attribute", 100)  # --split-seed also seeds the option order
    f.add_argument("--steps", type=int, default=20, help="integrated-gradients steps m (default 20)")
    f.add_argument("--p", type=float, default=0.05, dest="p_threshold", help="significance level (default 0.05)")
    f.add_argument("--top-n", type=_count, default=None, help="keep at most N neurons, by mean attribution (default: no cap)")
    f.add_argument("--rows-per-pass", type=int, default=300, help="single-token rows per batched pass (memory)")
    f.add_argument("--scores", default=None, help="a Truth Score file: its top heads per layer join the map")
    add_device_options(f)
    f.add_argument("--out", required=True, help="neuron score file to write (.json); the map goes beside it")
    f.set_defaults(func=run_find)


def run_find(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..models import load_model
    from ..neuron_scores import NeuronFileError
    from ..plots import layer_bar, plot_neuron_map
    from ..probing.neurons import find_neurons
    from ..scores import TruthScores

    if not 0 < args.p_threshold <= 1 or args.steps < 1:
        raise NeuronFileError(f"expected --p in (0, 1] and --steps >= 1, found {args.p_threshold} and {args.steps}")
    csv, questions = chosen_questions(args)  # before the model loads
    head_scores = TruthScores.load(args.scores) if args.scores else None
    with job_log(args, log_beside(args.out), bars_on_screen=True) as log:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
        made = find_neurons(model, tokenizer, questions, csv=csv, steps=args.steps, p_threshold=args.p_threshold,
                            top_n=args.top_n, seed=args.split_seed, rows_per_pass=args.rows_per_pass,
                            progress=not args.quiet, meta={"model_source": args.model, "half": args.half,
                                                           "split_seed": args.split_seed})
        path = made.save(args.out)
        png = plot_neuron_map(made, Path(path).with_suffix(".png"), head_scores=head_scores)
        counts = made.layer_counts()
        log.say(f"truth neurons of {args.model}: {made.count} of {made.mean.size} selected from {len(questions)} "
                f"questions (p < {args.p_threshold}{'' if args.top_n is None else f', top {args.top_n}'}; chance alone "
                f"passes {made.meta['expected_by_chance']:.0f}, Benjamini-Hochberg keeps {made.meta['n_bh']}); per "
                f"layer {layer_bar(counts)} (most in layers {', '.join(map(str, counts.argsort()[::-1][:3]))})")
        log.say(f"wrote {path} and {png} (log: {log_beside(args.out)})")
    return 0
