"""The ``truthprobe`` command. Each subcommand is a module in ``truthprobe_eval/commands/`` with an
``add_parser(subparsers)`` function that sets ``func`` on its parser; heavy imports happen inside ``func``."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import TruthProbeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="truthprobe",
        description="Head-level Truth Scores and the family of interventions that steer LLMs and MLLMs with them or beside "
        "them (truthprobe_eval.interventions: every registered method).",
    )
    parser.add_argument("--version", action="version", version=f"truthprobe-eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse's own pass-through: a command that sets ``passes_through`` (vlmeval) gets the arguments it does
    # not know (its runner's) in ``runner_args``; for every other command they are an error, as usual
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "passes_through", False):
        args.runner_args = [a for a in extras if a != "--"]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TruthProbeError as exc:
        print(f"truthprobe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"truthprobe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
