"""Ablations that run the harness and collect the results (what ``truthprobe ablate`` runs), for any intervention.

- ``random_control_ablation``: an intervention against one of its random controls over several seeds (mean and
  standard deviation, as the TruthProbe appendix reports random gates), plus the baseline;
  ``random_gate_ablation`` is the TruthProbe case.
- ``grid_search``: any settings of any method on a held-out validation slice (TruthProbe: the published
  (norm, alpha) grid by default).
- ``probing_regime``: how the number of probing rows N and the published trainer's epochs change the scores
  (mean, agreement with the largest setting) and the gated model on a validation slice.

Each evaluates HaluEval QA judge rows through lm-eval on one loaded model (``HaluEvalJudge``); every lm-eval result
and per-sample file is kept under ``out/lm_eval``. Rows are given explicitly (``offset``, ``n``): keep them clear
of the rows the scores were probed on (the functions refuse an overlap they can see in the score file).
"""
from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..analysis import reports
from ..errors import TruthProbeError
from ..interventions import Baseline, Intervention, build
from ..scores import TruthScores
from .halueval_judge import METRICS, Evaluation, HaluEvalJudge, select_best

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


# ---- random-control ablation ---------------------------------------------------------------------------------

def _scores_of(intervention: Intervention) -> TruthScores | None:
    return getattr(intervention, "scores", None)


def _check_clear(intervention: Intervention, offset: int, n: int | None) -> None:
    scores = _scores_of(intervention)
    if scores is not None:
        check_rows_clear_of_probing(scores, offset, n)


@dataclass
class RandomAblationResult:
    intervention: dict[str, Any]  # the method's describe()
    control: str
    seeds: list[int]
    baseline: Evaluation
    truthprobe: Evaluation  # the method itself (the name of earlier versions, when TruthProbe was the only one)
    random: list[Evaluation] = field(default_factory=list)

    @property
    def method(self) -> Evaluation:
        return self.truthprobe

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: baseline, the method, the controls' mean and sample std, and how many controls reached it."""
        out = {}
        for m in SUMMARY_METRICS:
            mean, std = _mean_std([e.metrics[m] for e in self.random])
            tp = self.truthprobe.metrics[m]
            out[m] = {"baseline": self.baseline.metrics[m], "truthprobe": tp, "random_mean": mean, "random_std": std,
                      "random_at_least_truthprobe": sum(e.metrics[m] >= tp for e in self.random)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"intervention": self.intervention, "control": self.control, "seeds": self.seeds,
                "summary": self.summary(), "baseline": asdict(self.baseline), "method": asdict(self.truthprobe),
                "random": [asdict(e) for e in self.random]}


def random_control_ablation(judge: HaluEvalJudge, intervention: Intervention, *, control: str, seeds: Sequence[int],
                            offset: int, n: int | None) -> RandomAblationResult:
    """Baseline, the intervention, and its random ``control`` once per seed, all on rows ``[offset, offset + n)``."""
    if len(seeds) < 2:
        raise AblationError(f"seeds: expected at least 2 control seeds for a standard deviation, found {len(seeds)}")
    controls = [intervention.control(control, int(seed)) for seed in seeds]  # a bad control fails before any run
    _check_clear(intervention, offset, n)
    tag = _slug(intervention)
    baseline = judge("baseline", "ablation", offset, n, Baseline())
    method = judge(tag, "ablation", offset, n, intervention)
    result = RandomAblationResult(intervention.describe(), control, [int(s) for s in seeds], baseline, method)
    short = tag[len(intervention.name) + 1:] if tag.startswith(intervention.name + "_") else tag
    for seed, made in zip(seeds, controls):  # e.g. random_centered_4.5_seed0, random_heads_k48_alpha15_seed0
        result.random.append(judge(f"{control}_{short}_seed{seed}", "ablation", offset, n, made))
    return result


def random_gate_ablation(judge: HaluEvalJudge, scores: TruthScores, *, alpha: float, norm: str, seeds: Sequence[int],
                         offset: int, n: int | None) -> RandomAblationResult:
    """TruthProbe against random gates of the same alpha and norm (``random_control_ablation`` for TruthProbe)."""
    made = build("truthprobe", scores=scores, alpha=alpha, norm=norm)
    return random_control_ablation(judge, made, control="random", seeds=seeds, offset=offset, n=n)


def _slug(intervention: Intervention) -> str:
    """A file-name tag from the method and its numeric settings, e.g. ``truthprobe_centered_2.5`` or ``iti_k48_a15``."""
    s = intervention.settings
    if intervention.name == "truthprobe":
        return f"truthprobe_{s['norm']}_{s['alpha']:g}"
    parts = [f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in s.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"]
    return "_".join([intervention.name, *parts])


def random_ablation_table(result: RandomAblationResult) -> tuple[list[str], list[list[Any]]]:
    name = result.intervention.get("label", "method")
    headers = ["metric", "baseline", name, f"{result.control} mean", f"{result.control} std",
               f"{result.control} seeds >= method (of {len(result.seeds)})"]
    rows = [[m, v["baseline"], v["truthprobe"], v["random_mean"], v["random_std"], v["random_at_least_truthprobe"]]
            for m, v in result.summary().items()]
    return headers, rows


def plot_random_ablation(result: RandomAblationResult, path: "str | Path") -> Path:
    """Each control seed as a dot, their mean +- std as a bar, the method and the baseline as lines, per metric."""
    plt = reports.pyplot()
    metrics = ("f1", "acc", "pred_yes_share")
    label = result.intervention.get("label", "method")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    for ax, m in zip(axes, metrics):
        values = [100 * e.metrics[m] for e in result.random]
        ax.scatter(np.full(len(values), 0.0) + np.linspace(-0.08, 0.08, len(values)), values, color="0.5", s=18,
                   label=f"{result.control} controls", zorder=3)
        mean, std = _mean_std(values)
        ax.errorbar([0.3], [mean], yerr=[0 if np.isnan(std) else std], fmt="o", color="black", capsize=4,
                    label="control mean +- std")
        ax.axhline(100 * result.truthprobe.metrics[m], color="tab:red", label=label)
        ax.axhline(100 * result.baseline.metrics[m], color="tab:blue", linestyle="--", label="baseline")
        ax.set_xlim(-0.5, 0.8)
        ax.set_xticks([])
        ax.set_title(m.replace("_", "-") + " (%)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.control} control ablation: {label}, {len(result.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    return reports.save_figure(fig, path)


# ---- validation grid over any method's settings --------------------------------------------------------------

def _changed(e: Evaluation, keys: Sequence[str]) -> dict[str, Any]:
    return {k: e.intervention.get(k) for k in keys}


@dataclass
class GridResult:
    baseline: Evaluation
    runs: list[Evaluation]
    keys: list[str] = field(default_factory=list)  # the settings the grid varies

    @property
    def best(self) -> Evaluation:
        return select_best(self.runs)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"varied": self.keys, "best": {**_changed(best, self.keys), **best.metrics},
                "best_intervention": best.intervention,
                "baseline": asdict(self.baseline), "runs": [asdict(e) for e in self.runs]}


def truthprobe_grid(pairs: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """The published (norm, alpha) pairs as grid points."""
    return [{"norm": norm, "alpha": float(alpha)} for norm, alpha in pairs]


def grid_search(judge: HaluEvalJudge, base: "Intervention | TruthScores", *,
                grid: Sequence["dict[str, Any] | tuple[str, float]"], offset: int, n: int | None) -> GridResult:
    """The baseline and ``base`` under every grid point (a dict of settings to change; TruthProbe's (norm, alpha)
    pairs are accepted too) on the validation rows; ``best`` is the F1 winner (ties: accuracy, then grid order)."""
    if isinstance(base, TruthScores):
        base = build("truthprobe", scores=base)
    if not grid:
        raise AblationError("grid: expected at least one setting, found none")
    points = [p if isinstance(p, dict) else {"norm": p[0], "alpha": float(p[1])} for p in grid]
    made = [base.with_settings(**p) for p in points]  # every point is validated before the first run
    _check_clear(base, offset, n)
    keys = list(dict.fromkeys(k for p in points for k in p))
    baseline = judge("val_baseline", "validation", offset, n, Baseline())
    def name(i: int, m: Intervention) -> str:  # TruthProbe's keep their earlier names: val_centered_2.5
        if m.name == "truthprobe":
            return f"val_{m.settings['norm']}_{m.settings['alpha']:g}"
        varied = "_".join(re.sub(r"[^A-Za-z0-9.-]", "", f"{k}{m.settings.get(k)}") for k in keys)
        return f"val_{i:02d}_{m.name}_{varied}"  # the varied settings, strings (layers=12-16) included

    runs = [judge(name(i, m), "validation", offset, n, m) for i, m in enumerate(made)]
    return GridResult(baseline, runs, keys)


def grid_table(result: GridResult) -> tuple[list[str], list[list[Any]]]:
    best = result.best
    headers = ["method", *result.keys, *METRICS, "chosen"]
    rows = [["baseline", *([""] * len(result.keys)), *(result.baseline.metrics[m] for m in METRICS), ""]]
    rows += [[e.intervention["method"], *_changed(e, result.keys).values(), *(e.metrics[m] for m in METRICS),
              "yes" if e is best else ""] for e in result.runs]
    return headers, rows


def plot_grid(result: GridResult, path: "str | Path") -> Path:
    """F1 and accuracy per grid point (the chosen one red), the baseline dashed."""
    plt = reports.pyplot()
    best = result.best
    labels = [", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in _changed(e, result.keys).items())
              for e in result.runs]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 0.8 * len(labels) + 3), 3.4))
    for ax, m in zip(axes, ("f1", "acc")):
        colors = ["tab:red" if e is best else "0.6" for e in result.runs]
        ax.bar(range(len(labels)), [100 * e.metrics[m] for e in result.runs], color=colors)
        ax.axhline(100 * result.baseline.metrics[m], color="tab:blue", linestyle="--", label="baseline")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"validation {m} (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Validation grid, {result.runs[0].intervention['method']}: chosen "
                 f"{labels[result.runs.index(best)]}", fontsize=10)
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

    from ..analysis.compare import jaccard, top_k_set
    from ..architectures import describe
    from ..probing.cache import default_cache_root
    from ..probing.data import halueval_examples, labels_and_groups
    from ..probing.pipeline import extract_with_cache, resolve_prompt_format
    from ..probing.prompts import PromptEncoder
    from ..probing.trainers import train_probes

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
                                   build("truthprobe", scores=scores, alpha=alpha, norm=norm))
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
           "check_rows_clear_of_probing", "random_control_ablation", "truthprobe_grid",
           "grid_search", "grid_table", "plot_grid", "plot_random_ablation", "plot_regime", "probing_regime",
           "random_ablation_table", "random_gate_ablation", "regime_table"]
