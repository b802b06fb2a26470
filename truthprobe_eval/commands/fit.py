"""``truthprobe fit METHOD --out FILE``: make the file a method reads (Truth Scores, directions, vectors, ...).

Any registered method with an artifact: the method's own ``fit`` runs with its fit settings (``--set NAME=VALUE``)
on the data it declares (HaluEval rows, or TruthfulQA questions). The dedicated commands (``truthprobe probe``,
``iti fit``, ``neurons find``, ``ars score``) stay, with every option of their own.
"""
from __future__ import annotations

import argparse


def _assignment(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {value!r}")
    return name.strip(), rest.strip()


def _questions(value: str) -> list[int] | None:
    """``all``, ``N`` (the first N) or ``A-B`` (inclusive)."""
    if value == "all":
        return None
    try:
        if "-" in value:
            a, b = value.split("-", 1)
            return list(range(int(a), int(b) + 1))
        return list(range(int(value)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, N or A-B, found {value!r}") from None


def add_parser(subparsers) -> None:
    from ..interventions import methods

    fittable = {name: cls for name, cls in methods().items() if cls.artifact}
    listing = "; ".join(
        f"{name} ({cls.fit_data}; writes {cls.artifact}=FILE; fit settings: "
        + (", ".join(f"{q.name}={q.default}" for q in cls.fit_params) or "none") + ")"
        for name, cls in fittable.items())
    p = subparsers.add_parser(
        "fit", help="make the file a method reads (any method with one)",
        description="Fit a method's artifact and write it to --out: " + listing + ". HaluEval methods read rows "
        "0..rows-1; TruthfulQA methods read --questions.")
    p.add_argument("method", choices=sorted(fittable), help="the method")
    p.add_argument("--out", required=True, help="the file to write (.json)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias")
    p.add_argument("--set", dest="settings", action="append", type=_assignment, default=[], metavar="NAME=VALUE",
                   help="a fit setting (repeatable), e.g. --set rows=100")
    p.add_argument("--preset", choices=("ours", "paper"), default="ours", help="ours (default) or paper")
    p.add_argument("--questions", type=_questions, default=None, metavar="all|N|A-B",
                   help="TruthfulQA questions to fit on (default all)")
    p.add_argument("--truthfulqa-csv", default=None, help="TruthfulQA.csv (default: $TRUTHPROBE_TRUTHFULQA_CSV)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fits' own random draws (default 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..interventions import FitData, method_class
    from ..models import load_model

    cls = method_class(args.method)
    ours, fit = cls.split_settings(dict(args.settings))
    if ours:
        raise cls.error(f"--set: {', '.join(sorted(ours))} are settings of the intervention, not of its fit; "
                        f"fit settings of {args.method}: {', '.join(q.name for q in cls.fit_params) or 'none'}")
    out = Path(args.out)
    cls.check_fit(fit, None)
    model, helper = load_model(args.model, dtype=args.dtype, device=args.device)
    data = FitData(model_name=args.model, out=out.parent, file=out, questions=args.questions,
                   truthfulqa_csv=args.truthfulqa_csv, preset=args.preset, split_seed=args.split_seed,
                   progress=not args.quiet, device=args.device, log=print)
    written = cls.fit(model, helper, data, **fit)
    print(f"wrote {written} ({cls.title}: use it as {args.method} {cls.artifact}={written})")
    return 0
