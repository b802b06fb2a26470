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


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="probe, choose the gate on held-out rows, evaluate baseline vs gated through lm-eval",
        description="The whole published LLM experiment on the embedded defaults (SmolLM2-135M-Instruct, HaluEval "
        "QA): Truth Scores from the first --probe-rows rows; alpha and norm chosen by F1 on the next --val-rows "
        "rows over the published grid (centered 2.5/4.5/6.0/7.5, min-max 0.1/0.2/0.3); then the baseline and the "
        "chosen gate on the following --test-rows rows with lm-eval's halueval_qa_seed<N> task (HaluEval's judge "
        "protocol). The three row ranges never overlap. Prints one table and writes it (results.md, results.json) "
        "with the score file, its heatmap and every lm-eval result and per-sample file to --out. The defaults take "
        "1,000 judge evaluations (about 35-60 minutes on a 2-core CPU); --test-rows all evaluates every remaining "
        "row (the full set).",
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
    p.add_argument("--draw-seed", type=int, choices=(0, 1, 2), default=0, help="seeded answer draw: task halueval_qa_seed<N> (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    p.add_argument("--chat", action="store_true", help="apply the chat template (lm-eval's --apply_chat_template)")
    p.add_argument("--no-knowledge", action="store_true", help="leave the row's knowledge out of the judge prompt (HaluEval's own prompt)")
    p.add_argument("--folds", type=int, default=5, help="probe cross-validation folds (default 5)")
    p.add_argument("--trainer", choices=("exact", "published"), default="exact", help="probe trainer (default exact)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..main_job import PUBLISHED_GRID, MainJobConfig, MainJobError, format_table, run_main_job

    if (args.norm is None) != (args.alpha is None):
        raise MainJobError("--norm and --alpha go together: give both to skip the grid, or neither")
    grid = PUBLISHED_GRID if args.norm is None else ((args.norm, args.alpha),)
    cfg = MainJobConfig(model=args.model, data=args.data, out=args.out, probe_rows=args.probe_rows,
                        val_rows=args.val_rows if args.norm is None else 0, test_rows=args.test_rows, grid=grid,
                        draw_seed=args.draw_seed, batch_size=args.batch_size, chat=args.chat,
                        knowledge=not args.no_knowledge, scores=args.scores, folds=args.folds, trainer=args.trainer,
                        device=args.device, dtype=args.dtype, progress=not args.quiet)
    result = run_main_job(cfg)
    print()
    print(format_table(result), end="")
    print(f"\nwrote {args.out}/results.md, results.json, scores.json, scores.png and lm_eval/ "
          f"({result.config['seconds']:.0f} s)")
    return 0
