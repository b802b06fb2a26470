"""Truth Scores: one number per attention head, plus what made them.

Our on-disk format is JSON (``format: truthprobe-scores``, ``format_version: 1``)::

    {"format": "truthprobe-scores", "format_version": 1, "shape": [L, H],
     "scores": [[...H floats...] x L],
     "meta": {"model": ..., "num_layers": L, "num_heads": H, "head_dim": D, "architecture": ...,
              "data": ..., "n_samples": ..., "folds": ..., "seed": ..., "epochs": ..., ...},
     "metrics": {"precision": [[...]], ...},          # optional, each (L, H)
     "probe_weights": [[[...D...]]] | null,            # optional, (L, H, D)
     "probe_bias": [[...]] | null}                     # optional, (L, H)

``TruthScores.load`` also reads the published TruthProbe files: a ``.npy`` array of shape (L, H) and a
``cv5_head_metrics.csv`` with columns ``layer, head, accuracy, precision, recall, f1``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_text
from .errors import ScoreFileError, ShapeMismatchError

FORMAT_NAME = "truthprobe-scores"
FORMAT_VERSION = 1
PUBLISHED_CSV_COLUMNS = ("layer", "head", "accuracy", "precision", "recall", "f1")


def _package_version() -> str:
    from . import __version__

    return __version__


def _as_2d_finite(values: Any, what: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ScoreFileError(f"{what}: expected a non-empty 2-D array (layers, heads), found shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ScoreFileError(f"{what}: expected shape {shape}, found {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        l, h = np.argwhere(bad)[0]
        raise ScoreFileError(
            f"{what}: expected finite numbers, found {int(bad.sum())} NaN/inf value(s), first at layer {l}, head {h}"
        )
    return arr


@dataclass
class TruthScores:
    """Per-head Truth Scores of shape (layers, heads), with metadata and optional per-head extras."""

    values: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    probe_weights: np.ndarray | None = None  # (layers, heads, head_dim)
    probe_bias: np.ndarray | None = None  # (layers, heads)

    def __post_init__(self) -> None:
        self.values = _as_2d_finite(self.values, "scores")
        self.metrics = {k: _as_2d_finite(v, f"metric {k!r}", self.shape) for k, v in self.metrics.items()}
        if self.probe_weights is not None:
            w = np.asarray(self.probe_weights, dtype=np.float32)
            if w.ndim != 3 or w.shape[:2] != self.shape:
                raise ScoreFileError(f"probe_weights: expected shape {self.shape + ('head_dim',)}, found {w.shape}")
            self.probe_weights = w
        if self.probe_bias is not None:
            self.probe_bias = np.asarray(self.probe_bias, dtype=np.float32).reshape(self.shape)

    # ---- shape --------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    @property
    def num_layers(self) -> int:
        return self.shape[0]

    @property
    def num_heads(self) -> int:
        return self.shape[1]

    @property
    def model(self) -> str:
        return str(self.meta.get("model") or "unknown model")

    def check_fits(self, num_layers: int, num_heads: int, model_name: str = "the model") -> None:
        """Raise ``ShapeMismatchError`` unless these scores have one value per head of the target model."""
        if self.shape != (num_layers, num_heads):
            raise ShapeMismatchError(
                f"Truth Scores of {self.model} have shape {self.shape} (layers, heads), but {model_name} has "
                f"({num_layers}, {num_heads}): scores transfer only within a lineage of the same shape"
            )

    # ---- summaries ----------------------------------------------------------------------------------
    def top_k(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads as (layer, head, score), best first (ties: lower layer, head first)."""
        flat = self.values.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))[: max(0, k)]
        return [(int(i // self.num_heads), int(i % self.num_heads), float(flat[i])) for i in order]

    def layer_counts(self, k: int = 20) -> np.ndarray:
        """How many of the top-k heads sit in each layer."""
        counts = np.zeros(self.num_layers, dtype=int)
        for layer, _, _ in self.top_k(k):
            counts[layer] += 1
        return counts

    def summary(self, k: int = 10) -> dict[str, Any]:
        v = self.values
        top20 = self.layer_counts(min(20, v.size))
        return {
            "model": self.model,
            "shape": list(self.shape),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "median": float(np.median(v)),
            "max": float(v.max()),
            "top_k": [{"layer": l, "head": h, "score": s} for l, h, s in self.top_k(k)],
            "top20_share_later_half": float(top20[self.num_layers // 2 :].sum() / max(1, top20.sum())),
            "layer_mean": [float(x) for x in v.mean(axis=1)],
        }

    # ---- files --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "shape": list(self.shape),
            "scores": self.values.tolist(),
            "meta": self.meta,
            "metrics": {k: v.tolist() for k, v in self.metrics.items()},
            "probe_weights": None if self.probe_weights is None else self.probe_weights.tolist(),
            "probe_bias": None if self.probe_bias is None else self.probe_bias.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write our JSON format atomically (temp file, then rename)."""
        meta = dict(self.meta)
        meta.setdefault("package_version", _package_version())
        meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        meta.setdefault("num_layers", self.num_layers)
        meta.setdefault("num_heads", self.num_heads)
        self.meta = meta
        return atomic_write_text(path, json.dumps(self.to_dict(), allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "TruthScores":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ScoreFileError(f"{source}: expected a {FORMAT_NAME!r} JSON object, found format {found!r}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ScoreFileError(f"{source}: expected format_version {FORMAT_VERSION}, found {version!r}")
        try:
            scores = cls(
                values=data["scores"],
                meta=dict(data.get("meta") or {}),
                metrics=dict(data.get("metrics") or {}),
                probe_weights=data.get("probe_weights"),
                probe_bias=data.get("probe_bias"),
            )
        except KeyError as exc:
            raise ScoreFileError(f"{source}: missing required key {exc}") from None
        except ScoreFileError as exc:
            raise ScoreFileError(f"{source}: {exc}") from None
        if list(scores.shape) != list(data.get("shape", scores.shape)):
            raise ScoreFileError(f"{source}: header says shape {data['shape']}, scores have {list(scores.shape)}")
        return scores

    @classmethod
    def load(cls, path: str | os.PathLike, **meta: Any) -> "TruthScores":
        """Read our JSON format, a published ``.npy`` (layers, heads) array, or a published metrics CSV."""
        path = Path(path)
        if not path.is_file():
            raise ScoreFileError(f"score file not found: expected a .json, .npy or .csv file at {path}")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            scores = _load_published_npy(path)
        elif suffix == ".csv":
            scores = _load_published_csv(path)
        else:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ScoreFileError(f"{path}: not valid JSON (corrupt or truncated score file?): {exc}") from None
            scores = cls.from_dict(data, source=str(path))
        scores.meta.setdefault("source_file", str(path))
        scores.meta.update(meta)
        return scores


def _load_published_npy(path: Path) -> TruthScores:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for corrupt files
        raise ScoreFileError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    try:
        values = _as_2d_finite(arr, str(path))
    except ScoreFileError:
        raise
    return TruthScores(values, meta={"format": "published-npy", "metric": "cv5_val_accuracy"})


def _load_published_csv(path: Path) -> TruthScores:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in PUBLISHED_CSV_COLUMNS if c not in columns]
        if missing:
            raise ScoreFileError(
                f"{path}: expected columns {', '.join(PUBLISHED_CSV_COLUMNS)}, found {', '.join(columns) or 'none'}"
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                rows.append((int(row["layer"]), int(row["head"]), *(float(row[c]) for c in PUBLISHED_CSV_COLUMNS[2:])))
            except (TypeError, ValueError):
                raise ScoreFileError(f"{path}, line {i}: expected integer layer/head and numeric metrics, found {row}") from None
    if not rows:
        raise ScoreFileError(f"{path}: expected one row per head, found no rows")
    num_layers = max(r[0] for r in rows) + 1
    num_heads = max(r[1] for r in rows) + 1
    table = np.full((4, num_layers, num_heads), math.nan)
    for layer, head, *vals in rows:
        if layer < 0 or head < 0:
            raise ScoreFileError(f"{path}: negative layer/head index ({layer}, {head})")
        if not math.isnan(table[0, layer, head]):
            raise ScoreFileError(f"{path}: layer {layer}, head {head} appears more than once")
        table[:, layer, head] = vals
    if np.isnan(table[0]).any():
        l, h = np.argwhere(np.isnan(table[0]))[0]
        raise ScoreFileError(
            f"{path}: expected all {num_layers}x{num_heads} heads, found {len(rows)} rows (first missing: layer {l}, head {h})"
        )
    metrics = dict(zip(PUBLISHED_CSV_COLUMNS[2:], table))
    return TruthScores(metrics["accuracy"], meta={"format": "published-csv", "metric": "cv5_val_accuracy"}, metrics=metrics)


def load_scores(scores: "TruthScores | np.ndarray | str | os.PathLike") -> TruthScores:
    """Accept a ``TruthScores``, an array, or a path to any supported score file."""
    if isinstance(scores, TruthScores):
        return scores
    if isinstance(scores, (str, os.PathLike)):
        return TruthScores.load(scores)
    return TruthScores(np.asarray(scores))
