"""Inheritance of Truth Scores: how alike are the score maps of several models?

For every group of score files with the same (layers, heads) shape: Pearson and Spearman correlation
matrices over the flattened maps, top-k overlap (Jaccard), and, per file, the share of its top-k heads in
each layer band. Files whose shape no other file shares are reported as not comparable, never dropped.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import TruthProbeError
from ..scores import TruthScores
from . import reports

DEFAULT_KS = (10, 20, 50)


class CompareError(TruthProbeError, ValueError):
    """Score files that cannot be compared as asked."""


@dataclass
class ScoreEntry:
    label: str
    source: str
    scores: TruthScores

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape


@dataclass
class ShapeGroup:
    """Files of one shape and their pairwise statistics (matrices indexed like ``labels``)."""

    shape: tuple[int, int]
    labels: list[str]
    pearson: np.ndarray
    pearson_p: np.ndarray
    spearman: np.ndarray
    spearman_p: np.ndarray
    jaccard: dict[int, np.ndarray]  # k -> (n, n)
    skipped_ks: list[int] = field(default_factory=list)  # k >= number of heads: overlap would be trivially 1

    @property
    def name(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"


@dataclass
class CompareResult:
    entries: list[ScoreEntry]
    groups: list[ShapeGroup]
    not_comparable: list[tuple[str, tuple[int, int], list[str]]]  # (label, shape, labels of other shapes)
    bands: list[tuple[int, int]]  # (first layer, last layer) per band, for the first entry's depth
    band_shares: dict[str, dict[int, np.ndarray]]  # label -> k -> share per band
    ks: tuple[int, ...]
    notes: list[str] = field(default_factory=list)

    def pair_rows(self) -> list[list]:
        """One row per compared pair: a, b, shape, pearson, p, spearman, p, jaccard@k..."""
        rows = []
        for g in self.groups:
            for i in range(len(g.labels)):
                for j in range(i + 1, len(g.labels)):
                    row = [g.labels[i], g.labels[j], g.name, g.pearson[i, j], g.pearson_p[i, j], g.spearman[i, j], g.spearman_p[i, j]]
                    row += [g.jaccard[k][i, j] if k in g.jaccard else None for k in self.ks]
                    rows.append(row)
        return rows

    def pair_headers(self) -> list[str]:
        return ["a", "b", "shape", "pearson", "pearson_p", "spearman", "spearman_p", *[f"jaccard_top{k}" for k in self.ks]]


def _label_for(scores: TruthScores, source: str) -> str:
    model = scores.meta.get("model")
    if model and model != "unknown model":
        return str(model).rstrip("/").split("/")[-1]
    return Path(source).stem if source else "scores"


def load_entries(paths: Sequence["str | os.PathLike | TruthScores"], labels: Sequence[str] | None = None) -> list[ScoreEntry]:
    """Load score files (our JSON, published .npy or cv5_head_metrics.csv) with unique display labels."""
    if labels is not None and len(labels) != len(paths):
        raise CompareError(f"expected one label per score file ({len(paths)}), found {len(labels)} labels")
    loaded = []
    for p in paths:
        if isinstance(p, TruthScores):
            loaded.append((p, str(p.meta.get("source_file", ""))))
        else:
            loaded.append((TruthScores.load(p), str(p)))
    names = list(labels) if labels is not None else [_label_for(s, src) for s, src in loaded]
    return [ScoreEntry(lab, src, s) for lab, (s, src) in zip(reports.unique_labels(names), loaded)]


def top_k_set(scores: TruthScores, k: int) -> set[tuple[int, int]]:
    return {(layer, head) for layer, head, _ in scores.top_k(k)}


def jaccard(a: set, b: set) -> float:
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def layer_bands(num_layers: int, n_bands: int) -> list[tuple[int, int]]:
    """Split layers 0..L-1 into ``n_bands`` contiguous bands of near-equal size: (first, last) per band."""
    if not 1 <= n_bands <= num_layers:
        raise CompareError(f"expected 1 <= bands <= {num_layers} (the number of layers), found {n_bands}")
    return [(int(c[0]), int(c[-1])) for c in np.array_split(np.arange(num_layers), n_bands)]


def band_shares(scores: TruthScores, k: int, n_bands: int) -> np.ndarray:
    """Share of the top-k heads that sit in each layer band (sums to 1)."""
    counts = scores.layer_counts(min(k, scores.values.size))
    return np.array([counts[a : b + 1].sum() for a, b in layer_bands(scores.num_layers, n_bands)]) / max(1, counts.sum())


def _pairwise(values: list[np.ndarray], fn) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    stat, pval = np.eye(n), np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN, reported as n/a
                r = fn(values[i], values[j])
            stat[i, j] = stat[j, i] = float(r.statistic)
            pval[i, j] = pval[j, i] = float(r.pvalue)
    for i, v in enumerate(values):
        if np.ptp(v) == 0:
            stat[i, :] = stat[:, i] = np.nan
            pval[i, :] = pval[:, i] = np.nan
    return stat, pval


def compare(entries: Sequence[ScoreEntry], ks: Sequence[int] = DEFAULT_KS, n_bands: int = 3) -> CompareResult:
    """All statistics for ``entries`` (see module docstring)."""
    from scipy import stats

    if len(entries) < 2:
        raise CompareError(f"expected at least two score files to compare, found {len(entries)}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise CompareError(f"expected top-k sizes >= 1, found {list(ks)}")
    by_shape: dict[tuple[int, int], list[ScoreEntry]] = {}
    for e in entries:
        by_shape.setdefault(e.shape, []).append(e)

    notes: list[str] = []
    groups = []
    for shape, members in by_shape.items():
        if len(members) < 2:
            continue
        flat = [m.scores.values.ravel() for m in members]
        pearson, pearson_p = _pairwise(flat, stats.pearsonr)
        spearman, spearman_p = _pairwise(flat, stats.spearmanr)
        for m, v in zip(members, flat):
            if np.ptp(v) == 0:
                notes.append(f"{m.label}: all scores are equal, so its correlations are undefined (n/a)")
        n_heads = shape[0] * shape[1]
        jac, skipped = {}, []
        for k in ks:
            if k >= n_heads:
                skipped.append(k)
                continue
            sets = [top_k_set(m.scores, k) for m in members]
            jac[k] = np.array([[jaccard(a, b) for b in sets] for a in sets])
        if skipped:
            notes.append(f"shape {shape[0]}x{shape[1]}: top-k overlap for k = {skipped} skipped (only {n_heads} heads)")
        groups.append(ShapeGroup(shape, [m.label for m in members], pearson, pearson_p, spearman, spearman_p, jac, skipped))

    not_comparable = []
    for e in entries:
        others = [o.label for o in entries if o.shape != e.shape]
        if others:
            not_comparable.append((e.label, e.shape, others))

    min_layers = min(e.scores.num_layers for e in entries)
    if n_bands > min_layers:
        notes.append(f"{n_bands} layer bands asked, but a file has only {min_layers} layers: using {min_layers} bands")
        n_bands = min_layers
    shares = {e.label: {k: band_shares(e.scores, k, n_bands) for k in ks} for e in entries}
    bands = layer_bands(entries[0].scores.num_layers, n_bands)
    return CompareResult(list(entries), groups, not_comparable, bands, shares, ks, notes)


# ---- reports -------------------------------------------------------------------------------------------
def band_names(n_bands: int) -> list[str]:
    named = {2: ["early", "late"], 3: ["early", "middle", "late"], 4: ["first quarter", "second quarter", "third quarter", "last quarter"]}
    return named.get(n_bands, [f"band {i + 1}" for i in range(n_bands)])


def to_markdown(result: CompareResult) -> str:
    out = ["# Truth Score comparison", ""]
    out.append(reports.markdown_table(
        ["label", "shape", "source", "mean", "max"],
        [[e.label, f"{e.shape[0]}x{e.shape[1]}", e.source, e.scores.values.mean(), e.scores.values.max()] for e in result.entries],
    ))
    for g in result.groups:
        out += ["", f"## Files of shape {g.name} (layers x heads)", "", "### Pearson correlation", "",
                reports.matrix_table(g.labels, g.pearson), "", "### Spearman correlation", "",
                reports.matrix_table(g.labels, g.spearman)]
        for k, mat in g.jaccard.items():
            out += ["", f"### Top-{k} overlap (Jaccard)", "", reports.matrix_table(g.labels, mat)]
    if result.pair_rows():
        rows = [[*r[:4], reports.fmt_p(r[4]), r[5], reports.fmt_p(r[6]), *r[7:]] for r in result.pair_rows()]
        out += ["", "## Pairs", "", reports.markdown_table(result.pair_headers(), rows)]
    n_bands = len(result.bands)
    size_of = {e.label: e.scores.values.size for e in result.entries}
    out += ["", f"## Share of top-k heads per layer band ({n_bands} bands of each model's depth)", ""]
    out.append(reports.markdown_table(
        ["label", "k", *band_names(n_bands)],
        [[lab, min(k, size_of[lab]), *[f"{s:.0%}" for s in shares[k]]] for lab, shares in result.band_shares.items() for k in result.ks],
    ))
    out += ["", "## Not comparable", ""]
    if result.not_comparable:
        out.append(reports.markdown_table(
            ["label", "shape", "not comparable with (different shape)"],
            [[lab, f"{s[0]}x{s[1]}", ", ".join(others)] for lab, s, others in result.not_comparable],
        ))
    else:
        out.append("All files have the same shape.")
    if result.notes:
        out += ["", "## Notes", "", *[f"- {n}" for n in result.notes]]
    return "\n".join(out) + "\n"


def plot_heatmap_grid(entries: Sequence[ScoreEntry], path: "str | os.PathLike") -> Path:
    """One layers x heads heatmap per file, all on one shared color scale."""
    plt = reports.pyplot()
    n = len(entries)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    vmin = min(float(e.scores.values.min()) for e in entries)
    vmax = max(float(e.scores.values.max()) for e in entries)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1.0, 4.0 * rows), squeeze=False, layout="constrained")
    im = None
    for ax, e in zip(axes.ravel(), entries):
        im = ax.imshow(e.scores.values, aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(f"{e.label}\n({e.shape[0]}x{e.shape[1]}, mean {e.scores.values.mean():.3f})", fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="Truth Score (shared scale)", shrink=0.8)
    return reports.save_figure(fig, path)


def plot_correlations(result: CompareResult, path: "str | os.PathLike") -> Path:
    """Pearson and Spearman matrices side by side, one row per shape group."""
    plt = reports.pyplot()
    groups = result.groups
    if not groups:
        raise CompareError("no two score files share a shape: nothing to plot")
    size = max(3.5, 0.6 * max(len(g.labels) for g in groups) + 2.5)
    fig, axes = plt.subplots(len(groups), 2, figsize=(2 * size + 1.0, size * len(groups)), squeeze=False,
                             layout="constrained")
    im = None
    for row, g in zip(axes, groups):
        for ax, (name, mat) in zip(row, (("Pearson", g.pearson), ("Spearman", g.spearman))):
            im = ax.imshow(mat, vmin=-1, vmax=1, cmap="coolwarm")
            n = len(g.labels)
            ax.set_xticks(range(n), g.labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(n), g.labels, fontsize=8)
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, reports.fmt(mat[i, j], 2), ha="center", va="center", fontsize=7)
            ax.set_title(f"{name} ({g.name})", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="correlation")
    return reports.save_figure(fig, path)


def write_outputs(result: CompareResult, out_dir: "str | os.PathLike", plots: bool = True) -> dict[str, Path]:
    """Write compare.md, pairs.csv, per-shape matrices, layer_bands.csv, files.csv and the PNGs."""
    out = Path(out_dir)
    written = {"markdown": reports.write_text(out / "compare.md", to_markdown(result))}
    written["pairs"] = reports.write_csv(out / "pairs.csv", result.pair_headers(), result.pair_rows())
    for g in result.groups:
        written[f"pearson_{g.name}"] = reports.write_matrix_csv(out / f"pearson_{g.name}.csv", g.labels, g.pearson)
        written[f"spearman_{g.name}"] = reports.write_matrix_csv(out / f"spearman_{g.name}.csv", g.labels, g.spearman)
        for k, mat in g.jaccard.items():
            written[f"jaccard_top{k}_{g.name}"] = reports.write_matrix_csv(out / f"jaccard_top{k}_{g.name}.csv", g.labels, mat)
    names = band_names(len(result.bands))
    size_of = {e.label: e.scores.values.size for e in result.entries}
    written["bands"] = reports.write_csv(
        out / "layer_bands.csv", ["label", "k", *names],
        [[lab, min(k, size_of[lab]), *map(float, s[k])] for lab, s in result.band_shares.items() for k in result.ks],
    )
    nc = {lab: others for lab, _, others in result.not_comparable}
    written["files"] = reports.write_csv(
        out / "files.csv", ["label", "source", "layers", "heads", "not_comparable_with"],
        [[e.label, e.source, e.shape[0], e.shape[1], ";".join(nc.get(e.label, []))] for e in result.entries],
    )
    if plots:
        written["heatmaps"] = plot_heatmap_grid(result.entries, out / "heatmaps.png")
        if result.groups:
            written["correlation"] = plot_correlations(result, out / "correlation.png")
    return written
