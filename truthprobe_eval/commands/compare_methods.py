"""``truthprobe compare-methods``: baseline, TruthProbe, ITI, truth neurons, RVE and their controls on one model."""
from __future__ import annotations

import argparse
from typing import Any

from ._options import add_verbose, job_log


def _settings(value: str) -> dict[str, Any]:
    """``alpha=4.5,norm=centered`` -> dict (values parsed by the method's own parser later)."""
    out = {}
    for part in value.split(","):
        if part.strip():
            name, sep, v = part.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], found {part!r}")
            out[name.strip()] = v.strip()
    return out


def _count(value: str) -> int | None:
    return None if value.lower() == "all" else int(value)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare-methods",
        help="baseline, TruthProbe, ITI, truth neurons and their random controls side by side, with significance",
        description="On one loaded model: TruthProbe (scores probed on HaluEval rows 0..291, or --scores), ITI "
        "(directions fit on TruthfulQA, 2-fold over questions) and truth-neuron suppression (neurons found by "
        "integrated gradients on the other TruthfulQA half) and RVE, with their controls, each named for what it "
        "is: the papers' own ablations (TruthProbe's random and inverse gates, RVE's sensitive-heads-only and "
        "no-denoising) beside ours (strength-matched random and shuffled gates, ITI on random heads / random "
        "directions, random neurons, RVE on random heads, a whole-span boost); --no-controls drops them; on the HaluEval TruthProbe-paper protocol, "
        "TruthfulQA MC1/MC2 and the cross-entropy / KL divergence on neutral text. Each is tested against the "
        "baseline (exact McNemar, Wilcoxon, paired bootstrap intervals). Writes comparison.md, comparison.json, "
        "comparison.png, leaderboard/ (for `truthprobe leaderboard`), the direction and score files and every "
        "lm-eval result to --out.")
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias")
    p.add_argument("--out", default="runs/compare-methods")
    p.add_argument("--truthfulqa-csv", default=None, help="TruthfulQA.csv (default: $TRUTHPROBE_TRUTHFULQA_CSV)")
    p.add_argument("--questions", type=_count, default=100, metavar="N|all",
                   help="TruthfulQA questions, a seeded random subset split in two halves (default 100)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the question split (default 0)")
    p.add_argument("--halueval-offset", type=int, default=342, help="first HaluEval row evaluated (default 342)")
    p.add_argument("--halueval-rows", type=int, default=200, help="HaluEval rows evaluated (default 200)")
    p.add_argument("--neutral-texts", type=int, default=50, help="HaluEval knowledge paragraphs for CE/KL (default 50)")
    p.add_argument("--scores", default=None, help="a TruthProbe score file (default: probe HaluEval rows 0..291)")
    p.add_argument("--preset", choices=("ours", "paper"), default="ours",
                   help="ours (default): both answers per HaluEval row, grouped folds and the exact solver, ITI on "
                   "seeded question halves; paper: the published pipelines (TruthProbe's probing and reply parse; ITI's "
                   "contiguous halves, 80/20 head ranking and sigma from the end-of-question prompts)")
    p.add_argument("--truthprobe-settings", type=_settings, default={"alpha": "4.5", "norm": "centered"},
                   help="TruthProbe's settings (default alpha=4.5,norm=centered)")
    p.add_argument("--iti-settings", type=_settings, default={"k": "48", "alpha": "15"},
                   help="ITI's settings (default k=48,alpha=15, the published ones; also positions=all)")
    p.add_argument("--iti-folds", type=int, default=4, help="folds of ITI's probe accuracies (default 4)")
    p.add_argument("--methods", default="truthprobe,iti,neurons,rve", help="any of truthprobe,iti,neurons,rve (the "
                   "baseline always runs)")
    p.add_argument("--rve-settings", type=_settings, default={"span": "context", "k": "2", "beta": "1", "alpha": "0.05"},
                   help="RVE's settings (default span=context,k=2,beta=1,alpha=0.05; layers: the middle five)")
    p.add_argument("--ars-rows", type=int, default=200, help="HaluEval rows 0..N-1 whose text pairs give ARS (default 200)")
    p.add_argument("--ars", default=None, help="an ARS score file (default: score HaluEval rows 0..--ars-rows - 1)")
    p.add_argument("--neuron-settings", type=_settings, default={"factor": "0"},
                   help="the neuron intervention's settings (default factor=0: suppressed)")
    p.add_argument("--neuron-steps", type=int, default=20, help="integrated-gradients steps (default 20)")
    p.add_argument("--neuron-p", type=float, default=0.05, help="t-test level of the selection (default 0.05)")
    p.add_argument("--neuron-top-n", type=_count, default=None, metavar="N|all",
                   help="keep at most N neurons, by mean attribution (default all that pass)")
    p.add_argument("--benchmarks", default="halueval,truthfulqa,neutral", help="any of halueval,truthfulqa,neutral")
    p.add_argument("--no-controls", action="store_true", help="leave out the random controls")
    p.add_argument("--control-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.method_comparison import ComparisonConfig, format_comparison, run_comparison

    cfg = ComparisonConfig(model=args.model, out=args.out, truthfulqa_csv=args.truthfulqa_csv, questions=args.questions,
                           split_seed=args.split_seed, halueval_offset=args.halueval_offset,
                           halueval_rows=args.halueval_rows, neutral_texts=args.neutral_texts, scores=args.scores,
                           preset=args.preset,
                           truthprobe=args.truthprobe_settings, iti=args.iti_settings, iti_folds=args.iti_folds,
                           methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                           neurons=args.neuron_settings, rve=args.rve_settings, ars_rows=args.ars_rows, ars=args.ars,
                           neuron_find={"steps": args.neuron_steps, "p_threshold": args.neuron_p,
                                        "top_n": args.neuron_top_n},
                           benchmarks=tuple(b.strip() for b in args.benchmarks.split(",") if b.strip()),
                           controls=not args.no_controls, control_seed=args.control_seed, batch_size=args.batch_size,
                           device=args.device, dtype=args.dtype, progress=not args.quiet)
    from pathlib import Path

    with job_log(args, Path(args.out) / "run.log") as log:
        log.say(f"truthprobe compare-methods: {args.model}, methods {args.methods}, preset {args.preset}; library "
                f"output: {Path(args.out) / 'run.log'}")
        result = run_comparison(cfg, log=log)
        log.say("")
        log.say(format_comparison(result).rstrip("\n"))
        log.say(f"\nwrote {args.out}/comparison.md, comparison.json, comparison.png, leaderboard/, run.log and lm_eval/")
    return 0
