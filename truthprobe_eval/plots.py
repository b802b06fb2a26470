"""Heatmaps of Truth Scores (matplotlib, headless)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .scores import TruthScores


def plot_heatmap(scores: TruthScores, path: "str | os.PathLike", title: str | None = None, top_k: int = 10) -> Path:
    """Layers x heads heatmap with the top-k heads outlined; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    v = scores.values
    fig_h = max(3.0, 0.18 * v.shape[0] + 1.2)
    fig_w = max(3.5, 0.35 * v.shape[1] + 2.0)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    im = ax.imshow(v, aspect="auto", cmap="viridis", origin="lower")
    for layer, head, _ in scores.top_k(top_k):
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"Truth Scores: {scores.model}\nmean {v.mean():.3f}, max {v.max():.3f} (top-{top_k} outlined)", fontsize=9)
    fig.colorbar(im, ax=ax, label=str(scores.meta.get("metric", "score")))
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out


def layer_bar(values: np.ndarray) -> str:
    """A one-line text sparkline of per-layer counts, for terminals."""
    bars = " ▁▂▃▄▅▆▇█"
    top = max(1, int(np.max(values)))
    return "".join(bars[min(8, int(round(8 * x / top)))] for x in values)


def plot_neuron_map(neurons, path: "str | os.PathLike", title: str | None = None, bins: int = 64,
                    head_scores: TruthScores | None = None, top_heads: int | None = None) -> Path:
    """Selected truth neurons per layer: a layers x neuron-index heatmap (counts in ``bins`` index bins) beside
    the per-layer count; with ``head_scores``, the number of top Truth-Score heads per layer next to it."""
    from .analysis.reports import pyplot, save_figure

    plt = pyplot()
    L, W = neurons.shape
    bins = max(1, min(bins, W))
    edges = np.linspace(0, W, bins + 1).astype(int)
    binned = np.add.reduceat(neurons.selected.astype(int), edges[:-1], axis=1)
    counts = neurons.layer_counts()
    panels = 3 if head_scores is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 + 2.2 * panels, max(3.0, 0.16 * L + 1.4)), sharey=True,
                             gridspec_kw={"width_ratios": [3] + [1] * (panels - 1)})
    im = axes[0].imshow(binned, aspect="auto", origin="lower", cmap="magma", extent=(0, W, -0.5, L - 0.5))
    axes[0].set_xlabel("MLP neuron index")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0], label=f"selected per {W // bins} neurons")
    axes[1].barh(np.arange(L), counts, color="tab:purple")
    p_threshold = neurons.meta.get("p_threshold")
    if p_threshold and neurons.meta.get("top_n") is None:  # what an uncorrected test passes by chance alone
        axes[1].axvline(float(p_threshold) * W, color="black", linestyle="--", linewidth=0.8)
        axes[1].text(float(p_threshold) * W, L - 0.5, " chance", fontsize=7, va="top")
    axes[1].set_xlabel("truth neurons")
    if head_scores is not None:
        k = top_heads or L
        axes[2].barh(np.arange(L), head_scores.layer_counts(k), color="tab:blue")
        axes[2].set_xlabel(f"top-{k} Truth-Score heads")
    meta = neurons.meta
    fig.suptitle(title or f"Truth neurons of {neurons.model}: {neurons.count} of {L * W} "
                 f"(p < {meta.get('p_threshold', '?')}, {meta.get('n_questions', '?')} questions)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
