"""Neuron score files: per MLP neuron the mean truthfulness attribution, its t statistic, p-value and selection.

Format (JSON, written atomically)::

    {"format": "truthprobe-neuron-scores", "version": 1,
     "meta": {"model", "architecture", "num_layers", "mlp_width", "data", "questions", "steps",
              "p_threshold", "top_n", "test": "one-sample t-test, one-sided (mean > 0)", ...},
     "mean": [L][W],       # mean over questions of IG(correct) - IG(incorrect)
     "t": [L][W],          # one-sample t statistic across questions (0 where every attribution is equal)
     "p": [L][W],          # its one-sided p-value (1 where t is 0 by definition)
     "selected": [L][W]}   # 1 for a truth neuron: p < p_threshold (and among the top_n by mean when capped)

``NeuronScores.reselect(p_threshold, top_n)`` changes the selection without attributing again.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .artifacts import ArtifactFile
from .errors import ShapeMismatchError, TruthProbeError

FORMAT = "truthprobe-neuron-scores"
ARRAYS = ("mean", "t", "p", "selected")
TEST = "one-sample t-test across questions, one-sided (mean > 0), scipy.stats.ttest_1samp"


class NeuronFileError(TruthProbeError, ValueError):
    """A neuron score file that cannot be read or holds inconsistent arrays."""


@dataclass
class NeuronScores(ArtifactFile):
    mean: np.ndarray  # (L, W)
    t: np.ndarray  # (L, W)
    p: np.ndarray  # (L, W)
    selected: np.ndarray  # (L, W) bool
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ARRAYS:
            value = np.asarray(getattr(self, name), dtype=bool if name == "selected" else np.float64)
            if value.ndim != 2 or (value.dtype != bool and not np.isfinite(value).all()):
                raise NeuronFileError(f"{name}: expected a finite 2-d (layers, neurons) array, found shape "
                                      f"{value.shape}" + ("" if value.ndim != 2 else " with NaN/inf"))
            setattr(self, name, value)
        for name in ARRAYS[1:]:
            if getattr(self, name).shape != self.mean.shape:
                raise NeuronFileError(f"{name}: expected shape {self.mean.shape} (from mean), found "
                                      f"{getattr(self, name).shape}")
        if ((self.p < 0) | (self.p > 1)).any():
            raise NeuronFileError(f"p: expected p-values in [0, 1], found {self.p.min():.3g} to {self.p.max():.3g}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mean.shape)  # type: ignore[return-value]

    @property
    def model(self) -> str:
        return str(self.meta.get("model", "unknown model"))

    @property
    def count(self) -> int:
        return int(self.selected.sum())

    def layer_counts(self) -> np.ndarray:
        """Selected neurons per layer."""
        return self.selected.sum(axis=1)

    def indices(self) -> dict[int, np.ndarray]:
        """Layer -> the selected neurons' indices (layers without any left out)."""
        return {int(layer): np.flatnonzero(row) for layer, row in enumerate(self.selected) if row.any()}

    def check_fits(self, num_layers: int, mlp_width: int, model_name: str = "the model") -> None:
        if self.shape != (num_layers, mlp_width):
            raise ShapeMismatchError(
                f"neuron scores of {self.model} have shape {self.shape} (layers, MLP neurons), but {model_name} has "
                f"({num_layers}, {mlp_width}): neuron scores transfer only within a lineage of the same shape")

    def reselect(self, p_threshold: float = 0.05, top_n: int | None = None) -> "NeuronScores":
        """The same statistics with another selection rule."""
        selected = selection(self.mean, self.t, self.p, p_threshold, top_n)
        return NeuronScores(self.mean, self.t, self.p, selected,
                            meta={**self.meta, "p_threshold": p_threshold, "top_n": top_n,
                                  **multiple_testing(self.p, p_threshold)})

    FORMAT, ARRAYS, ERROR = FORMAT, ARRAYS, NeuronFileError
    WHAT, SETTING = "a neuron score file (truthprobe neurons find writes one)", "neurons"

    def arrays(self) -> dict[str, Any]:
        return {**{name: getattr(self, name).tolist() for name in self.ARRAYS[:3]},
                "selected": self.selected.astype(int).tolist()}

    def before_save(self) -> None:
        self.meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.meta["num_layers"], self.meta["mlp_width"] = self.shape
        self.meta["n_selected"] = self.count


def selection(mean: np.ndarray, t: np.ndarray, p: np.ndarray, p_threshold: float = 0.05,
              top_n: int | None = None) -> np.ndarray:
    """Neurons with p < ``p_threshold`` (one-sided, so a positive mean); with ``top_n``, the ``top_n`` of largest
    mean attribution among them (the strongest effects; t ranks the evidence, not the size)."""
    if not 0 < p_threshold <= 1:
        raise NeuronFileError(f"p_threshold: expected a level in (0, 1], found {p_threshold!r}")
    if top_n is not None and top_n < 0:
        raise NeuronFileError(f"top_n: expected a non-negative count, found {top_n!r}")
    keep = (p < p_threshold) & (t > 0)
    if top_n is not None and keep.sum() > top_n:
        flat = np.where(keep, mean, -np.inf).ravel()
        order = np.lexsort((np.arange(flat.size), -flat))[:top_n]  # ties: lower layer / index first
        keep = np.zeros(flat.size, dtype=bool)
        keep[order] = True
        keep = keep.reshape(t.shape)
    return keep


def select_neurons(diffs: np.ndarray, p_threshold: float = 0.05, top_n: int | None = None,
                   meta: dict | None = None) -> NeuronScores:
    """(N questions, L, W) attribution differences -> ``NeuronScores`` (t-test across the questions)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 3 or diffs.shape[0] < 2:
        raise NeuronFileError(f"attributions: expected (questions >= 2, layers, neurons), found shape {diffs.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        t, p = stats.ttest_1samp(diffs, 0.0, axis=0, alternative="greater")
    constant = ~np.isfinite(t)  # zero variance: no evidence either way
    t, p = np.where(constant, 0.0, t), np.where(constant, 1.0, p)
    mean = diffs.mean(axis=0)
    return NeuronScores(mean, t, p, selection(mean, t, p, p_threshold, top_n),
                        meta={**(meta or {}), "test": TEST, "p_threshold": p_threshold, "top_n": top_n,
                              "n_questions": int(diffs.shape[0]), **multiple_testing(p, p_threshold)})


def multiple_testing(p: np.ndarray, p_threshold: float) -> dict[str, Any]:
    """How many neurons pass by chance alone (``p_threshold`` x the number tested, under the null) and how many
    survive Benjamini-Hochberg at the same level (``scipy.stats.false_discovery_control``): the selection itself
    is uncorrected, as in the paper; these two numbers say how much of it is signal."""
    from scipy import stats

    return {"expected_by_chance": float(p_threshold * p.size),
            "n_bh": int((stats.false_discovery_control(p.ravel()) < p_threshold).sum())}


def layer_overlap(neurons: NeuronScores, scores: Any, top_layers: int = 5, top_heads: int | None = None
                  ) -> dict[str, Any]:
    """Do truth neurons sit where the top Truth-Score heads sit? Per layer: the selected-neuron count and the
    number of top heads (``top_heads``, default as many as there are layers); the ``top_layers`` layers of each
    and their overlap (Jaccard, with the hypergeometric chance of at least that overlap), and Spearman's rank
    correlation of the two per-layer counts."""
    from scipy import stats

    L = neurons.shape[0]
    if scores.num_layers != L:
        raise ShapeMismatchError(f"layer overlap: neuron scores have {L} layers, Truth Scores {scores.num_layers}")
    k = top_heads or L
    counts = neurons.layer_counts().astype(int)
    heads = scores.layer_counts(k).astype(int)

    def top(values: np.ndarray) -> list[int]:
        return sorted(int(i) for i in np.lexsort((np.arange(L), -values))[:top_layers])

    a, b = top(counts), top(heads)
    shared = sorted(set(a) & set(b))
    p_overlap = float(stats.hypergeom.sf(len(shared) - 1, L, top_layers, top_layers))
    rho, p_rho = stats.spearmanr(counts, heads) if counts.std() and heads.std() else (float("nan"), float("nan"))
    return {"neuron_layer_counts": counts.tolist(), "top_head_layer_counts": heads.tolist(), "top_heads": k,
            "top_layers": top_layers, "neuron_top_layers": a, "head_top_layers": b, "shared_layers": shared,
            "jaccard": len(shared) / len(set(a) | set(b)), "p_overlap_at_least": p_overlap,
            "spearman_rho": float(rho), "spearman_p": float(p_rho)}


__all__ = ["FORMAT", "NeuronFileError", "NeuronScores", "layer_overlap", "multiple_testing", "select_neurons",
           "selection"]
