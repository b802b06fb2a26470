"""Cross-family alignment of probes (the published appendix's method).

Each model's probe weights (one vector of head_dim D per head) are stacked as head-level vectors, mean-centred
over heads and L2-normalized per head. An orthogonal Procrustes rotation R (D x D, scipy) maps A's normalized
vectors onto B's paired heads. A's probes, before and after rotation, are then scored on B's cached
activations at the paired heads (AUROC of the projection: threshold-free, so the dropped bias does not matter),
and the per-head results are correlated with B's Truth Scores. A control fits the rotation with A's vectors
paired to randomly chosen heads of B: B's probe directions were trained on B's activations, so a rotation fit to
them can carry some of B's signal by itself; the aligned probes mean something only above that control.

Heads are paired by position when the two models have the same (layers, heads); otherwise by relative depth
(A's layer ``round(l_B * (L_A - 1) / (L_B - 1))``) and head index scaled to A's head count. Both need the same
head_dim. Neither A's probes nor the rotation saw B's activations, so all of B's cached examples are held out
for the transferred probes; B's own probes, listed as a reference, were trained on them.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TruthProbeError
from ..scores import TruthScores
from . import reports


class AlignError(TruthProbeError, ValueError):
    """Inputs missing or unfit for the alignment analysis."""


def head_vectors(scores: TruthScores, name: str = "scores") -> np.ndarray:
    """Probe weights as (L * H, D) head-level vectors; a clear error if the file has none."""
    if scores.probe_weights is None:
        raise AlignError(f"{name} ({scores.meta.get('source_file', scores.model)}) has no probe weights: expected "
                         "'probe_weights' (layers, heads, head_dim) in the score file; published .npy/.csv files and "
                         "score files written without weights cannot be aligned. Re-probe with `truthprobe probe`.")
    w = np.asarray(scores.probe_weights, dtype=np.float64)
    return w.reshape(-1, w.shape[-1])


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Mean-centre over heads, then scale each head's vector to unit length (all-zero rows stay zero)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


def pair_heads(shape_a: tuple[int, int], shape_b: tuple[int, int]) -> np.ndarray:
    """For each head of B (flattened, (L_B * H_B,)), the flat index of its paired head in A."""
    (la, ha), (lb, hb) = shape_a, shape_b
    layers = np.arange(lb) if la == lb else np.rint(np.arange(lb) * (la - 1) / max(1, lb - 1)).astype(int)
    heads = np.arange(hb) if ha == hb else (np.arange(hb) * ha) // hb
    return (layers[:, None] * ha + heads[None, :]).ravel()


def fit_rotation(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal R minimizing ||source @ R - target||_F."""
    from scipy.linalg import orthogonal_procrustes

    rotation, _ = orthogonal_procrustes(source, target)
    return rotation


def auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC per column of ``scores`` (N, K) for labels ``y`` (N,), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise AlignError(f"expected both labels in B's activations, found {n_pos} positive and {n_neg} negative")
    ranks = rankdata(scores, axis=0)
    return (ranks[y].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def probe_auroc(X: np.ndarray, y: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """AUROC of each head's probe direction on that head's activations: X (N, L, H, D), directions (L*H, D)."""
    n, L, H, D = X.shape
    proj = np.einsum("nkd,kd->nk", X.reshape(n, L * H, D).astype(np.float64), directions)
    return auroc(proj, y).reshape(L, H)


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.pearsonr(a, b).statistic), float(stats.spearmanr(a, b).statistic)


@dataclass
class AlignResult:
    name_a: str
    name_b: str
    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    pairing: str
    rotation: np.ndarray  # (D, D)
    cos_before: np.ndarray  # (L_B, H_B): cosine of A's paired vector with B's, before rotation
    cos_after: np.ndarray
    auroc_before: np.ndarray  # (L_B, H_B): A's probe on B's activations, unrotated
    auroc_after: np.ndarray  # A's probe rotated into B's basis
    auroc_own: np.ndarray  # B's own probe direction (reference; trained on these activations)
    auroc_shuffled: np.ndarray  # control: rotation fit with A's head vectors randomly re-paired
    cos_shuffled: np.ndarray
    scores_b: np.ndarray  # B's Truth Scores
    scores_a_paired: np.ndarray  # A's Truth Scores at the paired heads
    n_examples: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        rows = {}
        for name, mat in (("before", self.auroc_before), ("after", self.auroc_after)):
            p, s = _corr(mat, self.scores_b)
            rows[name] = {"mean_cosine": float((self.cos_before if name == "before" else self.cos_after).mean()),
                          "mean_auroc": float(mat.mean()), "pearson_vs_b_scores": p, "spearman_vs_b_scores": s}
        p, s = _corr(self.auroc_shuffled, self.scores_b)
        rows["shuffled_control"] = {"mean_cosine": float(self.cos_shuffled.mean()), "mean_auroc": float(self.auroc_shuffled.mean()),
                                    "pearson_vs_b_scores": p, "spearman_vs_b_scores": s}
        p, s = _corr(self.auroc_own, self.scores_b)
        rows["b_own"] = {"mean_cosine": 1.0, "mean_auroc": float(self.auroc_own.mean()), "pearson_vs_b_scores": p,
                         "spearman_vs_b_scores": s}
        p, s = _corr(self.scores_a_paired, self.scores_b)
        rows["truth_scores"] = {"pearson_a_vs_b": p, "spearman_a_vs_b": s}
        rows["n_examples"] = self.n_examples
        rows["pairing"] = self.pairing
        return rows


def align(scores_a: TruthScores, scores_b: TruthScores, X_b: np.ndarray, y_b: np.ndarray,
          name_a: str = "A", name_b: str = "B", seed: int = 0) -> AlignResult:
    """Procrustes-align A's probes to B's and score them on B's activations ``X_b`` (N, L_B, H_B, D)."""
    va, vb = head_vectors(scores_a, name_a), head_vectors(scores_b, name_b)
    if va.shape[1] != vb.shape[1]:
        raise AlignError(f"head_dim differs: {name_a} has {va.shape[1]}, {name_b} has {vb.shape[1]}; an orthogonal "
                         "rotation needs vectors of one size")
    X_b = np.asarray(X_b)
    if X_b.ndim != 4 or X_b.shape[1:] != (*scores_b.shape, vb.shape[1]):
        raise AlignError(f"{name_b}'s activations: expected shape (N, {scores_b.shape[0]}, {scores_b.shape[1]}, "
                         f"{vb.shape[1]}) to match its score file, found {X_b.shape}")
    if len(y_b) != X_b.shape[0]:
        raise AlignError(f"{name_b}'s activations: {X_b.shape[0]} examples but {len(y_b)} labels")
    notes = []
    same = scores_a.shape == scores_b.shape
    pairing = "position" if same else "relative depth"
    if not same:
        notes.append(f"shapes differ ({scores_a.shape} vs {scores_b.shape}): heads paired by relative depth")
    pair = pair_heads(scores_a.shape, scores_b.shape)
    na, nb = normalize(va), normalize(vb)
    source = na[pair]
    if np.linalg.matrix_rank(source) < source.shape[1]:
        notes.append(f"only {np.linalg.matrix_rank(source)} independent head vectors for head_dim {source.shape[1]}: "
                     "the rotation is not unique")
    R = fit_rotation(source, nb)
    after = source @ R
    # control: the rotation fit to B's probes from A's vectors paired with the wrong heads. What it reaches
    # comes from fitting B's probe directions (themselves trained on B's activations), not from shared structure.
    shuffled = source[np.random.default_rng(seed).permutation(len(source))]
    control = shuffled @ fit_rotation(shuffled, nb)
    L, H = scores_b.shape
    return AlignResult(
        name_a, name_b, scores_a.shape, scores_b.shape, pairing, R,
        cos_before=np.einsum("kd,kd->k", source, nb).reshape(L, H),
        cos_after=np.einsum("kd,kd->k", after, nb).reshape(L, H),
        auroc_before=probe_auroc(X_b, y_b, source),
        auroc_after=probe_auroc(X_b, y_b, after),
        auroc_own=probe_auroc(X_b, y_b, nb),
        auroc_shuffled=probe_auroc(X_b, y_b, control),
        cos_shuffled=np.einsum("kd,kd->k", control, nb).reshape(L, H),
        scores_b=scores_b.values,
        scores_a_paired=scores_a.values.ravel()[pair].reshape(L, H),
        n_examples=int(X_b.shape[0]),
        notes=notes,
    )


def activations_for(scores: TruthScores, cache_dir: "str | os.PathLike | None" = None, name: str = "B"):
    """(X, y) from the activation cache a score file records (``meta['activation_cache']``) or ``cache_dir``."""
    from ..probing.cache import ActivationCacheError, load_activations

    folder = cache_dir or scores.meta.get("activation_cache")
    if not folder:
        raise AlignError(f"{name} ({scores.meta.get('source_file', scores.model)}) records no activation cache: expected "
                         "meta['activation_cache'] in the score file (probe with a cache) or pass --activations DIR")
    try:
        X, y, _, _ = load_activations(folder)
    except ActivationCacheError as exc:
        raise AlignError(f"{name}'s activations: {exc}") from None
    return X, y


def align_files(path_a: "str | os.PathLike", path_b: "str | os.PathLike",
                activations_b: "str | os.PathLike | None" = None) -> AlignResult:
    a, b = TruthScores.load(path_a), TruthScores.load(path_b)
    head_vectors(a, f"A ({path_a})")  # fail on missing weights before reading activations
    head_vectors(b, f"B ({path_b})")
    X, y = activations_for(b, activations_b, f"B ({path_b})")
    return align(a, b, X, y, Path(path_a).stem, Path(path_b).stem)


HEAD_HEADERS = ["layer", "head", "paired_a_layer", "paired_a_head", "cos_before", "cos_after", "auroc_before",
                "auroc_after", "auroc_b_own", "truth_score_b", "truth_score_a_paired"]


def head_rows(result: AlignResult) -> list[list]:
    L, H = result.shape_b
    pair = pair_heads(result.shape_a, result.shape_b)
    ha = result.shape_a[1]
    return [[l, h, int(pair[l * H + h] // ha), int(pair[l * H + h] % ha), result.cos_before[l, h], result.cos_after[l, h],
             result.auroc_before[l, h], result.auroc_after[l, h], result.auroc_own[l, h], result.scores_b[l, h],
             result.scores_a_paired[l, h]] for l in range(L) for h in range(H)]


def to_markdown(result: AlignResult) -> str:
    s = result.summary()
    body = [[label, s[key]["mean_cosine"], s[key]["mean_auroc"], s[key]["pearson_vs_b_scores"], s[key]["spearman_vs_b_scores"]]
            for label, key in ((f"{result.name_a}'s probes, unrotated", "before"),
                               (f"{result.name_a}'s probes, Procrustes-aligned", "after"),
                               ("control: rotation fit with heads randomly re-paired", "shuffled_control"),
                               (f"{result.name_b}'s own probes (reference, not held out)", "b_own"))]
    out = [f"# Probe alignment: {result.name_a} -> {result.name_b}", "",
           f"- shapes: {result.name_a} {result.shape_a[0]}x{result.shape_a[1]}, {result.name_b} "
           f"{result.shape_b[0]}x{result.shape_b[1]} (heads paired by {result.pairing}), head_dim {result.rotation.shape[0]}",
           f"- scored on {result.n_examples} cached examples of {result.name_b}",
           f"- Truth Scores of {result.name_a} (paired heads) vs {result.name_b}: Pearson "
           f"{reports.fmt(s['truth_scores']['pearson_a_vs_b'], 3)}, Spearman {reports.fmt(s['truth_scores']['spearman_a_vs_b'], 3)}",
           "", reports.markdown_table(["probes", "mean cosine with B's probes", "mean AUROC on B",
                                       "Pearson (AUROC vs B's Truth Scores)", "Spearman"], body, digits=3)]
    if result.notes:
        out += ["", "Notes:", *[f"- {n}" for n in result.notes]]
    return "\n".join(out) + "\n"


def write_outputs(result: AlignResult, out_dir: "str | os.PathLike") -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "markdown": reports.write_text(out / "align.md", to_markdown(result)),
        "heads": reports.write_csv(out / "align_heads.csv", HEAD_HEADERS, head_rows(result)),
        "summary": reports.write_text(out / "align_summary.json", json.dumps(result.summary(), indent=2)),
        "rotation": reports.write_csv(out / "rotation.csv", [f"d{j}" for j in range(result.rotation.shape[1])],
                                      result.rotation.tolist()),
    }
