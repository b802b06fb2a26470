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
