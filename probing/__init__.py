"""Probing: per-head activations at the final answer token -> linear probes -> Truth Scores.

Public API::

    from truthprobe_eval.probing import run_probing, probe_model, load_examples, load_activations

    scores = run_probing("smollm2-135m-instruct", data="halueval", n=292, out="scores/smollm2.json")
    X, y, groups, meta = load_activations(scores.meta["activation_cache"])   # (N, L, H, D), (N,), (N,), dict

This top-level folder is installed as ``truthprobe_eval.probing`` (``package-dir`` in pyproject.toml), so a relative
``from ..errors import ...`` here means ``truthprobe_eval/errors.py``; import it as ``truthprobe_eval.probing``.
"""
from __future__ import annotations

from typing import Any

from .cache import ActivationCache, ActivationCacheError, default_cache_root, load_activations, load_examples_from_cache
from .data import (
    ProbeDataError,
    ProbeExample,
    check_examples,
    halueval_examples,
    jsonl_examples,
    labels_and_groups,
    load_examples,
)
from .extract import HeadCapture, extract_activations, last_token_index
from .pipeline import ProbeSettingsError, format_summary, plot_heatmap, probe_model, run_probing
from .prompts import CONDITIONS, PROMPT_FORMATS, PromptEncoder, chat_prompt, published_prompt

_TRAINER_NAMES = ("train_probes", "ProbeResult")


def __getattr__(name: str) -> Any:  # the trainers load on first use (they pull in scikit-learn)
    if name in _TRAINER_NAMES:
        from . import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActivationCache", "ActivationCacheError", "CONDITIONS", "HeadCapture", "PROMPT_FORMATS", "ProbeDataError",
    "ProbeExample", "ProbeResult", "ProbeSettingsError", "PromptEncoder", "chat_prompt", "check_examples",
    "default_cache_root", "extract_activations", "format_summary", "halueval_examples", "jsonl_examples",
    "labels_and_groups", "last_token_index", "load_activations", "load_examples", "load_examples_from_cache",
    "plot_heatmap", "probe_model", "published_prompt", "run_probing", "train_probes",
]
