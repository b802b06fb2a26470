"""``truthprobe vlmeval ...``: VLMEvalKit's own runner with the gated models and offline data sets registered.

Every argument this command does not define goes to VLMEvalKit's ``run.py`` unchanged (``--work-dir``,
``--mode``, ``--reuse``, ...). The options below become keys of the VLMEvalKit JSON ``--config`` the runner is
given (VLMEvalKit's own channel for model and data set settings): ``--model`` / ``--data`` names, or the user's
``--config``, are turned into one config with every setting spelled out, written to
``<work dir>/truthprobe_vlmeval_config.json`` (so the run describes itself) and handed to the runner.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# option -> (TruthGatedVLM constructor key, help): the model's and the intervention's settings
MODEL_OPTIONS = {
    "--method": ("method", "truthprobe (default), iti, neurons, rve or none"),
    "--scores": ("scores", "score file: probed on the base LLM (transfer) or on the MLLM"),
    "--alpha": ("alpha", "gate strength (default 4.5)"),
    "--norm": ("norm", "centered (default), minmax or raw"),
    "--site": ("site", "o_proj_output (default) or o_proj_input"),
    "--gate": ("gate", "truthprobe (default); ours: random (strength-matched), shuffled, inverse; the paper's: "
                       "paper_random (redrawn every call), paper_inverse; or none (the ungated baseline)"),
    "--seed": ("seed", "seed of --gate random, shuffled and paper_random"),
    "--apply": ("apply", "hook (default) or bake"),
    "--hf-model": ("model_path", "checkpoint (hub id or folder) for the model name given to --model"),
    "--dtype": ("dtype", "auto (default), float32, bfloat16, float16"),
    "--device": ("device", "auto (default), cpu, cuda, cuda:1, ..."),
    "--max-new-tokens": ("max_new_tokens", "generation limit (default 512; CHAIR_local declares its own, 64)"),
}
# option -> ({data set name: constructor key}, help)
DATA_OPTIONS = {
    "--pope-dir": ({"POPE_local": "question_dir"}, "folder with coco_pope_{random,popular,adversarial}.json"),
    "--pope-limit": ({name: "limit_per_split" for name in ("POPE_local", "POPE_aokvqa_local", "POPE_gqa_local")},
                     "questions sampled per POPE split (default: all)"),
    "--coco-images": ({"POPE_local": "image_dir", "CHAIR_local": "image_dir"},
                      "COCO val2014 image folder (POPE_local, CHAIR_local)"),
    "--coco-annotations": ({"CHAIR_local": "annotations_dir"},
                           "folder with instances_val2014.json and captions_val2014.json (CHAIR)"),
    "--chair-image-list": ({"CHAIR_local": "image_list"}, "text file of COCO image ids for CHAIR (default: a seeded sample)"),
    "--chair-n-images": ({"CHAIR_local": "n_images"}, "CHAIR sample size (default 500)"),
    "--gqa-questions": ({"GQA_local": "questions"}, "GQA testdev_balanced_questions.json"),
    "--gqa-images": ({"GQA_local": "image_dir", "POPE_gqa_local": "image_dir"}, "GQA image folder (GQA_local, POPE_gqa_local)"),
    "--omnimedvqa-dir": ({"OmniMedVQA_local": "root"}, "OmniMedVQA folder (QA_information/, Images/)"),
    "--omnimedvqa-subsets": ({"OmniMedVQA_local": "subsets"}, "comma-separated QA file names, e.g. 'SARS-CoV-2 CT-scan'"),
}


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


CONFIG_FILE = "truthprobe_vlmeval_config.json"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "vlmeval",
        help="run VLMEvalKit with TruthProbe-gated MLLMs and the offline POPE/CHAIR/GQA/OmniMedVQA sets",
        description="Register the gated models (llava_v1.5_7b_truthprobe, Qwen2-VL-7B-Instruct_truthprobe, ..., "
        "class TruthGatedVLM for --config) and the local data sets (POPE_local, POPE_aokvqa_local, POPE_gqa_local, "
        "CHAIR_local, GQA_local, OmniMedVQA_local) with VLMEvalKit, then run its runner (vlmeval/run.py) with "
        "every other argument, e.g. `truthprobe vlmeval --scores vicuna.json --alpha 4.5 --model "
        "llava_v1.5_7b_truthprobe --data POPE_local --work-dir out`. The options become keys of the VLMEvalKit "
        "JSON --config the runner gets (written to <work dir>/truthprobe_vlmeval_config.json); a --config of "
        "your own may give the same settings as keys. See docs/vlmeval.md.",
    )
    p.set_defaults(passes_through=True)  # the arguments we do not know are the runner's (cli.main keeps them)
    p.allow_abbrev = False  # never mistake a runner option (--mode) for a prefix of ours
    g = p.add_argument_group("model and intervention (keys of each gated model's --config entry)")
    for option, (_, text) in MODEL_OPTIONS.items():
        g.add_argument(option, help=text)
    g.add_argument("--method-args", help="any method's settings, e.g. 'directions=iti.json,k=48,alpha=15' or 'ars=ars.json,layers=14'")
    d = p.add_argument_group("local data sets (keys of each local data set's --config entry)")
    for option, (_, text) in DATA_OPTIONS.items():
        d.add_argument(option, help=text)
    d.add_argument("--data-args", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="any setting of one data set, e.g. 'POPE_aokvqa_local:question_dir=pope/,image_dir=coco/' "
                   "(repeatable; the keys are the data set's constructor arguments, see docs/vlmeval.md)")
    p.add_argument("--list", action="store_true", help="print the registered model and data set names, then exit")
    p.add_argument("--runner-help", action="store_true", help="print VLMEvalKit's own runner help, then exit")
    p.set_defaults(func=run)


def _runner_values(argv: list[str]) -> tuple[dict, list[str]]:
    """The runner options this command reads (model and data names, config, work dir), and the others."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model", nargs="+", default=[])
    parser.add_argument("--data", nargs="+", default=[])
    parser.add_argument("--config")
    parser.add_argument("--work-dir", default="./outputs")
    parser.add_argument("--use-vllm", action="store_true")
    known, rest = parser.parse_known_args(argv)
    rest += ["--work-dir", known.work_dir]
    if known.use_vllm:
        rest.append("--use-vllm")
    return vars(known), rest


def _pairs(text: str, what: str) -> dict[str, str]:
    """``"a=1,b=2"`` as a dict, or an error naming ``what``."""
    from ..errors import TruthProbeError

    out = {}
    for part in (text or "").split(","):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise TruthProbeError(f"{what}: expected KEY=VALUE[,KEY=VALUE...], found {part!r}")
            out[key.strip()] = value.strip()
    return out


def _merge(entry: dict, settings: dict, where: str) -> dict:
    """``settings`` added to a config ``entry``; a key both give with different values is an error."""
    from ..errors import TruthProbeError

    out = dict(entry)
    for key, value in settings.items():
        if key in out and str(out[key]) != str(value):
            raise TruthProbeError(f"{where}: the config gives {key}={out[key]!r} and the options give {value!r}; give it once")
        out[key] = value
    return out


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The gated models' config keys from this command's options (``--method-args`` spelled out as keys)."""

    settings = {key: getattr(args, _dest(option)) for option, (key, _) in MODEL_OPTIONS.items()
                if getattr(args, _dest(option), None) is not None}
    settings.update(_pairs(args.method_args, "--method-args"))
    return settings




def data_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Local data set name -> its config keys from this command's options."""
    from ..errors import TruthProbeError
    from ..model_adapters.vlmeval_registration import dataset_names

    out: dict[str, dict[str, Any]] = {}
    for option, (targets, _) in DATA_OPTIONS.items():
        value = getattr(args, _dest(option), None)
        if value is not None:
            for name, key in targets.items():
                out.setdefault(name, {})[key] = value
    for given in args.data_args:
        name, sep, rest = given.partition(":")
        if not sep or name not in dataset_names():
            raise TruthProbeError(f"--data-args: expected NAME:KEY=VALUE,... with NAME among {', '.join(dataset_names())}, found {given!r}")
        out.setdefault(name, {}).update(_pairs(rest, f"--data-args {name}"))
    return out


def _dataset_entry(name: str) -> dict:
    """The config entry that makes VLMEvalKit build one of its own data sets by name (what ``build_dataset`` finds)."""
    from ..errors import TruthProbeError
    from ..model_adapters.vlmeval_registration import keep_grad_mode

    with keep_grad_mode():
        import vlmeval.dataset as datasets
        from vlmeval.dataset.video_dataset_config import supported_video_datasets

    if name in supported_video_datasets:
        return {}
    for cls in datasets.DATASET_CLASSES:
        if name in cls.supported_datasets():
            return {"class": cls.__name__, "dataset": name}
    raise TruthProbeError(f"--data {name}: expected a data set VLMEvalKit or truthprobe-eval knows by name, found none; "
                          "for a custom TSV give a --config with its class")


def _check_keys(cls: type, entry: dict, where: str) -> None:
    """VLMEvalKit drops config keys a data set's constructor does not take, without a word: fail here instead."""
    from ..errors import TruthProbeError

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(entry) - accepted - {"class"})
    if unknown:
        raise TruthProbeError(f"{where}: {cls.__name__} takes no {', '.join(unknown)}; its keys: {', '.join(sorted(accepted))}")


def build_config(args: argparse.Namespace, values: dict) -> dict:
    """The VLMEvalKit config of this run: the user's ``--config`` or the ``--model`` / ``--data`` names, with the
    options filled into the gated models' and the local data sets' entries."""
    from ..errors import TruthProbeError
    from ..model_adapters.vlmeval_gated import check_method_keys
    from ..model_adapters.vlmeval_registration import MODEL_CLASS_NAME, MODELS, dataset_classes

    if values["config"]:
        if values["model"] or values["data"]:
            raise TruthProbeError("--config: expected either --config or --model/--data, found both")
        try:
            config = json.loads(Path(values["config"]).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TruthProbeError(f"--config: expected a readable JSON file, found: {exc}") from None
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(config.get("data"), dict):
            raise TruthProbeError(f"--config {values['config']}: expected an object with 'model' and 'data' objects")
    else:
        if not values["model"] or not values["data"]:
            raise TruthProbeError("expected --model and --data (or --config), found "
                                  + ("neither" if not values["model"] and not values["data"] else "only one"))
        config = {"model": {name: {} for name in values["model"]}, "data": {name: {} for name in values["data"]}}

    gated = model_settings(args)
    for name, entry in list(config["model"].items()):
        if name in MODELS and not entry:  # a registered name: its default checkpoint, unless --hf-model names one
            entry = {"class": MODEL_CLASS_NAME, "model_path": gated.get("model_path") or MODELS[name]}
        if isinstance(entry, dict) and entry.get("class") == MODEL_CLASS_NAME:
            config["model"][name] = _merge(entry, gated, f"model {name}")
            check_method_keys(config["model"][name], f"model {name}")
    ours = {name: cls for cls in dataset_classes() for name in cls.supported_datasets()}
    local = data_settings(args)
    for given in args.data_args:
        if given.partition(":")[0] not in config["data"]:
            raise TruthProbeError(f"--data-args {given!r}: expected a data set among those run ({', '.join(config['data'])})")
    for name, entry in list(config["data"].items()):
        if name in ours:
            entry = _merge({"class": ours[name].__name__, "dataset": name, **(entry or {})}, local.get(name, {}), f"data {name}")
            _check_keys(ours[name], entry, f"data {name}")
        elif not entry and not values["config"]:
            entry = _dataset_entry(name)
        config["data"][name] = entry
    return config


def write_config(work_dir: str, config: dict) -> Path:
    from .._io import atomic_write_text

    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def _gated_entries(config: dict) -> dict[str, dict]:
    from ..model_adapters.vlmeval_registration import MODEL_CLASS_NAME

    return {name: entry for name, entry in config["model"].items()
            if isinstance(entry, dict) and entry.get("class") == MODEL_CLASS_NAME}


def _interventions(config: dict) -> dict[str, dict]:
    """Model name -> what it runs (checkpoint, generation limits, the ``describe()`` of its intervention), each
    checked against its checkpoint's config before VLMEvalKit starts (it would only log a failure and go on)."""
    from ..errors import TruthProbeError
    from ..model_adapters.vlmeval_gated import DEFAULTS, check_fits_config, resolve_intervention

    checked = {}
    for name, entry in _gated_entries(config).items():
        made = resolve_intervention(entry)
        path = entry.get("model_path")
        if not path:
            raise TruthProbeError(f"{name}: expected a checkpoint (--hf-model or the config's model_path), found none")
        check_fits_config(str(path), made)
        checked[name] = {"model": str(path), "max_new_tokens": entry.get("max_new_tokens", DEFAULTS["max_new_tokens"]),
                         "dataset_max_new_tokens": entry.get("dataset_max_new_tokens", {}),
                         "intervention": made.describe()}
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


@contextmanager
def _process_group_without_gpus() -> Iterator[None]:
    """Under ``torchrun`` on a machine without GPUs, VLMEvalKit's runner (0.0.20) still asks for an NCCL process
    group, which needs GPUs; give it gloo, the CPU backend, so its data-parallel inference runs there too (each
    process takes its share of the questions, rank 0 merges and scores, as on GPUs)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        yield
        return
    original = dist.init_process_group

    def init_process_group(backend=None, *args, **kwargs):
        if backend == "nccl":
            print("truthprobe vlmeval: no GPU visible; VLMEvalKit's process group runs over gloo, not nccl", file=sys.stderr)
            backend = "gloo"
        return original(backend, *args, **kwargs)

    dist.init_process_group = init_process_group
    try:
        yield
    finally:
        dist.init_process_group = original


def run(args: argparse.Namespace) -> int:
    from ..errors import TruthProbeError

    runner_args = list(args.runner_args)

    from ..model_adapters.vlmeval_registration import MODELS, dataset_names, keep_grad_mode, register

    if args.list:
        print("models (--model):", " ".join(MODELS))
        print("model class (--config):", "TruthGatedVLM")
        print("data sets (--data):", " ".join(dataset_names()))
        return 0
    register()
    if args.runner_help:
        runner_args = ["--help"]
        described, work_dir = {}, None
    else:
        if not runner_args:
            raise TruthProbeError("expected VLMEvalKit runner arguments (e.g. --model llava_v1.5_7b_truthprobe --data POPE_local), found none")
        values, rest = _runner_values(runner_args)
        config = build_config(args, values)
        if values["use_vllm"] and _gated_entries(config):
            raise TruthProbeError("--use-vllm: the gated models run in transformers (the gate hooks); drop --use-vllm")
        described = _interventions(config)
        work_dir = values["work_dir"]
        runner_args = ["--config", str(write_config(work_dir, config)), *rest]

    argv = sys.argv
    sys.argv = ["vlmeval/run.py", *runner_args]
    try:
        # the runner runs as VLMEvalKit sets it up (no autograd); the caller's mode comes back
        with keep_grad_mode(), _process_group_without_gpus():
            import vlmeval.run

            vlmeval.run.main()
    except SystemExit as exc:  # argparse --help / usage errors of the runner
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    if work_dir is None:
        return 0
    write_descriptions(work_dir, described)
    failures = _failures(work_dir, list(config["model"]))
    if failures:
        print("VLMEvalKit reported failures:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0
