"""ITI direction files: per head a unit direction, the activations' spread along it, and the probe accuracy.

Format (JSON, written atomically)::

    {"format": "truthprobe-iti-directions", "version": 1,
     "meta": {"model", "architecture", "num_layers", "num_heads", "head_dim", "data", "questions",
              "direction": "mass_mean" | "probe", "folds", "seed", ...},
     "directions": [L][H][D],         # unit vectors: mean(true) - mean(false), or the probe's weight vector
     "sigma": [L][H],                 # std of the sigma set's activations projected on the direction
     "accuracy": [L][H],              # the head's probe accuracy (a Truth Score: it ranks the heads)
     "random_directions": [L][H][D],  # seeded random unit vectors (the random-direction control) ...
     "random_sigma": [L][H]}          # ... and the spread of the same activations along them

Directions and accuracies come from the training questions only. The sigma set is the training activations (preset
``ours``, ddof 0) or, as the published code does, another set of activations (preset ``paper``: the end-q prompts of
every question, ddof 1); ``meta["preset"]``, ``meta["sigma_source"]`` and ``meta["sigma_ddof"]`` say which.
``meta["tie_break"]`` says how ``top_heads`` orders equal accuracies (absent: lower index first).
``to_scores()`` gives the accuracies as ``TruthScores`` (heatmaps, lineage comparisons, and shape checks that name
both models, as for score files).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .artifacts import ArtifactFile
from .errors import ShapeMismatchError, TruthProbeError

FORMAT = "truthprobe-iti-directions"
ARRAYS = {"directions": 3, "sigma": 2, "accuracy": 2, "random_directions": 3, "random_sigma": 2}


class DirectionFileError(TruthProbeError, ValueError):
    """A direction file that cannot be read or holds inconsistent arrays."""


@dataclass
class ITIDirections(ArtifactFile):
    directions: np.ndarray  # (L, H, D)
    sigma: np.ndarray  # (L, H)
    accuracy: np.ndarray  # (L, H)
    random_directions: np.ndarray  # (L, H, D)
    random_sigma: np.ndarray  # (L, H)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, ndim in ARRAYS.items():
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.ndim != ndim or not np.isfinite(value).all():
                raise DirectionFileError(f"{name}: expected a finite {ndim}-d array, found shape {value.shape}"
                                         + ("" if np.isfinite(value).all() else " with NaN/inf"))
            setattr(self, name, value)
        shape = self.directions.shape
        for name in ARRAYS:
            want = shape if ARRAYS[name] == 3 else shape[:2]
            if getattr(self, name).shape != want:
                raise DirectionFileError(f"{name}: expected shape {want} (from directions), found "
                                         f"{getattr(self, name).shape}")
        for name in ("directions", "random_directions"):
            norms = np.linalg.norm(getattr(self, name), axis=-1)
            if not np.allclose(norms, 1.0, atol=1e-4):
                raise DirectionFileError(f"{name}: expected unit vectors, found norms from {norms.min():.4g} to "
                                         f"{norms.max():.4g}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.directions.shape)  # type: ignore[return-value]

    @property
    def model(self) -> str:
        return str(self.meta.get("model", "unknown model"))

    def check_fits(self, num_layers: int, num_heads: int, head_dim: int, model_name: str = "the model") -> None:
        if self.shape != (num_layers, num_heads, head_dim):
            raise ShapeMismatchError(
                f"ITI directions of {self.model} have shape {self.shape} (layers, heads, head dim), but {model_name} "
                f"has ({num_layers}, {num_heads}, {head_dim}): directions transfer only within a lineage of the same shape")

    def to_scores(self):
        from .scores import TruthScores

        return TruthScores(self.accuracy, meta={**self.meta, "metric": "iti_probe_accuracy"})

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The k heads of highest probe accuracy. Ties: lower layer, then lower head first; with
        ``meta["tie_break"] == "argsort_reversed"`` (preset ``paper``) as the published ``np.argsort(acc)[::-1]``
        leaves them (numpy's default sort is not stable: its tie order is numpy's)."""
        flat = self.accuracy.reshape(-1)
        if self.meta.get("tie_break") == "argsort_reversed":
            order = [int(i) for i in np.argsort(flat)[::-1][:k]]
        else:
            order = sorted(range(flat.size), key=lambda i: (-flat[i], i))[:k]
        heads = self.accuracy.shape[1]
        return [(i // heads, i % heads) for i in order]

    FORMAT, ARRAYS, ERROR, ALLOW_NAN = FORMAT, tuple(ARRAYS), DirectionFileError, True
    WHAT, SETTING = "an ITI direction file (truthprobe iti fit writes one)", "directions"

    def arrays(self) -> dict[str, Any]:
        return {name: np.round(getattr(self, name), 7).tolist() for name in self.ARRAYS}


def unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def projected_std(X: np.ndarray, d: np.ndarray, ddof: int = 0, chunk: int = 256) -> np.ndarray:
    """(L, H) std (``ddof``) over the N rows of (N, L, H, D) ``X`` projected on the (L, H, D) ``d``, in float64,
    ``chunk`` rows at a time (no float64 copy of X)."""
    n = len(X)
    if n <= ddof:
        raise DirectionFileError(f"sigma: expected more than {ddof} activation rows, found {n}")
    proj = np.concatenate([np.einsum("nlhd,lhd->nlh", np.asarray(X[i:i + chunk], dtype=np.float64), d)
                           for i in range(0, n, chunk)])
    return proj.std(axis=0, ddof=ddof)


def fit_directions(X: np.ndarray, y: np.ndarray, accuracy: np.ndarray, *, probe_weights: np.ndarray | None = None,
                   direction: str = "mass_mean", seed: int = 0, meta: dict | None = None,
                   sigma_X: np.ndarray | None = None, sigma_ddof: int = 0) -> ITIDirections:
    """Directions and spreads from (N, L, H, D) training activations and 0/1 labels (1 = true answer).

    ``mass_mean``: mean(true) - mean(false), normalized; ``probe``: the probe's weight vector (``probe_weights``).
    sigma (and random_sigma): the standard deviation of activations projected on the unit direction (on the random
    one): of ``X`` with ddof 0 (np.std) by default; of ``sigma_X`` (M, L, H, D), any rows, with ``sigma_ddof``
    when given (the published code: another prompt set, ``torch.std``, ddof 1).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    if X.ndim != 4 or len(y) != X.shape[0] or y.all() or not y.any():
        raise DirectionFileError(f"fit: expected (N, L, H, D) activations and N labels of both classes, found X "
                                 f"{X.shape} and {len(y)} labels ({int(y.sum())} true)")
    if direction == "mass_mean":
        d = unit(X[y].mean(axis=0) - X[~y].mean(axis=0))
    elif direction == "probe":
        if probe_weights is None:
            raise DirectionFileError("direction 'probe': expected the probes' weight vectors, found none")
        d = unit(np.asarray(probe_weights, dtype=np.float64))
    else:
        raise DirectionFileError(f"direction: expected mass_mean or probe, found {direction!r}")
    rand = unit(np.random.default_rng(seed).standard_normal(d.shape))
    if sigma_X is None and sigma_ddof == 0:  # the training activations themselves (bit-identical to earlier files)
        sigma = np.einsum("nlhd,lhd->nlh", X, d).std(axis=0)
        random_sigma = np.einsum("nlhd,lhd->nlh", X, rand).std(axis=0)
    else:
        S = X if sigma_X is None else sigma_X
        if np.ndim(S) != 4 or tuple(np.shape(S)[1:]) != X.shape[1:]:
            raise DirectionFileError(f"sigma activations: expected shape (M, {', '.join(map(str, X.shape[1:]))}), "
                                     f"found {np.shape(S)}")
        sigma, random_sigma = projected_std(S, d, sigma_ddof), projected_std(S, rand, sigma_ddof)
    extra = {} if sigma_X is None else {"n_sigma_examples": int(len(sigma_X))}
    return ITIDirections(d, sigma, np.asarray(accuracy, dtype=np.float64), rand, random_sigma,
                         meta={"direction": direction, "seed": seed, "n_examples": int(len(y)), **extra,
                               **(meta or {})})


__all__ = ["DirectionFileError", "FORMAT", "ITIDirections", "fit_directions", "projected_std"]
