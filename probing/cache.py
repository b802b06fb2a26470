"""Activation cache on disk: extraction written shard by shard, so an interrupted run resumes where it stopped.

One folder per (model, data, prompt settings)::

    <cache root>/<model>-<key>/
        manifest.json       format, key, settings, n, shape (L, H, D), dtype, shard_size, num_shards, complete
        labels.npy          (N,) int64, 1 truthful / 0 hallucinated
        groups.npy          (N,) int64 question ids (both answers to a question share one)
        examples.jsonl      the probed examples, in order
        shard_00000.npy     (<= shard_size, L, H, D) activations of examples [0, shard_size), ...

``key`` is a hash of the settings (model name, architecture and a fingerprint of its output-projection
weights, the examples' content, prompt format, condition, padding side, batch size, shard size, EOS
handling, storage dtype), so that a changed setting never reuses stale activations. Every file is written
atomically (temporary file, then rename): a killed run leaves whole shards or none, and a rerun computes
only the missing shards; since a shard is always computed from the same batches, the result equals an
uninterrupted run's bit for bit.

``load_activations(folder)`` reads a finished cache back as ``(X, y, groups, meta)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, atomic_write_text, read_jsonl
from ..architectures import describe, locate_heads
from ..errors import TruthProbeError
from .data import ProbeExample, fingerprint, labels_and_groups

CACHE_FORMAT = "truthprobe-activations"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 64


class ActivationCacheError(TruthProbeError, ValueError):
    """An activation cache folder that is missing, incomplete or does not match its manifest."""


def default_cache_root() -> Path:
    """``$TRUTHPROBE_CACHE/activations`` (default ``~/.cache/truthprobe_eval/activations``)."""
    from ..models import cache_dir

    return cache_dir() / "activations"


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every output projection's shape, dtype and a strided sample of its weights (cheap even at 7B)."""
    h = hashlib.sha256()
    for proj in locate_heads(model).out_projs:
        w = proj.weight.detach()
        h.update(f"{tuple(w.shape)}{w.dtype}".encode())
        sample = w.reshape(-1)[::97].contiguous().cpu()
        h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_settings(model: nn.Module, examples: Sequence[ProbeExample], **settings: Any) -> dict:
    """Everything that determines the cached activations (the key is a hash of this dict)."""
    info = describe(model)
    info.update(weights=weights_fingerprint(model), model_dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                examples=fingerprint(examples), n_samples=len(examples))
    info.update(settings)
    return info


def cache_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_")[-60:] or "model"


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ActivationCacheError(f"expected an activation cache folder with {MANIFEST} at {folder}, found none") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ActivationCacheError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("format_version") != CACHE_VERSION:
        raise ActivationCacheError(f"{path}: expected format {CACHE_FORMAT!r} version {CACHE_VERSION}, "
                                   f"found {manifest.get('format')!r} version {manifest.get('format_version')!r}")
    return manifest


class ActivationCache:
    """One cache folder: a manifest plus shards ``shard_00000.npy`` ... of ``shard_size`` examples each."""

    def __init__(self, folder: "str | os.PathLike", manifest: dict) -> None:
        self.folder = Path(folder)
        self.manifest = manifest

    # ---- layout -------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def num_shards(self) -> int:
        return int(self.manifest["num_shards"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["shape"])  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def shard_path(self, i: int) -> Path:
        return self.folder / f"shard_{i:05d}.npy"

    def shard_slice(self, i: int) -> slice:
        return slice(i * self.shard_size, min(self.n, (i + 1) * self.shard_size))

    # ---- open / create ------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: "str | os.PathLike", settings: dict, examples: Sequence[ProbeExample],
             shape: tuple[int, int, int], float16: bool, shard_size: int = DEFAULT_SHARD_SIZE) -> "ActivationCache":
        """The cache folder for ``settings`` under ``root``, created (manifest, labels, groups) if new."""
        if shard_size < 1:
            raise ActivationCacheError(f"shard size: expected >= 1, found {shard_size}")
        settings = dict(settings, shard_size=shard_size, float16=bool(float16))
        key = cache_key(settings)
        folder = Path(root) / f"{_slug(str(settings.get('model', 'model')))}-{key}"
        if (folder / MANIFEST).exists():
            manifest = _read_manifest(folder)
            if manifest.get("key") != key:
                raise ActivationCacheError(f"{folder}: expected cache key {key}, found {manifest.get('key')!r}")
            return cls(folder, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        y, groups = labels_and_groups(examples)
        _save_npy(folder / "labels.npy", y)
        _save_npy(folder / "groups.npy", groups)
        atomic_write_text(folder / "examples.jsonl",
                          "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples))
        n = len(examples)
        manifest = {
            "format": CACHE_FORMAT, "format_version": CACHE_VERSION, "key": key, "settings": settings,
            "n": n, "shape": list(shape), "dtype": "float16" if float16 else "float32",
            "shard_size": shard_size, "num_shards": max(1, -(-n // shard_size)), "complete": False,
        }
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, default=str) + "\n")
        return cls(folder, manifest)

    # ---- shards -------------------------------------------------------------------------------------
    def read_shard(self, i: int, mmap: bool = False) -> np.ndarray | None:
        """Shard ``i`` if present and whole (right shape and dtype), else None (``mmap``: header check only)."""
        path = self.shard_path(i)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError):
            return None
        rows = self.shard_slice(i)
        if arr.shape != (rows.stop - rows.start, *self.shape) or arr.dtype != self.dtype:
            return None
        return arr

    def write_shard(self, i: int, array: np.ndarray) -> None:
        rows = self.shard_slice(i)
        expected = (rows.stop - rows.start, *self.shape)
        if array.shape != expected:
            raise ActivationCacheError(f"shard {i}: expected shape {expected}, found {array.shape}")
        _save_npy(self.shard_path(i), np.ascontiguousarray(array, dtype=self.dtype))

    def missing_shards(self) -> list[int]:
        return [i for i in range(self.num_shards) if self.read_shard(i, mmap=True) is None]

    def mark_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            raise ActivationCacheError(f"{self.folder}: cannot mark complete, shards {missing[:5]} are missing")
        self.manifest["complete"] = True
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=1, default=str) + "\n")

    def load(self) -> np.ndarray:
        """All activations, (N, L, H, D)."""
        out = np.empty((self.n, *self.shape), dtype=self.dtype)
        for i in range(self.num_shards):
            shard = self.read_shard(i)
            if shard is None:
                raise ActivationCacheError(f"{self.folder}: shard {i} of {self.num_shards} is missing or damaged "
                                           f"(an interrupted run? rerun the same command to finish it)")
            out[self.shard_slice(i)] = shard
        return out


def cached_extract(cache: ActivationCache, examples: Sequence[ProbeExample],
                   extract: Callable[[Sequence[ProbeExample], Any], np.ndarray], *, progress: bool = True,
                   on_shard: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Fill the missing shards with ``extract(examples_of_shard, bar)``, then return all activations.

    ``on_shard(i, num_shards)`` is called after each newly written shard (progress reports, tests).
    """
    from tqdm.auto import tqdm

    if len(examples) != cache.n:
        raise ActivationCacheError(f"{cache.folder}: expected {cache.n} examples, found {len(examples)}")
    missing = cache.missing_shards()
    todo = sum(cache.shard_slice(i).stop - cache.shard_slice(i).start for i in missing)
    with tqdm(total=cache.n, initial=cache.n - todo, desc="extracting", unit="ex", disable=not progress) as bar:
        for i in missing:
            rows = cache.shard_slice(i)
            cache.write_shard(i, extract(examples[rows], bar))
            if on_shard is not None:
                on_shard(i, cache.num_shards)
    cache.mark_complete()
    return cache.load()


def _resolve_cache_folder(cache_dir: "str | os.PathLike") -> Path:
    folder = Path(cache_dir)
    if (folder / MANIFEST).is_file():
        return folder
    candidates = sorted(p.parent for p in folder.glob(f"*/{MANIFEST}")) if folder.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ActivationCacheError(f"expected an activation cache folder (with {MANIFEST}) at {folder}, found none")
    raise ActivationCacheError(f"{folder} holds {len(candidates)} activation caches; pass one of: "
                               + ", ".join(str(c) for c in candidates[:10]))


def load_activations(cache_dir: "str | os.PathLike") -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Read a finished activation cache: ``(X, y, groups, meta)``.

    ``X`` (N, L, H, D) float16 or float32 head activations at the final answer token; ``y`` (N,) int64
    labels (1 truthful, 0 hallucinated); ``groups`` (N,) int64 question ids; ``meta`` the settings that made
    them (model, architecture, num_layers, num_heads, head_dim, prompt_format, condition, ...) plus
    ``cache_dir``, ``n_samples``, ``shape`` and ``dtype``. ``cache_dir`` is a cache folder (as recorded in a
    score file's ``activation_cache``) or a root holding exactly one.
    """
    folder = _resolve_cache_folder(cache_dir)
    cache = ActivationCache(folder, _read_manifest(folder))
    if not cache.complete:
        missing = cache.missing_shards()
        raise ActivationCacheError(f"{folder}: the cache is incomplete ({len(missing)} of {cache.num_shards} shards "
                                   f"missing); rerun the probing command that made it to finish it")
    X = cache.load()
    y = np.load(folder / "labels.npy", allow_pickle=False)
    groups = np.load(folder / "groups.npy", allow_pickle=False)
    if len(y) != cache.n or len(groups) != cache.n:
        raise ActivationCacheError(f"{folder}: expected {cache.n} labels and groups, found {len(y)} and {len(groups)}")
    meta = dict(cache.manifest["settings"], cache_dir=str(folder), n_samples=cache.n,
                shape=[cache.n, *cache.shape], dtype=str(cache.dtype))
    return X, y, groups, meta


def load_examples_from_cache(cache_dir: "str | os.PathLike") -> list[ProbeExample]:
    """The examples a cache was made from, in order."""
    folder = _resolve_cache_folder(cache_dir)
    return [ProbeExample(**row) for _, row in read_jsonl(folder / "examples.jsonl", ActivationCacheError)]


__all__ = ["ActivationCache", "ActivationCacheError", "cache_key", "cache_settings", "cached_extract",
           "default_cache_root", "load_activations", "load_examples_from_cache", "weights_fingerprint"]
