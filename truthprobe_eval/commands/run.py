"""``truthprobe run``: the published LLM experiment end to end (probe, select the gate, evaluate through lm-eval)."""
from __future__ import annotations

import argparse


def _rows(value: str) -> int | None:
    if value.lower() in ("all", "full"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', found {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', found {value!r}")
    return number


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated draw seeds among 0, 1, 2, found {value!r}") from None
    if not seeds or any(s not in (0, 1, 2) for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct draw seeds among 0, 1, 2, found {value!r}")
    return seeds


def _controls(value: str) -> tuple[str, ...]:
    from ..experiments.main_job import CONTROL_KINDS

    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in CONTROL_KINDS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(CONTROL_KINDS)}, found {value!r}")
    return kinds


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="probe, choose the gate on held-out rows, evaluate baseline vs gated through lm-eval, with significance",
        description="The whole published LLM experiment on the embedded defaults (SmolLM2-135M-Instruct, HaluEval "
        "QA): Truth Scores from the first --probe-rows rows; alpha and norm chosen by F1 on the next --val-rows "
        "rows over the published grid (centered 2.5/4.5/6.0/7.5, min-max 0.1/0.2/0.3); then the baseline and the "
        "chosen gate on the following --test-rows rows, with an exact McNemar test, paired bootstrap intervals "
        "and the first-token margin's AUROC. --protocol truthprobe (default) is the TruthProbe paper's protocol "
        "(lm-eval task halueval_truthprobe_seed<N>); --protocol halueval is HaluEval's own few-shot judge "
        "(halueval_qa_seed<N>). The three row ranges never overlap. Prints one table and writes it "
        "(results.md, results.json, results.png) with the score file, its heatmap and every lm-eval result and "
        "per-sample file to --out. --preset paper (default) probes as the published code does (one drawn answer per "
        "row, its trainer and folds, its reply parse); --preset ours uses both answers, grouped folds and the exact "
        "solver. --controls adds, on the test rows, the paper's random gate (three seeds) beside our strength-matched "
        "random gate and the shuffled gate, each tested against the baseline and against TruthProbe. Time: "
        "benchmarks/RESULTS.md.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias (default: smollm2-135m-instruct)")
    p.add_argument("--data", default=None, help="a HaluEval QA .jsonl/.jsonl.gz (default: the embedded copy)")
    p.add_argument("--out", default="runs/truthprobe-run", help="output folder (default runs/truthprobe-run)")
    p.add_argument("--probe-rows", type=int, default=292, help="rows 0..N-1 train the probes (default 292)")
    p.add_argument("--val-rows", type=int, default=50, help="rows after the probing rows that choose alpha and norm (default 50)")
    p.add_argument("--test-rows", type=_rows, default=300, metavar="N|all",
                   help="rows after the validation rows that measure the result (default 300; 'all': every remaining row)")
    p.add_argument("--norm", default=None, help="skip the grid: use this norm (with --alpha)")
    p.add_argument("--alpha", type=float, default=None, help="skip the grid: use this alpha (with --norm)")
    p.add_argument("--scores", default=None, help="use this score file instead of probing")
    p.add_argument("--protocol", choices=("truthprobe", "halueval"), default="truthprobe",
                   help="truthprobe: the TruthProbe paper's prompt and parsing (default); halueval: HaluEval's own judge")
    p.add_argument("--draw-seed", type=int, choices=(0, 1, 2), default=None,
                   help="seeded answer draw: task <protocol task>_seed<N> (default 0)")
    p.add_argument("--seeds", type=_seeds, default=None, metavar="S[,S...]",
                   help="several answer draws on one loaded model, e.g. 0,1,2: mean and spread (the first chooses the gate)")
    p.add_argument("--preset", choices=("paper", "ours"), default="paper",
                   help="paper (default): the published probing pipeline and reply parse; ours: both answers per row, "
                   "grouped folds, the exact solver, the stricter parse")
    p.add_argument("--controls", nargs="?", type=_controls, const="paper_random,random,shuffled", default=(),
                   metavar="KIND[,KIND...]",
                   help="controls on the test rows (alone: paper_random,random,shuffled): paper_random (the paper's "
                   "1 + U[-1,1] redrawn every call, three seeds), paper_inverse (the paper's minmax 1/s), random (ours: "
                   "1 + alpha U[-1,1], strength-matched, fixed), shuffled (ours: the chosen gates permuted per layer)")
    p.add_argument("--control-seed", type=int, default=0, help="first seed of the controls (default 0)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="run every prompt in full (the shared prompt prefix is otherwise computed once per batch)")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    p.add_argument("--chat", action="store_true", help="apply the chat template (lm-eval's --apply_chat_template)")
    p.add_argument("--no-knowledge", action="store_true", help="leave the row's knowledge out of the judge prompt (HaluEval's own prompt)")
    p.add_argument("--folds", type=int, default=5, help="probe cross-validation folds (default 5)")
    p.add_argument("--trainer", choices=("exact", "paper", "published"), default=None,
                   help="probe trainer (default: the preset's, paper or exact)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true",
                   help="show what lm-eval, transformers and the warnings say, live (always in <out>/run.log)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.main_job import PUBLISHED_GRID, MainJobConfig, MainJobError, format_table, run_main_job

    if (args.norm is None) != (args.alpha is None):
        raise MainJobError("--norm and --alpha go together: give both to skip the grid, or neither")
    if args.seeds is not None and args.draw_seed is not None:
        raise MainJobError("--draw-seed and --seeds: give one of them (--seeds 0,1,2 for several draws)")
    seeds = args.seeds or ((0,) if args.draw_seed is None else (args.draw_seed,))
    grid = PUBLISHED_GRID if args.norm is None else ((args.norm, args.alpha),)
    cfg = MainJobConfig(model=args.model, data=args.data, out=args.out, probe_rows=args.probe_rows,
                        val_rows=args.val_rows if args.norm is None else 0, test_rows=args.test_rows, grid=grid,
                        protocol=args.protocol, draw_seeds=seeds, preset=args.preset,
                        controls=_controls(args.controls) if isinstance(args.controls, str) else args.controls,
                        control_seed=args.control_seed, prefix_cache=not args.no_prefix_cache,
                        batch_size=args.batch_size, chat=args.chat,
                        knowledge=not args.no_knowledge, scores=args.scores, folds=args.folds, trainer=args.trainer,
                        device=args.device, dtype=args.dtype, progress=not args.quiet)
    from pathlib import Path

    from ..run_log import run_log

    log_file = Path(args.out) / "run.log"
    with run_log(log_file, verbose=args.verbose, progress=not args.quiet) as log:
        log.say(f"truthprobe run: {args.model} on HaluEval QA ({args.protocol} protocol), preset {args.preset}; "
                f"library output: {log_file}")
        result = run_main_job(cfg, log=log)
        log.say("")
        log.say(format_table(result).rstrip("\n"))
        log.say(f"\nwrote {args.out}/results.md, results.json, results.png, scores.json, scores.png, run.log and "
                f"lm_eval/ ({result.config['seconds']:.0f} s). Next: truthprobe significance, truthprobe leaderboard, "
                "or --controls for the controls.")
    return 0
