"""Ablations that run the harness and collect the results (what ``truthprobe ablate`` runs).

- ``random_gate_ablation``: the Truth-Score gate against random gates of the same alpha and norm over several seeds
  (mean and standard deviation, as the published appendix reports them), plus the ungated baseline.
- ``grid_search``: alpha and norm on a held-out validation slice (the published grid by default).
- ``probing_regime``: how the number of probing rows N and the published trainer's epochs change the scores
  (mean, agreement with the largest setting) and the gated model on a validation slice.

Each evaluates HaluEval QA judge rows through lm-eval on one loaded model (``HaluEvalJudge``); every lm-eval result
and per-sample file is kept under ``out/lm_eval``. Rows are given explicitly (``offset``, ``n``): keep them clear
of the rows the scores were probed on (the functions refuse an overlap they can see in the score file).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TruthProbeError
from ..halueval_judge import METRICS, Evaluation, HaluEvalJudge, select_best
from ..scores import TruthScores
from . import reports

SUMMARY_METRICS = ("f1", "acc", "precision", "recall", "pred_yes_share", "unparseable", "margin_auroc")


class AblationError(TruthProbeError, ValueError):
    """Ablation settings that cannot work."""


def check_rows_clear_of_probing(scores: TruthScores, offset: int, n: int | None) -> None:
    """Refuse evaluation rows that overlap the HaluEval rows the scores were probed on (when the file says)."""
    meta = scores.meta
    if str(meta.get("data", "halueval")) not in ("halueval", "None") or "n_rows" not in meta:
        return
    first = int(meta.get("offset", 0))
    stop = first + int(meta["n_rows"])
    end = offset + n if n is not None else float("inf")
    if offset < stop and end > first:
        raise AblationError(f"evaluation rows {offset}-{'end' if n is None else end - 1} overlap the rows the scores "
                            f"were probed on ({first}-{stop - 1}); start at --offset {stop} or later")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else float("nan"))


# ---- random-gate ablation -------------------------------------------------------------------------------------

@dataclass
class RandomAblationResult:
    alpha: float
    norm: str
    seeds: list[int]
    baseline: Evaluation
    truthprobe: Evaluation
    random: list[Evaluation] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: baseline, TruthProbe, random mean and sample std, and how many random seeds beat TruthProbe."""
        out = {}
        for m in SUMMARY_METRICS:
            mean, std = _mean_std([e.metrics[m] for e in self.random])
            tp = self.truthprobe.metrics[m]
            out[m] = {"baseline": self.baseline.metrics[m], "truthprobe": tp, "random_mean": mean, "random_std": std,
                      "random_at_least_truthprobe": sum(e.metrics[m] >= tp for e in self.random)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "norm": self.norm, "seeds": self.seeds, "summary": self.summary(),
                "baseline": asdict(self.baseline), "truthprobe": asdict(self.truthprobe),
                "random": [asdict(e) for e in self.random]}


def random_gate_ablation(judge: HaluEvalJudge, scores: TruthScores, *, alpha: float, norm: str, seeds: Sequence[int],
                         offset: int, n: int | None) -> RandomAblationResult:
    """Baseline, the Truth-Score gate and one random gate per seed, all on rows ``[offset, offset + n)``."""
    if len(seeds) < 2:
        raise AblationError(f"seeds: expected at least 2 random-gate seeds for a standard deviation, found {len(seeds)}")
    check_rows_clear_of_probing(scores, offset, n)
    gate = {"scores": scores, "alpha": alpha, "norm": norm}
    baseline = judge("baseline", "ablation", offset, n, {"gate": "none"})
    truthprobe = judge(f"truthprobe_{norm}_{alpha:g}", "ablation", offset, n, gate)
    result = RandomAblationResult(float(alpha), norm, [int(s) for s in seeds], baseline, truthprobe)
    for seed in seeds:
        result.random.append(judge(f"random_{norm}_{alpha:g}_seed{seed}", "ablation", offset, n,
                                   {**gate, "gate": "random", "seed": int(seed)}))
    return result


def random_ablation_table(result: RandomAblationResult) -> tuple[list[str], list[list[Any]]]:
    headers = ["metric", "baseline", "TruthProbe", "random mean", "random std", f"random seeds >= TruthProbe (of {len(result.seeds)})"]
    rows = [[m, v["baseline"], v["truthprobe"], v["random_mean"], v["random_std"], v["random_at_least_truthprobe"]]
            for m, v in result.summary().items()]
    return headers, rows


def plot_random_ablation(result: RandomAblationResult, path: "str | Path") -> Path:
    """Each random seed as a dot, their mean +- std as a bar, TruthProbe and the baseline as lines, per metric."""
    plt = reports.pyplot()
    metrics = ("f1", "acc", "pred_yes_share")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    for ax, m in zip(axes, metrics):
        values = [100 * e.metrics[m] for e in result.random]
        ax.scatter(np.full(len(values), 0.0) + np.linspace(-0.08, 0.08, len(values)), values, color="0.5", s=18,
                   label="random gates", zorder=3)
        mean, std = _mean_std(values)
        ax.errorbar([0.3], [mean], yerr=[0 if np.isnan(std) else std], fmt="o", color="black", capsize=4,
                    label="random mean +- std")
        ax.axhline(100 * result.truthprobe.metrics[m], color="tab:red", label="TruthProbe")
        ax.axhline(100 * result.baseline.metrics[m], color="tab:blue", linestyle="--", label="baseline")
        ax.set_xlim(-0.5, 0.8)
        ax.set_xticks([])
        ax.set_title(m.replace("_", "-") + " (%)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Random-gate ablation ({result.norm}, alpha {result.alpha:g}, {len(result.seeds)} seeds)", fontsize=10)
    fig.tight_layout()
    return reports.save_figure(fig, path)


# ---- alpha / norm grid -----------------------------------------------------------------------------------------

@dataclass
class GridResult:
    baseline: Evaluation
    runs: list[Evaluation]

    @property
    def best(self) -> Evaluation:
        return select_best(self.runs)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"best": {"norm": best.gate["norm"], "alpha": best.gate["alpha"], **best.metrics},
                "baseline": asdict(self.baseline), "runs": [asdict(e) for e in self.runs]}


def grid_search(judge: HaluEvalJudge, scores: TruthScores, *, grid: Sequence[tuple[str, float]], offset: int,
                n: int | None) -> GridResult:
    """The baseline and every (norm, alpha) of ``grid`` on the validation rows; ``best`` is the F1 winner."""
    from ..gate_config import check_gate_settings

    if not grid:
        raise AblationError("grid: expected at least one (norm, alpha) pair, found none")
    for norm, alpha in grid:
        check_gate_settings(alpha, norm)
    check_rows_clear_of_probing(scores, offset, n)
    baseline = judge("val_baseline", "validation", offset, n, {"gate": "none"})
    runs = [judge(f"val_{norm}_{alpha:g}", "validation", offset, n, {"scores": scores, "alpha": alpha, "norm": norm})
            for norm, alpha in grid]
    return GridResult(baseline, runs)


def grid_table(result: GridResult) -> tuple[list[str], list[list[Any]]]:
    best = result.best
    headers = ["gate", "norm", "alpha", *METRICS, "chosen"]
    rows = [["baseline", "", "", *(result.baseline.metrics[m] for m in METRICS), ""]]
    rows += [["truthprobe", e.gate["norm"], e.gate["alpha"], *(e.metrics[m] for m in METRICS),
              "yes" if e is best else ""] for e in result.runs]
    return headers, rows


def plot_grid(result: GridResult, path: "str | Path") -> Path:
    """F1 and accuracy against alpha, one line per norm, the baseline dashed."""
    plt = reports.pyplot()
    norms = list(dict.fromkeys(e.gate["norm"] for e in result.runs))
    fig, axes = plt.subplots(len(norms), 2, figsize=(7, 2.8 * len(norms)), squeeze=False)
    for row, norm in zip(axes, norms):
        runs = sorted((e for e in result.runs if e.gate["norm"] == norm), key=lambda e: e.gate["alpha"])
        for ax, m in zip(row, ("f1", "acc")):
            ax.plot([e.gate["alpha"] for e in runs], [100 * e.metrics[m] for e in runs], "o-", color="tab:red",
                    label="TruthProbe")
            ax.axhline(100 * result.baseline.metrics[m], color="tab:blue", linestyle="--", label="baseline")
            ax.set_xlabel(f"alpha ({norm})")
            ax.set_ylabel(f"{m} (%)")
    axes[0][0].legend(fontsize=7)
    best = result.best
    fig.suptitle(f"Validation grid: chosen {best.gate['norm']}, alpha {best.gate['alpha']:g}", fontsize=10)
    fig.tight_layout()
    return reports.save_figure(fig, path)


# ---- probing regime -------------------------------------------------------------------------------------------

@dataclass
class RegimeRow:
    rows: int
    epochs: int
    mean_score: float
    max_score: float
    pearson_vs_reference: float
    top20_jaccard_vs_reference: float
    train_seconds: float
    evaluation: Evaluation | None = None

    def flat(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "evaluation"}
        if self.evaluation is not None:
            out.update({f"val_{m}": self.evaluation.metrics[m] for m in METRICS})
        return out


def check_regime_settings(sizes: Sequence[int], epochs: Sequence[int], offset: int,
                          folds: int) -> tuple[list[int], list[int]]:
    """Sorted unique sizes and epochs, or an error: cheap, so callers run it before loading a model."""
    sizes, epochs = sorted({int(s) for s in sizes}), sorted({int(e) for e in epochs})
    if not sizes or min(sizes) < folds:
        raise AblationError(f"sizes: expected probing row counts of at least the {folds} folds, found {sizes}")
    if not epochs or min(epochs) < 1:
        raise AblationError(f"epochs: expected positive epoch counts, found {epochs}")
    if offset < max(sizes):
        raise AblationError(f"evaluation rows start at {offset}, inside the probing rows 0-{max(sizes) - 1}: "
                            f"start at --offset {max(sizes)} or later")
    return sizes, epochs


def probing_regime(model: Any, tokenizer: Any, judge: HaluEvalJudge | None, *, sizes: Sequence[int],
                   epochs: Sequence[int], alpha: float, norm: str, offset: int, n: int | None, data: str | None = None,
                   folds: int = 5, seed: int = 0, batch_size: int = 8, out: "str | Path | None" = None,
                   progress: bool = True, log: Callable[[str], None] = print) -> list[RegimeRow]:
    """Probe HaluEval rows ``[0, N)`` with the published trainer for every N x epochs (activations extracted once,
    for the largest N, through the cache); compare each score map with the largest N and epochs; evaluate each gate
    on rows ``[offset, offset + n)`` (skipped when ``judge`` is None). Score files go to ``out/scores`` if given."""
    import time

    from ..architectures import describe
    from ..probing.cache import default_cache_root
    from ..probing.data import halueval_examples, labels_and_groups
    from ..probing.pipeline import extract_with_cache, resolve_prompt_format
    from ..probing.prompts import PromptEncoder
    from ..probing.trainers import train_probes
    from .compare import jaccard, top_k_set

    sizes, epochs = check_regime_settings(sizes, epochs, offset, folds)
    examples = halueval_examples(data, offset=0, n=max(sizes))
    encoder = PromptEncoder(tokenizer, resolve_prompt_format(tokenizer, "auto"), None, None, "right")
    X, _ = extract_with_cache(model, encoder, examples, batch_size=batch_size, cache_dir=default_cache_root(),
                              progress=progress)
    y, groups = labels_and_groups(examples)
    info = describe(model)
    fitted: dict[tuple[int, int], tuple[TruthScores, float]] = {}
    for size in sizes:
        keep = groups < size  # HaluEval rows 0..size-1 (groups are row indices)
        for ep in epochs:
            start = time.perf_counter()
            result = train_probes(X[keep], y[keep], groups[keep], n_folds=folds, seed=seed, trainer="published",
                                  epochs=ep, progress=False)
            seconds = time.perf_counter() - start
            scores = result.to_scores({**info, "data": data or "halueval", "offset": 0, "n_rows": size,
                                       "n_samples": int(keep.sum()), "epochs": ep, "seed": seed})
            fitted[size, ep] = (scores, seconds)
            log(f"probed rows 0-{size - 1}, {ep} epochs: mean {scores.values.mean():.3f}, max "
                f"{scores.values.max():.3f} ({seconds:.1f} s)")
            if out is not None:
                scores.save(Path(out) / "scores" / f"rows{size}_epochs{ep}.json")
    reference = fitted[sizes[-1], epochs[-1]][0]
    ref_top = top_k_set(reference, 20)
    rows = []
    for (size, ep), (scores, seconds) in fitted.items():
        r = float(np.corrcoef(scores.values.ravel(), reference.values.ravel())[0, 1])
        row = RegimeRow(size, ep, float(scores.values.mean()), float(scores.values.max()), r,
                        jaccard(top_k_set(scores, 20), ref_top), round(seconds, 2))
        if judge is not None:
            row.evaluation = judge(f"regime_rows{size}_epochs{ep}", "validation", offset, n,
                                   {"scores": scores, "alpha": alpha, "norm": norm})
        rows.append(row)
    return rows


def regime_table(rows: Sequence[RegimeRow]) -> tuple[list[str], list[list[Any]]]:
    flat = [r.flat() for r in rows]
    headers = list(flat[0])
    return headers, [[f[h] for h in headers] for f in flat]


def plot_regime(rows: Sequence[RegimeRow], path: "str | Path") -> Path:
    """Heatmaps over probing rows x epochs: mean Truth Score, correlation with the reference, validation F1."""
    plt = reports.pyplot()
    sizes = sorted({r.rows for r in rows})
    epochs = sorted({r.epochs for r in rows})
    panels = [("mean Truth Score", lambda r: r.mean_score), ("Pearson r vs largest", lambda r: r.pearson_vs_reference)]
    if all(r.evaluation is not None for r in rows):
        panels.append(("validation F1 (%)", lambda r: 100 * r.evaluation.metrics["f1"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.5 * len(sizes) + 2.2), squeeze=False)
    for ax, (title, get) in zip(axes[0], panels):
        grid = np.full((len(sizes), len(epochs)), np.nan)
        for r in rows:
            grid[sizes.index(r.rows), epochs.index(r.epochs)] = get(r)
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        middle = np.nanmean([np.nanmin(grid), np.nanmax(grid)])
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if v > middle else "white")
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs])
        ax.set_yticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_xlabel("epochs")
        ax.set_ylabel("probing rows")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return reports.save_figure(fig, path)


__all__ = ["AblationError", "GridResult", "RandomAblationResult", "RegimeRow", "check_regime_settings",
           "check_rows_clear_of_probing",
           "grid_search", "grid_table", "plot_grid", "plot_random_ablation", "plot_regime", "probing_regime",
           "random_ablation_table", "random_gate_ablation", "regime_table"]
