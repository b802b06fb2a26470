"""``truthprobe ablate random|grid|regime``: ablations that run lm-eval's HaluEval judge task and collect the results."""
from __future__ import annotations

import argparse

RANDOM_SEEDS = "0,1,2,3,4"


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {value!r}") from None


def _grid(value: str) -> list[tuple[str, float]]:
    """``centered:2.5,4.5;minmax:0.1`` -> [(centered, 2.5), (centered, 4.5), (minmax, 0.1)]."""
    pairs = []
    for part in value.split(";"):
        norm, sep, alphas = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NORM:ALPHA[,ALPHA...][;NORM:...], found {part!r}")
        try:
            pairs += [(norm.strip(), float(a)) for a in alphas.split(",") if a.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"alpha: expected numbers, found {alphas!r}") from None
    return pairs


def _common(p: argparse.ArgumentParser, offset: int, n: int, out: str) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias (default: smollm2-135m-instruct)")
    p.add_argument("--data", default=None, help="a HaluEval QA .jsonl/.jsonl.gz (default: the embedded copy)")
    p.add_argument("--offset", type=int, default=offset, help=f"first evaluated row (default {offset})")
    p.add_argument("--n", type=int, default=n, help=f"evaluated rows (default {n})")
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--protocol", choices=("truthprobe", "halueval"), default="truthprobe",
                   help="truthprobe: the TruthProbe paper's protocol (default); halueval: HaluEval's own judge")
    p.add_argument("--draw-seed", type=int, choices=(0, 1, 2), default=0, help="answer draw: task <protocol task>_seed<N>")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    p.add_argument("--chat", action="store_true", help="apply the chat template")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate", help="random-gate seeds, alpha/norm grid, probing regime (N x epochs) through lm-eval",
        description="Ablations on HaluEval QA judge rows through lm-eval, one loaded model for all runs. Each writes "
        "ablation.md, ablation.csv, ablation.json, ablation.png and every lm-eval result and per-sample file "
        "(lm_eval/) to --out. Evaluation rows must not overlap the rows the scores were probed on.")
    sub = p.add_subparsers(dest="ablation", metavar="ABLATION", required=True)

    r = sub.add_parser("random", help="TruthProbe vs random gates over seeds (mean and std)",
                       description="The baseline, the Truth-Score gate and a random gate (same alpha and norm) per seed.")
    r.add_argument("--scores", required=True, help="score file (ours, or a published .npy / cv5_head_metrics.csv)")
    r.add_argument("--alpha", type=float, default=2.5)
    r.add_argument("--norm", default="centered")
    r.add_argument("--seeds", type=_ints, default=_ints(RANDOM_SEEDS), help=f"random-gate seeds (default {RANDOM_SEEDS})")
    _common(r, offset=342, n=100, out="runs/ablate-random")
    r.set_defaults(func=run_random)

    g = sub.add_parser("grid", help="alpha and norm on a validation slice",
                       description="The baseline and every gate of the grid; the F1 winner is marked (ties: accuracy).")
    g.add_argument("--scores", required=True, help="score file")
    g.add_argument("--grid", type=_grid, default=None,
                   help="NORM:ALPHA,...;NORM:... (default: the published grid centered:2.5,4.5,6,7.5;minmax:0.1,0.2,0.3)")
    _common(g, offset=292, n=50, out="runs/ablate-grid")
    g.set_defaults(func=run_grid)

    q = sub.add_parser("regime", help="probing rows N x published-trainer epochs",
                       description="Probe HaluEval rows 0..N-1 with the published trainer for every N and epoch count "
                       "(activations extracted once), compare each score map with the largest setting, and evaluate "
                       "each gate on the validation rows.")
    q.add_argument("--sizes", type=_ints, default=_ints("50,146,292"), help="probing rows (default 50,146,292)")
    q.add_argument("--epochs", type=_ints, default=_ints("20,50,200"), help="trainer epochs (default 20,50,200)")
    q.add_argument("--alpha", type=float, default=2.5)
    q.add_argument("--norm", default="centered")
    q.add_argument("--folds", type=int, default=5)
    q.add_argument("--probe-batch-size", type=int, default=8)
    q.add_argument("--no-eval", action="store_true", help="only probe and compare the score maps")
    _common(q, offset=292, n=50, out="runs/ablate-regime")
    q.set_defaults(func=run_regime)


def _setup(args: argparse.Namespace):
    from pathlib import Path

    from ..gate_config import check_gate_settings
    from ..halueval_judge import HaluEvalJudge, JudgeSettings
    from ..models import load_model

    if args.offset < 0 or args.n < 1:
        from ..analysis.ablations import AblationError

        raise AblationError(f"rows: expected --offset >= 0 and --n >= 1, found {args.offset} and {args.n}")
    if getattr(args, "alpha", None) is not None:
        check_gate_settings(args.alpha, args.norm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    settings = JudgeSettings(data=args.data, protocol=args.protocol, draw_seed=args.draw_seed, chat=args.chat, batch_size=args.batch_size,
                             device=args.device)
    return out, model, tokenizer, HaluEvalJudge(model, tokenizer, settings, out)


def _describe(args: argparse.Namespace, judge) -> dict:
    """What every ablation.json records about how it was evaluated."""
    return {"model": args.model, "task": judge.task, "protocol": judge.settings.protocol,
            "draw_seed": judge.settings.draw_seed, "offset": args.offset, "n": args.n}


def _write(out, headers, rows, payload: dict, plot, title: str) -> None:
    import json

    from .._io import atomic_write_text
    from ..analysis import reports

    table = reports.markdown_table(headers, rows)
    reports.write_text(out / "ablation.md", f"# {title}\n\n{table}\n")
    reports.write_csv(out / "ablation.csv", headers, rows)
    atomic_write_text(out / "ablation.json", json.dumps(payload, indent=2, default=str) + "\n")
    png = plot(out / "ablation.png")
    print(f"\n{title}\n\n{table}\n\nwrote {out}/ablation.md, ablation.csv, ablation.json, {png.name} and lm_eval/")


def run_random(args: argparse.Namespace) -> int:
    from ..analysis import ablations as ab
    from ..scores import TruthScores

    scores = TruthScores.load(args.scores)
    ab.check_rows_clear_of_probing(scores, args.offset, args.n)
    out, _, _, judge = _setup(args)
    result = ab.random_gate_ablation(judge, scores, alpha=args.alpha, norm=args.norm, seeds=args.seeds,
                                     offset=args.offset, n=args.n)
    headers, rows = ab.random_ablation_table(result)
    _write(out, headers, rows, {**_describe(args, judge), **result.to_dict()}, lambda p: ab.plot_random_ablation(result, p),
           f"Random-gate ablation: rows {args.offset}-{args.offset + args.n - 1}, {args.norm} alpha {args.alpha:g}, "
           f"{len(args.seeds)} seeds")
    return 0


def run_grid(args: argparse.Namespace) -> int:
    from ..analysis import ablations as ab
    from ..main_job import PUBLISHED_GRID
    from ..scores import TruthScores

    grid = args.grid or list(PUBLISHED_GRID)
    scores = TruthScores.load(args.scores)
    ab.check_rows_clear_of_probing(scores, args.offset, args.n)
    out, _, _, judge = _setup(args)
    result = ab.grid_search(judge, scores, grid=grid, offset=args.offset, n=args.n)
    headers, rows = ab.grid_table(result)
    best = result.best
    _write(out, headers, rows, {**_describe(args, judge), **result.to_dict()}, lambda p: ab.plot_grid(result, p),
           f"Alpha/norm grid on rows {args.offset}-{args.offset + args.n - 1}: chosen {best.gate['norm']}, "
           f"alpha {best.gate['alpha']:g}")
    return 0


def run_regime(args: argparse.Namespace) -> int:
    from ..analysis import ablations as ab

    ab.check_regime_settings(args.sizes, args.epochs, args.offset, args.folds)  # before the model loads
    out, model, tokenizer, judge = _setup(args)
    rows = ab.probing_regime(model, tokenizer, None if args.no_eval else judge, sizes=args.sizes, epochs=args.epochs,
                             alpha=args.alpha, norm=args.norm, offset=args.offset, n=args.n, data=args.data,
                             folds=args.folds, batch_size=args.probe_batch_size, out=out, progress=not args.quiet)
    headers, table = ab.regime_table(rows)
    _write(out, headers, table, {**_describe(args, judge), "rows": [r.flat() for r in rows]}, lambda p: ab.plot_regime(rows, p),
           f"Probing regime: rows {args.sizes} x epochs {args.epochs}"
           + ("" if args.no_eval else f"; gate {args.norm} alpha {args.alpha:g} on rows {args.offset}-{args.offset + args.n - 1}"))
    return 0
