"""Shared pieces of the offline VLMEvalKit data sets: local paths, sampling, judges.

Each data set reads local files (never downloads) and is configured only by constructor arguments: the keys of a
VLMEvalKit JSON ``--config`` data entry, which ``truthprobe vlmeval`` writes from its options.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from truthprobe_eval.errors import TruthProbeError


class LocalDatasetError(TruthProbeError, ValueError):
    """A local data set's files are missing or not in the expected format."""


def setting(value: Any, default: Any = None) -> Any:
    """A constructor value, else ``default`` (an empty string counts as not given)."""
    return default if value is None or value == "" else value


def local_path(value: Any, what: str, key: str, *, kind: str = "any") -> Path:
    """A path from a constructor value that must exist (``kind``: ``dir``, ``file`` or ``any``)."""
    raw = setting(value)
    if raw is None:
        raise LocalDatasetError(f"{what}: expected a path in the config key {key!r} (see `truthprobe vlmeval --help` "
                                "for the option that sets it), found none")
    path = Path(str(raw)).expanduser()
    ok = path.is_dir() if kind == "dir" else path.is_file() if kind == "file" else path.exists()
    if not ok:
        noun = {"dir": "folder", "file": "file"}.get(kind, "path")
        raise LocalDatasetError(f"{what}: expected an existing {noun} at {path} (config key {key!r}), found none")
    return path.resolve()


def as_int(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise LocalDatasetError(f"{what}: expected an integer, found {value!r}") from None
    if out < 0:
        raise LocalDatasetError(f"{what}: expected a non-negative integer, found {out}")
    return out


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def sample_frame(data: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """``n`` rows drawn without replacement with ``seed`` (original order kept), or all rows when n is None."""
    if n is None or n >= len(data):
        return data.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(data), size=n, replace=False))
    return data.iloc[keep].reset_index(drop=True)


def check_images(paths: list[str], what: str) -> None:
    """Fail early, naming the first few, when image files are missing."""
    missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3])
        raise LocalDatasetError(f"{what}: expected {len(set(paths))} image files, found {len(missing)} missing (e.g. {shown})")


def judge_kwargs_for(judge: str | None, judge_kwargs: dict) -> dict:
    """Judge settings for VLMEvalKit's scoring: exact matching (offline, the default) unless ``judge`` is
    ``runner`` (use the runner's ``--judge`` settings, which need an API) or a judge model name."""
    choice = setting(judge, "exact_matching")
    kwargs = dict(judge_kwargs)
    if choice == "runner":
        return kwargs
    kwargs["model"] = choice
    return kwargs
