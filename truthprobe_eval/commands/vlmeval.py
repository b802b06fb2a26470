"""``truthprobe vlmeval ...``: VLMEvalKit's own runner with the gated models and offline data sets registered.

Every argument this command does not define goes to VLMEvalKit's ``run.py`` unchanged (``--model``, ``--data``,
``--config``, ``--work-dir``, ``--mode``, ``--limit``, ``--reuse``, ...). The options below set the
``TRUTHPROBE_*`` environment variables that the gated models and local data sets read.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# option dest -> environment variable
GATE_OPTIONS = {
    "method": "TRUTHPROBE_METHOD",
    "method_args": "TRUTHPROBE_METHOD_ARGS",
    "scores": "TRUTHPROBE_SCORES",
    "alpha": "TRUTHPROBE_ALPHA",
    "norm": "TRUTHPROBE_NORM",
    "site": "TRUTHPROBE_SITE",
    "gate": "TRUTHPROBE_GATE",
    "seed": "TRUTHPROBE_SEED",
    "apply": "TRUTHPROBE_APPLY",
    "hf_model": "TRUTHPROBE_MODEL_PATH",
    "dtype": "TRUTHPROBE_DTYPE",
    "device": "TRUTHPROBE_DEVICE",
    "max_new_tokens": "TRUTHPROBE_MAX_NEW_TOKENS",
}
DATA_OPTIONS = {
    "pope_dir": "TRUTHPROBE_POPE_DIR",
    "pope_limit": "TRUTHPROBE_POPE_LIMIT",
    "coco_images": "TRUTHPROBE_COCO_IMAGES",
    "coco_annotations": "TRUTHPROBE_COCO_ANNOTATIONS",
    "chair_image_list": "TRUTHPROBE_CHAIR_IMAGE_LIST",
    "chair_n_images": "TRUTHPROBE_CHAIR_N_IMAGES",
    "gqa_questions": "TRUTHPROBE_GQA_QUESTIONS",
    "gqa_images": "TRUTHPROBE_GQA_IMAGES",
    "omnimedvqa_dir": "TRUTHPROBE_OMNIMEDVQA_DIR",
    "omnimedvqa_subsets": "TRUTHPROBE_OMNIMEDVQA_SUBSETS",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "vlmeval",
        help="run VLMEvalKit with TruthProbe-gated MLLMs and the offline POPE/CHAIR/GQA/OmniMedVQA sets",
        description="Register the gated models (llava_v1.5_7b_truthprobe, Qwen2-VL-7B-Instruct_truthprobe, ..., "
        "class TruthGatedVLM for --config) and the local data sets (POPE_local, POPE_aokvqa_local, POPE_gqa_local, "
        "CHAIR_local, GQA_local, OmniMedVQA_local) with VLMEvalKit, then run its runner (vlmeval/run.py) with "
        "every other argument, e.g. `truthprobe vlmeval --scores vicuna.json --alpha 4.5 --model "
        "llava_v1.5_7b_truthprobe --data POPE_local --work-dir out`. Options set TRUTHPROBE_* environment "
        "variables; a JSON --config may give the same settings as keys. See docs/vlmeval.md.",
    )
    p.set_defaults(passes_through=True)  # the arguments we do not know are the runner's (cli.main keeps them)
    p.allow_abbrev = False  # never mistake a runner option (--mode) for a prefix of ours
    g = p.add_argument_group("intervention (environment: TRUTHPROBE_METHOD, TRUTHPROBE_SCORES, TRUTHPROBE_ALPHA, ...)")
    g.add_argument("--method", help="truthprobe (default), iti, neurons, rve or none")
    g.add_argument("--method-args", help="any method's settings, e.g. 'directions=iti.json,k=48,alpha=15' or 'ars=ars.json,layers=14'")
    g.add_argument("--scores", help="score file: probed on the base LLM (transfer) or on the MLLM")
    g.add_argument("--alpha", help="gate strength (default 4.5)")
    g.add_argument("--norm", help="centered (default), minmax or raw")
    g.add_argument("--site", help="o_proj_output (default) or o_proj_input")
    g.add_argument("--gate", help="truthprobe (default), random, inverse or none (the ungated baseline)")
    g.add_argument("--seed", help="seed of --gate random")
    g.add_argument("--apply", help="hook (default) or bake")
    g.add_argument("--hf-model", help="checkpoint (hub id or folder) for the model name given to --model")
    g.add_argument("--dtype", help="auto (default), float32, bfloat16, float16")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--max-new-tokens", help="generation limit (default 512; CHAIR_local sets its own, 64)")
    d = p.add_argument_group("local data sets")
    d.add_argument("--pope-dir", help="folder with coco_pope_{random,popular,adversarial}.json")
    d.add_argument("--pope-limit", help="questions sampled per POPE split (default: all)")
    d.add_argument("--coco-images", help="COCO val2014 image folder (POPE_local, CHAIR_local)")
    d.add_argument("--coco-annotations", help="folder with instances_val2014.json and captions_val2014.json (CHAIR)")
    d.add_argument("--chair-image-list", help="text file of COCO image ids for CHAIR (default: a seeded sample)")
    d.add_argument("--chair-n-images", help="CHAIR sample size (default 500)")
    d.add_argument("--gqa-questions", help="GQA testdev_balanced_questions.json")
    d.add_argument("--gqa-images", help="GQA image folder")
    d.add_argument("--omnimedvqa-dir", help="OmniMedVQA folder (QA_information/, Images/)")
    d.add_argument("--omnimedvqa-subsets", help="comma-separated QA file names, e.g. 'SARS-CoV-2 CT-scan'")
    p.add_argument("--list", action="store_true", help="print the registered model and data set names, then exit")
    p.add_argument("--runner-help", action="store_true", help="print VLMEvalKit's own runner help, then exit")
    p.set_defaults(func=run)


def _runner_values(argv: list[str]) -> dict:
    """The few runner options this command checks before starting (model names, config, work dir)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model", nargs="+", default=[])
    parser.add_argument("--config")
    parser.add_argument("--work-dir", default="./outputs")
    parser.add_argument("--use-vllm", action="store_true")
    known, _ = parser.parse_known_args(argv)
    return vars(known)


def _models_to_check(values: dict) -> list[tuple[str, dict, str | None]]:
    """(name, explicit settings, default checkpoint) of each gated model the run will build."""
    from ..errors import TruthProbeError
    from ..model_adapters.vlmeval_registration import MODEL_CLASS_NAME, MODELS

    found = []
    if values["config"]:
        try:
            config = json.loads(Path(values["config"]).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TruthProbeError(f"--config: expected a readable JSON file, found: {exc}") from None
        for name, entry in (config.get("model") or {}).items():
            if isinstance(entry, dict) and entry.get("class") == MODEL_CLASS_NAME:
                found.append((name, {k: v for k, v in entry.items() if k != "class"}, None))
            elif name in MODELS and not entry:
                found.append((name, {}, MODELS[name]))
    for name in values["model"]:
        if name in MODELS:
            found.append((name, {}, MODELS[name]))
    return found


def _interventions(values: dict) -> dict[str, dict]:
    """Model name -> its checkpoint and the ``describe()`` of its intervention, each checked against its config before
    VLMEvalKit starts (it would only log a failure and go on)."""
    from ..errors import TruthProbeError
    from ..model_adapters.vlmeval_gated import ENV, check_fits_config, resolve_intervention

    checked = {}
    for name, explicit, default_path in _models_to_check(values):
        made = resolve_intervention(explicit)
        path = explicit.get("model_path") or os.environ.get(ENV["model_path"]) or default_path
        if not path:
            raise TruthProbeError(f"{name}: expected a checkpoint (--hf-model, {ENV['model_path']} or the config's model_path), found none")
        check_fits_config(str(path), made)
        checked[name] = {"model": str(path), "intervention": made.describe()}
    return checked


INTERVENTION_FILE = "intervention.json"


def write_descriptions(work_dir: str, described: dict[str, dict]) -> list[Path]:
    """``<work dir>/<model>/intervention.json``: what each model ran with, for the leaderboard to read."""
    from .._io import atomic_write_text

    written = []
    for name, description in described.items():
        folder = Path(os.environ.get("MMEVAL_ROOT", work_dir)) / name
        if folder.is_dir():
            written.append(atomic_write_text(folder / INTERVENTION_FILE, json.dumps(description, indent=2) + "\n"))
    return written


def _failures(work_dir: str, model_names: list[str]) -> list[str]:
    out = []
    for name in model_names:
        status = Path(os.environ.get("MMEVAL_ROOT", work_dir)) / name / "status.json"
        if not status.is_file():
            continue
        try:
            datasets = json.loads(status.read_text(encoding="utf-8")).get("datasets", {})
        except (OSError, json.JSONDecodeError):
            continue
        for dataset, info in datasets.items():
            if isinstance(info, dict) and info.get("error_message"):
                out.append(f"{name} x {dataset}: {info['error_message']}")
    return out


def run(args: argparse.Namespace) -> int:
    given = {env: str(getattr(args, dest)) for dest, env in {**GATE_OPTIONS, **DATA_OPTIONS}.items()
             if getattr(args, dest, None) is not None}
    previous = {env: os.environ.get(env) for env in given}
    os.environ.update(given)
    try:
        return _run(args)
    finally:  # an in-process caller gets its environment back
        for env, value in previous.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


def _run(args: argparse.Namespace) -> int:
    from ..errors import TruthProbeError

    runner_args = list(args.runner_args)

    from ..model_adapters.vlmeval_registration import MODELS, dataset_names, keep_grad_mode, register

    if args.list:
        print("models (--model):", " ".join(MODELS))
        print("model class (--config):", "TruthGatedVLM")
        print("data sets (--data):", " ".join(dataset_names()))
        return 0
    if args.runner_help:
        runner_args = ["--help"]
    elif not runner_args:
        raise TruthProbeError("expected VLMEvalKit runner arguments (e.g. --model llava_v1.5_7b_truthprobe --data POPE_local), found none")

    values = _runner_values(runner_args)
    if values["use_vllm"] and _models_to_check(values):
        raise TruthProbeError("--use-vllm: the gated models run in transformers (the gate hooks); drop --use-vllm")
    described = {} if args.runner_help else _interventions(values)

    register()
    argv = sys.argv
    sys.argv = ["vlmeval/run.py", *runner_args]
    try:
        with keep_grad_mode():  # the runner runs as VLMEvalKit sets it up (no autograd); the caller's mode comes back
            import vlmeval.run

            vlmeval.run.main()
    except SystemExit as exc:  # argparse --help / usage errors of the runner
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    write_descriptions(values["work_dir"], described)
    names = list(values["model"])
    if values["config"]:
        names = list((json.loads(Path(values["config"]).read_text(encoding="utf-8")).get("model") or {}))
    failures = _failures(values["work_dir"], names)
    if failures:
        print("VLMEvalKit reported failures:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0
