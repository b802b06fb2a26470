"""``truthprobe ablate random|grid|regime``: ablations that run lm-eval's HaluEval judge task and collect the results.

``random`` and ``grid`` take any registered method (``--method``, settings with ``--set NAME=VALUE``), e.g.
``truthprobe ablate grid --method iti --set directions=iti.json --vary alpha=5,10,15 --vary k=16,48``; a method's
controls and its published grid (``selection_grid``) are the class's. ``regime`` is TruthProbe's own (probing rows x
epochs of its trainer).
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from ._options import add_verbose, job_log

RANDOM_SEEDS = "0,1,2,3,4"


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {value!r}") from None


def _assignment(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {value!r}")
    return name.strip(), rest.strip()


def _method_options(p: argparse.ArgumentParser) -> None:
    from ..interventions import DEFAULT_METHOD, methods

    p.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(methods()),
                   help=f"intervention method (default {DEFAULT_METHOD})")
    p.add_argument("--set", dest="settings", action="append", type=_assignment, default=[], metavar="NAME=VALUE",
                   help="any setting of the method, e.g. --set scores=scores.json --set alpha=2.5, or "
                   "--set directions=iti.json --set k=48 (repeatable); unset ones take the method's defaults")


def _intervention(args: argparse.Namespace):
    """The method and its settings from the command line, validated (files read) before any model loads."""
    from ..interventions import build

    return build(args.method, **dict(args.settings))


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
    add_verbose(p)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate", help="a method vs its random controls, a grid over any method's settings, probing regime (N x epochs)",
        description="Ablations on HaluEval QA judge rows through lm-eval, one loaded model for all runs. Each writes "
        "ablation.md, ablation.csv, ablation.json, ablation.png and every lm-eval result and per-sample file "
        "(lm_eval/) to --out. Evaluation rows must not overlap the rows the scores were probed on.")
    sub = p.add_subparsers(dest="ablation", metavar="ABLATION", required=True)

    r = sub.add_parser("random", help="a method vs its random control over seeds (mean and std)",
                       description="The baseline, the method and one of its controls (the method's own: TruthProbe's "
                       "random gates of the same alpha and norm, ITI's random heads or directions, ...) once per seed.")
    _method_options(r)
    r.add_argument("--control", help="the method's control (default: the first it declares)")
    r.add_argument("--seeds", type=_ints, default=_ints(RANDOM_SEEDS), help=f"control seeds (default {RANDOM_SEEDS})")
    _common(r, offset=342, n=100, out="runs/ablate-random")
    r.set_defaults(func=run_random)

    g = sub.add_parser("grid", help="any method's settings on a validation slice",
                       description="The baseline and the method under every grid point; the F1 winner is marked (ties: "
                       "accuracy, then grid order).")
    _method_options(g)
    g.add_argument("--vary", action="append", type=_assignment, default=[], metavar="NAME=V1,V2",
                   help="a setting and its values; several --vary give every combination (default: the method's "
                   "published grid, where it declares one: TruthProbe's centered 2.5-7.5 and minmax 0.1-0.3)")
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


def _setup(args: argparse.Namespace, log=print):

    from ..experiments.halueval_judge import HaluEvalJudge, JudgeSettings
    from ..gate_config import check_gate_settings
    from ..models import load_model

    if args.offset < 0 or args.n < 1:
        from ..experiments.ablations import AblationError

        raise AblationError(f"rows: expected --offset >= 0 and --n >= 1, found {args.offset} and {args.n}")
    if getattr(args, "method", None) is None and getattr(args, "alpha", None) is not None:
        check_gate_settings(args.alpha, args.norm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    settings = JudgeSettings(data=args.data, protocol=args.protocol, draw_seed=args.draw_seed, chat=args.chat, batch_size=args.batch_size,
                             device=args.device)
    return out, model, tokenizer, HaluEvalJudge(model, tokenizer, settings, out, log)


def _describe(args: argparse.Namespace, judge) -> dict:
    """What every ablation.json records about how it was evaluated."""
    return {"model": args.model, "task": judge.task, "protocol": judge.settings.protocol,
            "draw_seed": judge.settings.draw_seed, "offset": args.offset, "n": args.n}


def _write(out, headers, rows, payload: dict, plot, title: str, log: Any = None) -> None:
    import json

    from .._io import atomic_write_text
    from ..analysis import reports

    table = reports.markdown_table(headers, rows)
    reports.write_text(out / "ablation.md", f"# {title}\n\n{table}\n")
    reports.write_csv(out / "ablation.csv", headers, rows)
    from ..interventions import relative_descriptions

    atomic_write_text(out / "ablation.json", json.dumps(relative_descriptions(payload, out), indent=2, default=str) + "\n")
    png = plot(out / "ablation.png")
    say = getattr(log, "say", print)
    say(f"\n{title}\n\n{table}\n\nwrote {out}/ablation.md, ablation.csv, ablation.json, {png.name} and lm_eval/")


def run_random(args: argparse.Namespace) -> int:
    from ..experiments import ablations as ab

    made = _intervention(args)
    control = args.control or next(iter(made.controls), None)
    if control is None:
        from ..errors import InterventionError

        raise InterventionError(f"method {made.name!r} has no random control")
    made.control(control, 0)  # a bad control fails before the model loads
    ab._check_clear(made, args.offset, args.n)
    with job_log(args, Path(args.out) / "run.log", bars_on_screen=False) as log:
        out, _, _, judge = _setup(args, log.say)
        result = ab.random_control_ablation(judge, made, control=control, seeds=args.seeds, offset=args.offset, n=args.n)
        headers, rows = ab.random_ablation_table(result)
        _write(out, headers, rows, {**_describe(args, judge), **result.to_dict()}, lambda p: ab.plot_random_ablation(result, p),
               f"Random-control ablation: rows {args.offset}-{args.offset + args.n - 1}, {made.label()} vs {control}, "
               f"{len(args.seeds)} seeds", log=log)
    return 0


def _grid_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ..interventions import method_class

    if args.vary:
        names = [name for name, _ in args.vary]
        values = [[v.strip() for v in spec.split(",") if v.strip()] for _, spec in args.vary]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]
    grid = method_class(args.method).selection_grid
    if not grid:
        raise argparse.ArgumentTypeError(f"--vary: method {args.method!r} declares no grid of its own; give the "
                                         "settings to vary")
    return [dict(point) for point in grid]


def run_grid(args: argparse.Namespace) -> int:
    from ..experiments import ablations as ab

    made = _intervention(args)
    points = _grid_points(args)
    for point in points:
        made.with_settings(**point)  # every point is checked before the model loads
    ab._check_clear(made, args.offset, args.n)
    with job_log(args, Path(args.out) / "run.log", bars_on_screen=False) as log:
        out, _, _, judge = _setup(args, log.say)
        result = ab.grid_search(judge, made, grid=points, offset=args.offset, n=args.n)
        headers, rows = ab.grid_table(result)
        best = result.best
        chosen = ", ".join(f"{k} {best.intervention.get(k)}" for k in result.keys)
        _write(out, headers, rows, {**_describe(args, judge), **result.to_dict()}, lambda p: ab.plot_grid(result, p),
               f"{made.name} grid on rows {args.offset}-{args.offset + args.n - 1}: chosen {chosen}", log=log)
    return 0


def run_regime(args: argparse.Namespace) -> int:
    from ..experiments import ablations as ab

    ab.check_regime_settings(args.sizes, args.epochs, args.offset, args.folds)  # before the model loads
    with job_log(args, Path(args.out) / "run.log", bars_on_screen=False) as log:
        out, model, tokenizer, judge = _setup(args, log.say)
        rows = ab.probing_regime(model, tokenizer, None if args.no_eval else judge, sizes=args.sizes, epochs=args.epochs,
                                 alpha=args.alpha, norm=args.norm, offset=args.offset, n=args.n, data=args.data,
                                 folds=args.folds, batch_size=args.probe_batch_size, out=out, progress=not args.quiet)
        headers, table = ab.regime_table(rows)
        _write(out, headers, table, {**_describe(args, judge), "rows": [r.flat() for r in rows]}, lambda p: ab.plot_regime(rows, p),
               f"Probing regime: rows {args.sizes} x epochs {args.epochs}"
               + ("" if args.no_eval else f"; gate {args.norm} alpha {args.alpha:g} on rows {args.offset}-{args.offset + args.n - 1}"), log=log)
    return 0
