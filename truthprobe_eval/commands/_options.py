"""Options that several ``truthprobe`` subcommands share (not a subcommand itself: the name starts with ``_``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_action(subparsers, group: tuple[str, str, str], action: tuple[str, str, str]) -> argparse.ArgumentParser:
    """``truthprobe GROUP ACTION``: a command group (name, help, description) with its action (name, help,
    description); returns the action's parser."""
    name, help_text, description = group
    parser = subparsers.add_parser(name, help=help_text, description=description)
    actions = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    name, help_text, description = action
    return actions.add_parser(name, help=help_text, description=description)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--quiet`` (no progress bars) and ``--verbose``."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose(parser)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show what lm-eval, transformers and the warnings say, live (always in the job's .log file)")


def job_log(args: argparse.Namespace, path: "str | Path", bars_on_screen: bool = False):
    """The command's ``RunLog``: library output to ``path``, the command's own lines to the screen too."""
    from ..run_log import run_log

    return run_log(path, verbose=getattr(args, "verbose", False), progress=not getattr(args, "quiet", False),
                   bars_on_screen=bars_on_screen)


def log_beside(out: "str | Path") -> Path:
    """Where a command that writes the file ``out`` keeps its log: ``out`` with ``.log``."""
    out = Path(out)
    return out.with_suffix(".log") if out.suffix else out.with_name(out.name + ".log")


def add_truthfulqa_questions(parser: argparse.ArgumentParser, what: str, questions: int | None) -> None:
    """The model and the TruthfulQA questions a command works on: one half of the seeded 2-fold question split (the
    other half stays held out) or all of them, optionally from a random subset of N questions."""
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--truthfulqa-csv", default=None, help="TruthfulQA.csv (default: $TRUTHPROBE_TRUTHFULQA_CSV)")
    parser.add_argument("--half", choices=("0", "1", "all"), default="0", help=f"questions to {what} (default half 0)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 2-fold question split (default 0)")
    parser.add_argument("--questions", type=int, default=questions, help="a seeded random subset of N questions "
                        f"before splitting (default {'all' if questions is None else questions})")


def chosen_questions(args: argparse.Namespace) -> tuple[str, list[int]]:
    """(the CSV, the chosen question rows), checked before any model loads."""
    from ..probing.iti import question_halves
    from ..tasks.truthfulqa.utils import csv_path, read_rows

    csv = str(csv_path(args.truthfulqa_csv))
    halves = question_halves(len(read_rows(csv)), args.split_seed, args.questions)
    return csv, sorted(halves[0] + halves[1]) if args.half == "all" else halves[int(args.half)]


__all__ = ["add_action", "add_device_options", "add_truthfulqa_questions", "chosen_questions"]
