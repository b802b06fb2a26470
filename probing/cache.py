"""Activation cache on disk: extraction written shard by shard, so an interrupted run resumes where it stopped,
and every file checksummed, so a cache that changed after it was written is never used.

One folder per (model, data, prompt settings)::

    <cache root>/<model>-<key>/
        manifest.json       format, format_version, key, settings, n, shape (L, H, D), dtype, shard_size,
                            num_shards, complete, sha256 {file name: SHA-256 of the file's bytes}
        labels.npy          (N,) int64, 1 truthful / 0 hallucinated
        groups.npy          (N,) int64 question ids (both answers to a question share one)
        examples.jsonl      the probed examples, in order
        shard_00000.npy     (<= shard_size, L, H, D) activations of examples [0, shard_size), ...

``key`` is a hash of the cache format version and the settings (model name, architecture and a fingerprint of
its output-projection weights, the examples' content, prompt format, condition, padding side, batch size, shard
size, EOS handling, storage dtype), so that a changed setting never reuses stale activations.

Integrity. The manifest records the SHA-256 of every data file's bytes (the whole ``.npy`` file, header
included, so a truncated, swapped or rewritten shard, even one with the same shape and dtype, never matches).
A shard is written atomically (temporary file, then rename), then its checksum is recorded by rewriting the
manifest atomically. A file counts only if its checksum is recorded and matches: a run killed between the two
renames leaves a shard without a checksum, which is treated as missing and recomputed (the same batches give
the same bytes), so a killed run loses at most the shard in progress and a rerun's result equals an
uninterrupted run's bit for bit. Every reuse verifies every file it reads:

- probing (``cached_extract``, through ``extract_with_cache``): a shard whose file is missing or differs from its
  checksum is recomputed, with one warning naming the shard and the folder; ``labels.npy``, ``groups.npy`` and
  ``examples.jsonl`` are rewritten from the examples (with a warning), and an unreadable or inconsistent manifest
  starts the folder over;
- reading back (``load_activations``, ``load_examples_from_cache``, ``ActivationCache.load``): there is no model to
  recompute with, so a mismatch raises ``ActivationCacheError`` naming the file, the expected and found checksums,
  and what to do (delete the folder, rerun the probing command).

Old caches (format version 1, written before checksums existed) cannot be verified, so they are not trusted:
the format version is part of the key, so probing never opens them (it computes a new folder beside them), and
``load_activations`` refuses them with a message saying to delete the folder and rerun probing. Two processes
filling the same folder at once may redo each other's shards (the last manifest written wins), but never use
a file whose checksum was not recorded or does not match. Verifying costs one SHA-256 pass over the files read
(about 2 GB/s), on top of reading them.

``load_activations(folder)`` reads a finished cache back as ``(X, y, groups, meta)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_bytes, atomic_write_text
from ..architectures import describe, locate_heads
from ..errors import TruthProbeError
from .data import ProbeExample, fingerprint, labels_and_groups

CACHE_FORMAT = "truthprobe-activations"
CACHE_VERSION = 2  # 2: SHA-256 of every file in the manifest; 1 (no checksums) is never reused
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 64
SIDE_FILES = ("labels.npy", "groups.npy", "examples.jsonl")


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
    """Hash of the cache format version and ``settings``: a new format never reuses an old folder."""
    payload = {"format": CACHE_FORMAT, "format_version": CACHE_VERSION, "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_")[-60:] or "model"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _examples_bytes(examples: Sequence[ProbeExample]) -> bytes:
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples).encode("utf-8")


def _remedy(folder: Path) -> str:
    return (f"delete the folder {folder} and rerun the probing command that made it "
            f"(it recomputes the activations)")


def _check_manifest(folder: Path, manifest: Any) -> None:
    """Raise ActivationCacheError unless ``manifest`` is ours, of this version, and consistent with itself."""
    path = folder / MANIFEST
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ActivationCacheError(f"{path}: expected format {CACHE_FORMAT!r} version {CACHE_VERSION}, found {found!r}")
    version = manifest.get("format_version")
    if version != CACHE_VERSION:
        if isinstance(version, int) and version < CACHE_VERSION:
            raise ActivationCacheError(
                f"{path}: expected format version {CACHE_VERSION}, found version {version}, written by an earlier "
                f"truthprobe_eval that recorded no checksums, so its files cannot be verified; {_remedy(folder)} "
                f"(probing never reuses such a folder: it computes a new one beside it)")
        raise ActivationCacheError(f"{path}: expected format {CACHE_FORMAT!r} version {CACHE_VERSION}, "
                                   f"found version {version!r} (written by a newer truthprobe_eval?)")
    try:
        settings, n, shard_size = manifest["settings"], int(manifest["n"]), int(manifest["shard_size"])
        shape, dtype, num_shards = manifest["shape"], np.dtype(manifest["dtype"]), int(manifest["num_shards"])
        checksums = manifest["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ActivationCacheError(f"{path}: expected the fields n, shape, dtype, shard_size, num_shards, settings and "
                                   f"sha256, found a damaged manifest ({type(exc).__name__}: {exc}); "
                                   f"{_remedy(folder)}") from None
    problems = []
    if not isinstance(settings, dict) or manifest.get("key") != cache_key(settings):
        problems.append(f"key {manifest.get('key')!r} is not the hash of the recorded settings")
    elif settings.get("shard_size", shard_size) != shard_size or settings.get("n_samples", n) != n:
        problems.append("n or shard_size differ from the recorded settings")
    elif "float16" in settings and dtype != np.dtype(np.float16 if settings["float16"] else np.float32):
        problems.append(f"dtype {dtype} differs from the recorded setting float16={settings['float16']}")
    if shard_size < 1 or num_shards != max(1, -(-n // shard_size)):
        problems.append(f"num_shards {num_shards} does not fit n={n}, shard_size={shard_size}")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        problems.append(f"shape {shape!r} is not three positive integers")
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        problems.append("sha256 is not a mapping of file names to checksums")
    if problems:
        raise ActivationCacheError(f"{path}: expected a consistent manifest, found: {'; '.join(problems)}; "
                                   f"{_remedy(folder)}")


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ActivationCacheError(f"expected an activation cache folder with {MANIFEST} at {folder}, found none") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ActivationCacheError(f"{path}: not valid JSON ({exc}); {_remedy(folder)}") from None
    _check_manifest(folder, manifest)
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

    @property
    def checksums(self) -> dict[str, str]:
        """``{file name: SHA-256 hex digest}`` of every file written and recorded so far."""
        return self.manifest.setdefault("sha256", {})

    def shard_path(self, i: int) -> Path:
        return self.folder / f"shard_{i:05d}.npy"

    def shard_slice(self, i: int) -> slice:
        return slice(i * self.shard_size, min(self.n, (i + 1) * self.shard_size))

    # ---- open / create ------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: "str | os.PathLike", settings: dict, examples: Sequence[ProbeExample],
             shape: tuple[int, int, int], float16: bool, shard_size: int = DEFAULT_SHARD_SIZE) -> "ActivationCache":
        """The cache folder for ``settings`` under ``root``, created (manifest, labels, groups) if new.

        An existing folder is checked: an unreadable or inconsistent manifest starts it over, and labels,
        groups or examples that do not match their checksums are rewritten from ``examples`` (with a warning).
        """
        if shard_size < 1:
            raise ActivationCacheError(f"shard size: expected >= 1, found {shard_size}")
        settings = dict(settings, shard_size=shard_size, float16=bool(float16))
        key = cache_key(settings)
        folder = Path(root) / f"{_slug(str(settings.get('model', 'model')))}-{key}"
        n = len(examples)
        if (folder / MANIFEST).exists():
            try:
                manifest = _read_manifest(folder)
                if manifest.get("key") != key:
                    raise ActivationCacheError(f"{folder / MANIFEST}: expected cache key {key}, found {manifest.get('key')!r}")
                if manifest["n"] != n or manifest["shape"] != list(shape):
                    raise ActivationCacheError(f"{folder / MANIFEST}: expected n={n}, shape {list(shape)}, found "
                                               f"n={manifest['n']}, shape {manifest['shape']}")
            except ActivationCacheError as exc:
                warnings.warn(f"activation cache {folder}: cannot use its manifest ({exc}); starting the folder over",
                              stacklevel=2)
            else:
                cache = cls(folder, manifest)
                cache._repair_side_files(examples)
                return cache
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": CACHE_FORMAT, "format_version": CACHE_VERSION, "key": key, "settings": settings,
            "n": n, "shape": list(shape), "dtype": "float16" if float16 else "float32",
            "shard_size": shard_size, "num_shards": max(1, -(-n // shard_size)), "complete": False, "sha256": {},
        }
        cache = cls(folder, manifest)
        # side files first, then the manifest that records them: a kill in between leaves no manifest (a new folder)
        for name, data in cache._side_file_bytes(examples).items():
            atomic_write_bytes(folder / name, data)
            cache.checksums[name] = sha256_bytes(data)
        cache._save_manifest()
        return cache

    def _side_file_bytes(self, examples: Sequence[ProbeExample]) -> dict[str, bytes]:
        y, groups = labels_and_groups(examples)
        return {"labels.npy": _npy_bytes(y), "groups.npy": _npy_bytes(groups), "examples.jsonl": _examples_bytes(examples)}

    def _repair_side_files(self, examples: Sequence[ProbeExample]) -> None:
        """Rewrite labels, groups or examples that do not match their checksums (the probing path has the examples)."""
        expected = None
        for name in SIDE_FILES:
            data, problem = self._verified_bytes(name)
            if data is not None:
                continue
            expected = expected or self._side_file_bytes(examples)
            warnings.warn(f"activation cache {self.folder}: {name} {problem or 'has no recorded checksum'}; "
                          f"rewriting it from the examples", stacklevel=3)
            atomic_write_bytes(self.folder / name, expected[name])
            self.checksums[name] = sha256_bytes(expected[name])
            self._save_manifest()

    def _save_manifest(self) -> None:
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=1, default=str) + "\n")

    # ---- verified reads -----------------------------------------------------------------------------
    def _verified_bytes(self, name: str) -> tuple[bytes | None, str | None]:
        """``(bytes, None)`` when file ``name`` matches its recorded checksum; ``(None, None)`` when no checksum is
        recorded (never written, or a run killed between writing it and recording it); ``(None, why)`` when one is
        recorded but the file is missing or its bytes differ."""
        expected = self.checksums.get(name)
        if expected is None:
            return None, None
        try:
            data = (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None, f"is missing: expected sha256 {expected}, found no file"
        except OSError as exc:
            return None, f"cannot be read ({exc})"
        found = sha256_bytes(data)
        if found != expected:
            return None, f"does not match its checksum: expected sha256 {expected}, found {found}"
        return data, None

    def _require_bytes(self, name: str) -> bytes:
        data, problem = self._verified_bytes(name)
        if data is None:
            problem = problem or "has no recorded checksum (an interrupted run?)"
            raise ActivationCacheError(f"{self.folder / name} {problem} (recorded in {self.folder / MANIFEST}); "
                                       f"{_remedy(self.folder)}")
        return data

    def verify_shard(self, i: int) -> tuple[np.ndarray | None, str | None]:
        """``(activations, None)`` when shard ``i`` matches its checksum; ``(None, None)`` when it was never
        recorded (not computed yet); ``(None, why)`` when recorded but missing, changed, or of the wrong shape."""
        data, problem = self._verified_bytes(self.shard_path(i).name)
        if data is None:
            return None, problem
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            return None, f"matches its checksum but is not an array ({exc})"
        rows = self.shard_slice(i)
        expected = (rows.stop - rows.start, *self.shape)
        if arr.shape != expected or arr.dtype != self.dtype:
            return None, f"expected shape {expected} {self.dtype}, found {arr.shape} {arr.dtype}"
        return arr, None

    # ---- shards -------------------------------------------------------------------------------------
    def read_shard(self, i: int) -> np.ndarray | None:
        """Shard ``i`` if recorded and its file matches its checksum (and the manifest's shape and dtype), else None."""
        return self.verify_shard(i)[0]

    def write_shard(self, i: int, array: np.ndarray) -> np.ndarray:
        """Write shard ``i`` atomically, then record its checksum in the manifest (atomically); returns the array
        as stored (cast to the cache's dtype)."""
        rows = self.shard_slice(i)
        expected = (rows.stop - rows.start, *self.shape)
        if array.shape != expected:
            raise ActivationCacheError(f"shard {i}: expected shape {expected}, found {array.shape}")
        stored = np.ascontiguousarray(array, dtype=self.dtype)
        data = _npy_bytes(stored)
        atomic_write_bytes(self.shard_path(i), data)
        # a kill here leaves the file without a checksum: treated as missing, recomputed, same bytes
        self.checksums[self.shard_path(i).name] = sha256_bytes(data)
        self._save_manifest()
        return stored

    def missing_shards(self) -> list[int]:
        """Shards with no recorded checksum (not computed yet); files are not read: see ``verify_shard``."""
        return [i for i in range(self.num_shards) if self.shard_path(i).name not in self.checksums]

    def mark_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            raise ActivationCacheError(f"{self.folder}: cannot mark complete, shards {missing[:5]} are missing")
        if not self.complete:
            self.manifest["complete"] = True
            self._save_manifest()

    def load(self) -> np.ndarray:
        """All activations, (N, L, H, D), every shard verified against its checksum (ActivationCacheError if not)."""
        out = np.empty((self.n, *self.shape), dtype=self.dtype)
        for i in range(self.num_shards):
            shard, problem = self.verify_shard(i)
            if shard is None:
                path = self.shard_path(i)
                if problem is None:
                    raise ActivationCacheError(f"{self.folder}: shard {i} of {self.num_shards} ({path.name}) is missing "
                                               f"(an interrupted run? rerun the same command to finish it)")
                raise ActivationCacheError(f"{path} (shard {i} of {self.num_shards}) {problem} (recorded in "
                                           f"{self.folder / MANIFEST}); {_remedy(self.folder)}")
            out[self.shard_slice(i)] = shard
        return out

    def load_array(self, name: str) -> np.ndarray:
        """``labels.npy`` or ``groups.npy``, verified against its checksum (ActivationCacheError if not)."""
        return np.load(io.BytesIO(self._require_bytes(name)), allow_pickle=False)


def cached_extract(cache: ActivationCache, examples: Sequence[ProbeExample],
                   extract: Callable[[Sequence[ProbeExample], Any], np.ndarray], *, progress: bool = True,
                   on_shard: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Fill the missing shards with ``extract(examples_of_shard, bar)``, then return all activations.

    Every recorded shard is verified against its checksum; one that is missing or changed is recomputed, with a
    warning naming it and the folder. ``on_shard(i, num_shards)`` is called after each newly written shard
    (progress reports, tests).
    """
    from tqdm.auto import tqdm

    if len(examples) != cache.n:
        raise ActivationCacheError(f"{cache.folder}: expected {cache.n} examples, found {len(examples)}")
    out = np.empty((cache.n, *cache.shape), dtype=cache.dtype)
    todo = []
    for i in range(cache.num_shards):
        shard, problem = cache.verify_shard(i)
        if shard is not None:
            out[cache.shard_slice(i)] = shard
            continue
        todo.append(i)
        if problem is not None:
            warnings.warn(f"activation cache {cache.folder}: {cache.shard_path(i).name} {problem}; recomputing it",
                          stacklevel=2)
    n_todo = sum(cache.shard_slice(i).stop - cache.shard_slice(i).start for i in todo)
    with tqdm(total=cache.n, initial=cache.n - n_todo, desc="extracting", unit="ex", disable=not progress) as bar:
        for i in todo:
            rows = cache.shard_slice(i)
            out[rows] = cache.write_shard(i, extract(examples[rows], bar))
            if on_shard is not None:
                on_shard(i, cache.num_shards)
    cache.mark_complete()
    return out


def _resolve_cache_folder(cache_dir: "str | os.PathLike") -> Path:
    folder = Path(cache_dir).expanduser()
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
    """Read a finished activation cache: ``(X, y, groups, meta)``, every file verified against its checksum.

    ``X`` (N, L, H, D) float16 or float32 head activations at the final answer token; ``y`` (N,) int64
    labels (1 truthful, 0 hallucinated); ``groups`` (N,) int64 question ids; ``meta`` the settings that made
    them (model, architecture, num_layers, num_heads, head_dim, prompt_format, condition, ...) plus
    ``cache_dir``, ``n_samples``, ``shape`` and ``dtype``. ``cache_dir`` is a cache folder (as recorded in a
    score file's ``activation_cache``) or a root holding exactly one. A file that does not match its checksum,
    or a cache of the old format without checksums, raises ``ActivationCacheError`` naming the file.
    """
    folder = _resolve_cache_folder(cache_dir)
    cache = ActivationCache(folder, _read_manifest(folder))
    if not cache.complete:
        missing = cache.missing_shards()
        raise ActivationCacheError(f"{folder}: the cache is incomplete ({len(missing)} of {cache.num_shards} shards "
                                   f"missing); rerun the probing command that made it to finish it")
    X = cache.load()
    y = cache.load_array("labels.npy")
    groups = cache.load_array("groups.npy")
    if y.shape != (cache.n,) or groups.shape != (cache.n,):
        raise ActivationCacheError(f"{folder}: expected {cache.n} labels and groups, found {y.shape} and {groups.shape}")
    meta = dict(cache.manifest["settings"], cache_dir=str(folder), n_samples=cache.n,
                shape=[cache.n, *cache.shape], dtype=str(cache.dtype))
    return X, y, groups, meta


def load_examples_from_cache(cache_dir: "str | os.PathLike") -> list[ProbeExample]:
    """The examples a cache was made from, in order (``examples.jsonl``, verified against its checksum)."""
    folder = _resolve_cache_folder(cache_dir)
    cache = ActivationCache(folder, _read_manifest(folder))
    text = cache._require_bytes("examples.jsonl").decode("utf-8")
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(ProbeExample(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ActivationCacheError(f"{folder / 'examples.jsonl'}, line {number}: expected an example, found {exc}") from None
    if len(out) != cache.n:
        raise ActivationCacheError(f"{folder / 'examples.jsonl'}: expected {cache.n} examples, found {len(out)}")
    return out


__all__ = ["ActivationCache", "ActivationCacheError", "cache_key", "cache_settings", "cached_extract",
           "default_cache_root", "load_activations", "load_examples_from_cache", "sha256_bytes", "weights_fingerprint"]
