"""The console script, --help on every subcommand, the installed namespace layout, clear loading errors."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from truthprobe_eval import TruthProbeError, load_model
from truthprobe_eval.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> list[list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out = []
    for name, p in sub.choices.items():
        out.append([name])
        for a in p._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                out.extend([name, child] for child in a.choices)
    return out


def test_console_script_lists_subcommands():
    res = subprocess.run(["truthprobe", "--help"], capture_output=True, text=True, check=True)
    for name in ("scores", "bake"):
        assert name in res.stdout


@pytest.mark.parametrize("argv", _subcommands(), ids=lambda a: " ".join(a))
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: truthprobe " + " ".join(argv))


def test_wheel_installs_everything_under_the_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("truthprobe_eval-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top <= {"truthprobe_eval"} | {n for n in top if n.endswith(".pth")}, top
    folders = {"truthprobe_eval": "truthprobe_eval", "probing": "truthprobe_eval/probing",
               "model_adapters": "truthprobe_eval/model_adapters", "tasks": "truthprobe_eval/tasks"}
    expected = [
        f"{installed}/{path.relative_to(REPO / src).as_posix()}"
        for src, installed in folders.items()
        for pattern in ("**/*.py", "**/*.yaml")
        for path in (REPO / src).glob(pattern)
        if "__pycache__" not in path.parts
    ]
    expected += [f"truthprobe_eval/data/{p.name}" for p in (REPO / "truthprobe_eval" / "data").iterdir()]
    missing = sorted(set(expected) - set(names))
    assert not missing, f"source files missing from the wheel: {missing}"


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-model", "a/b/c"])
def test_missing_model_path_is_a_clear_error(name):
    with pytest.raises(TruthProbeError, match="model path not found: expected a folder with a Hugging Face checkpoint"):
        load_model(name)


def test_unknown_arguments_fail_except_for_the_runner_pass_through(capsys):
    """argparse's own parse_known_args: only `truthprobe vlmeval` hands the arguments it does not know on."""
    from truthprobe_eval.cli import build_parser, main

    with pytest.raises(SystemExit):
        main(["leaderboard", "x", "--out", "y", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    args, extras = build_parser().parse_known_args(["vlmeval", "--scores", "s.json", "--model", "m", "--data", "POPE_local"])
    assert args.passes_through and args.scores == "s.json" and extras == ["--model", "m", "--data", "POPE_local"]
