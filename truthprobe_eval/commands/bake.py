"""``truthprobe bake``: fold any bakeable method into the weights and write a standard Hugging Face checkpoint."""
from __future__ import annotations

import argparse


def _assignment(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {value!r}")
    return name.strip(), rest.strip()


def add_parser(subparsers) -> None:
    from ..interventions import DEFAULT_METHOD, methods

    known = methods()
    bakeable = [n for n, c in known.items() if c.can_bake()]
    refused = "; ".join(f"{n}: {c.bake_refusal or 'no weight form'}" for n, c in known.items() if not c.can_bake())
    p = subparsers.add_parser(
        "bake",
        help="write an intervened model as a plain Hugging Face checkpoint",
        description="Fold a method into the weights and save a standard Hugging Face checkpoint that transformers "
        f"or vLLM load with no code of ours (bakeable: {', '.join(bakeable)}"
        + (f"; not: {refused}" if refused else "") + "). The config records the intervention under "
        "`truthprobe_interventions`.")
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub id, local folder or alias (default: smollm2-135m-instruct)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(known), help=f"default {DEFAULT_METHOD}")
    p.add_argument("--set", dest="settings", action="append", type=_assignment, default=[], metavar="NAME=VALUE",
                   help="a setting of the method (repeatable), e.g. --set scores=scores.json --set alpha=4.5")
    p.add_argument("--dtype", default="float32", help="dtype to load and save in (default float32)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    from pathlib import Path

    from ..interventions import build
    from ..models import load_model

    made = build(args.method, **dict(args.settings), apply="bake")  # files read, bakeability checked: before loading
    model, helper = load_model(args.model, dtype=args.dtype)
    made.bake(model)
    out = Path(args.out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    helper.save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    print(f"baked {model.config._name_or_path} ({made.label()}) -> {out}")
    return 0
