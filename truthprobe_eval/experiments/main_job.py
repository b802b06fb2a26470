"""The published LLM experiment end to end (what ``truthprobe run`` runs).

1. Probe: Truth Scores from HaluEval rows ``[0, probe_rows)``.
2. Select: alpha and norm by F1 on the validation rows that follow (published grid: centered 2.5 / 4.5 / 6.0 / 7.5,
   min-max 0.1 / 0.2 / 0.3), under the first answer draw.
3. Test: the baseline and the selected gate on the later, untouched test rows, under every requested answer draw,
   with paired statistics (exact McNemar for accuracy, paired bootstrap intervals for the accuracy and F1
   differences, the first-token Yes-minus-No margin's AUROC) and, with ``controls``, random gates and shuffled
   gates (the chosen gate's own values permuted among each layer's heads) on the same rows.

Evaluation runs through lm-eval on one loaded model: by default the TruthProbe paper's protocol
(``halueval_truthprobe_seed<N>``), or HaluEval's own judge (``protocol="halueval"``, ``halueval_qa_seed<N>``).
The three row ranges are disjoint by construction. Everything goes to one folder: the score file and its heatmap,
every lm-eval result and per-sample file, the table (Markdown), the full result (JSON) and a figure.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import atomic_write_text
from .._timing import StageClock
from ..errors import TruthProbeError
from .halueval_judge import (
    LABELS,
    METRICS,
    PROTOCOLS,
    Evaluation,
    HaluEvalJudge,
    JudgeSettings,
    paired_comparison,
    select_best,
)

from ..interventions.truthprobe import TruthProbeGate  # noqa: E402  (this job is TruthProbe's)

PUBLISHED_GRID: tuple[tuple[str, float], ...] = tuple((g["norm"], g["alpha"]) for g in TruthProbeGate.selection_grid)
HALUEVAL_ROWS = 10_000
# the controls on the test rows, each named for what it is (gating.gate_values): the paper's own ablation and ours
CONTROLS = ("paper_random", "random", "shuffled")
CONTROL_KINDS = ("paper_random", "paper_inverse", "random", "shuffled")
PAPER_RANDOM_SEEDS = 3  # the paper reports its random gate over three seeds (mean and sd)
PROTOCOL_NAMES = {"truthprobe": "TruthProbe paper's protocol (published prompt, greedy, 7 new tokens)",
                  "halueval": "HaluEval's own judge protocol (few-shot judge instruction)"}
TABLE_METRICS = ("acc", "f1", "precision", "recall", "pred_yes_share", "unparseable", "margin_auroc")


class MainJobError(TruthProbeError, ValueError):
    """Settings of the main job that cannot work."""


@dataclass
class MainJobConfig:
    """Default sizes: 292 probing rows, 50 validation rows x 8 runs, 300 test rows x 2 runs (+2 with controls)."""

    model: str = "smollm2-135m-instruct"
    data: str | None = None  # a HaluEval QA .jsonl(.gz); None: the embedded copy
    out: str = "runs/truthprobe-run"
    protocol: str = "truthprobe"
    probe_rows: int = 292
    val_rows: int = 50
    test_rows: int | None = 300
    grid: tuple[tuple[str, float], ...] = PUBLISHED_GRID
    draw_seeds: tuple[int, ...] = (0,)  # answer draws; the first one chooses the gate on validation
    preset: str = "paper"  # probing/truthprobe_preset.py: paper (the published pipeline) or ours
    controls: tuple[str, ...] = ()  # among CONTROL_KINDS; paper_random runs PAPER_RANDOM_SEEDS seeds
    control_seed: int = 0
    batch_size: int = 8
    prefix_cache: bool = True
    chat: bool = False  # lm-eval's --apply_chat_template
    knowledge: bool = True
    scores: str | None = None  # reuse a score file instead of probing
    folds: int = 5
    trainer: str | None = None  # None: the preset's
    probe_batch_size: int | None = None  # None: the preset's (1 for paper: one prompt at a time)
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True

    def rows_total(self) -> int:
        from ..datasets import iter_halueval

        return HALUEVAL_ROWS if self.data is None else sum(1 for _ in iter_halueval(self.data))

    def check(self) -> None:
        """Fail before any model work: protocol, draws, row ranges, grid."""
        from ..gate_config import check_gate_settings
        from ..presets import check_preset

        check_preset(self.preset)
        unknown = [c for c in self.controls if c not in CONTROL_KINDS]
        if unknown:
            raise MainJobError(f"controls: expected some of {', '.join(CONTROL_KINDS)}, found {', '.join(unknown)}")
        if self.protocol not in PROTOCOLS:
            raise MainJobError(f"protocol: expected one of {', '.join(PROTOCOLS)}, found {self.protocol!r}")
        seeds = tuple(self.draw_seeds)
        if not seeds or any(s not in (0, 1, 2) for s in seeds) or len(set(seeds)) != len(seeds):
            raise MainJobError(f"draw seeds: expected distinct seeds among 0, 1, 2 (the tasks "
                               f"{PROTOCOLS[self.protocol].format(seed='0/1/2')}), found {list(seeds)}")
        for name in ("probe_rows", "val_rows", "batch_size", "probe_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < (0 if name == "val_rows" else 1):
                raise MainJobError(f"{name.replace('_', ' ')}: expected a positive integer, found {getattr(self, name)}")
        if self.test_rows is not None and self.test_rows < 2:
            raise MainJobError(f"test rows: expected an integer >= 2 (paired tests need two rows) or 'all', found "
                               f"{self.test_rows}")
        if not self.grid:
            raise MainJobError("grid: expected at least one (norm, alpha) pair, found none")
        for norm, alpha in self.grid:
            check_gate_settings(alpha, norm)
        if self.val_rows == 0 and len(self.grid) > 1:
            raise MainJobError(f"validation rows: 0 leaves nothing to choose among {len(self.grid)} gate settings; "
                               "give one with --norm and --alpha, or validation rows")
        total = self.rows_total()
        used = self.probe_rows + self.val_rows + (self.test_rows or 2)
        if used > total:
            raise MainJobError(f"rows: probe {self.probe_rows} + validation {self.val_rows} + test {self.test_rows} = "
                               f"{used}, but the data has {total} rows")

    @property
    def probing(self):
        """The preset's probing settings (``TruthProbePreset``)."""
        from ..probing.truthprobe_preset import truthprobe_preset

        return truthprobe_preset(self.preset)

    def control_runs(self) -> list[tuple[str, str, int]]:
        """(run name, gate kind, seed) of every control on the test rows, in order."""
        runs = []
        for kind in self.controls:
            seeds = range(PAPER_RANDOM_SEEDS) if kind == "paper_random" else range(1)
            runs += [(f"{kind}_s{self.control_seed + i}" if kind == "paper_random" else kind, kind, self.control_seed + i)
                     for i in seeds]
        return runs

    @property
    def val_offset(self) -> int:
        return self.probe_rows

    @property
    def test_offset(self) -> int:
        return self.probe_rows + self.val_rows


@dataclass
class SeedResult:
    """One answer draw on the test rows: baseline, gated, controls, and the paired statistics against the baseline."""

    draw_seed: int
    baseline: Evaluation
    gated: Evaluation
    controls: dict[str, Evaluation] = field(default_factory=dict)
    # run name -> compare_paired(baseline, run); "gated_vs_<control>": compare_paired(control, gated)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"draw_seed": self.draw_seed, "baseline": asdict(self.baseline), "gated": asdict(self.gated),
                "controls": {k: asdict(v) for k, v in self.controls.items()}, "stats": self.stats}


@dataclass
class MainJobResult:
    config: dict[str, Any]
    scores_file: str
    heatmap_file: str | None
    validation: list[Evaluation] = field(default_factory=list)
    selected: dict[str, Any] = field(default_factory=dict)
    seeds: list[SeedResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def baseline(self) -> Evaluation:
        return self.seeds[0].baseline

    @property
    def gated(self) -> Evaluation:
        return self.seeds[0].gated

    def over_seeds(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per run (baseline, gated, delta) and metric: mean and population std (ddof=0) over the draws."""
        runs = {"baseline": [s.baseline.metrics for s in self.seeds], "gated": [s.gated.metrics for s in self.seeds]}
        runs["delta"] = [{m: g[m] - b[m] for m in METRICS} for b, g in zip(runs["baseline"], runs["gated"])]
        return {run: {m: {"mean": float(np.mean([v[m] for v in values])), "std": float(np.std([v[m] for v in values]))}
                      for m in METRICS} for run, values in runs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "scores_file": self.scores_file, "heatmap_file": self.heatmap_file,
                "selected": self.selected, "validation": [asdict(e) for e in self.validation],
                "test": [s.to_dict() for s in self.seeds], "over_seeds": self.over_seeds(),
                "stage_seconds": self.stage_seconds}


# ---- formatting --------------------------------------------------------------------------------------------

def _pct(metric: str, value: float) -> str:
    if metric == "unparseable":
        return str(int(value))
    if metric == "margin_auroc":
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return f"{100 * value:.1f}"


def _signed(metric: str, value: float) -> str:
    if metric == "unparseable":
        return f"{int(value):+d}"
    if metric == "margin_auroc":
        return "n/a" if not math.isfinite(value) else f"{value:+.3f}"
    return f"{100 * value:+.1f}"


def _negative(described: dict[str, Any]) -> str:
    """The count of negative gates a description records; n/a where it records none (the paper's redrawn gate, or a
    result written before the count existed)."""
    if described.get("identity"):
        return "0"
    count = described.get("negative_gates")
    return "n/a" if count is None else str(count)


def _tie_note(result: MainJobResult) -> str:
    """Say so when no gate beat the ungated model on validation: the choice is then only the tie-break."""
    base = [e for e in result.validation if e.intervention["identity"]]
    gated = [e.metrics["f1"] for e in result.validation if not e.intervention["identity"]]
    if not base or not gated or max(gated) > base[0].metrics["f1"]:
        return ""
    return (f" No gate beat the baseline's validation F1 ({100 * base[0].metrics['f1']:.1f}); this one won the "
            "tie-break (accuracy, then grid order).")


def _run_label(result: MainJobResult, name: str, evaluation: Evaluation | None = None) -> str:
    """The table's name of a run: baseline, TruthProbe with its setting, or the control's own label (what it is)."""
    sel = result.selected
    if name == "baseline":
        return "baseline"
    if name == "gated":
        return f"TruthProbe ({sel['norm']}, alpha {sel['alpha']:g})"
    label = (evaluation.intervention.get("label") if evaluation is not None else None) or name
    return f"control: {label}"


def _short(name: str) -> str:
    return {"gated": "TruthProbe", "random": "strength-matched random gate", "shuffled": "shuffled gate",
            "paper_inverse": "paper's inverse gate"}.get(
        name, f"paper's random gate (seed {name.rsplit('_s', 1)[-1]})" if name.startswith("paper_random") else name)


def _paper_random_summary(s: "SeedResult") -> list[str]:
    """Mean and sd (ddof=1, as three seeds are reported) of the paper's random gate over its seeds."""
    runs = [e for n, e in s.controls.items() if n.startswith("paper_random")]
    if len(runs) < 2:
        return []
    acc = np.array([e.metrics["acc"] for e in runs])
    f1 = np.array([e.metrics["f1"] for e in runs])
    return [f"- paper's random gate over {len(runs)} seeds: accuracy {100 * acc.mean():.1f} +- "
            f"{100 * acc.std(ddof=1):.1f}, F1 {100 * f1.mean():.1f} +- {100 * f1.std(ddof=1):.1f} (mean +- sd); "
            f"TruthProbe: accuracy {100 * s.gated.metrics['acc']:.1f}, F1 {100 * s.gated.metrics['f1']:.1f}."]


def _significance_line(first: str, second: str, st: dict[str, Any], level: float = 0.05) -> str:
    """One sentence on ``first - second`` (``compare_paired(second, first)``)."""
    verdict = "significant" if st["mcnemar_p"] < level else "not significant"
    lo, hi = st["acc_delta_ci"]
    flo, fhi = st["f1_delta_ci"]
    return (f"{first} - {second}: accuracy {100 * st['acc_delta']:+.1f} (95% CI {100 * lo:+.1f} to {100 * hi:+.1f}), "
            f"exact McNemar p = {st['mcnemar_p']:.3g} (rows only {first} got right: {st['only_gated_right']}, "
            f"only {second}: {st['only_baseline_right']}), {verdict} at {level:g}; F1 {100 * st['f1_delta']:+.1f} "
            f"(95% CI {100 * flo:+.1f} to {100 * fhi:+.1f}"
            + (", excludes 0" if flo > 0 or fhi < 0 else ", includes 0") + ").")


def format_seed(result: MainJobResult, s: SeedResult) -> list[str]:
    first, stop = s.baseline.rows
    lines = [f"Test rows {first}-{stop - 1} ({stop - first} rows), answer draw seed {s.draw_seed}, gold yes share "
             f"{100 * s.baseline.metrics['gold_yes_share']:.1f}%. Accuracy, F1, precision, recall, predicted yes in %;"
             " unparseable as a count (scored as \"no\" under the TruthProbe protocol, as wrong under HaluEval's); "
             "margin AUROC: first-token log P(yes) - log P(no) against the gold label.", "",
             "| run | " + " | ".join(LABELS[m] for m in TABLE_METRICS) + " |",
             "|" + "---|" * (len(TABLE_METRICS) + 1)]
    runs = {"baseline": s.baseline, "gated": s.gated, **s.controls}
    for name, e in runs.items():
        lines.append(f"| {_run_label(result, name, e)} | " + " | ".join(_pct(m, e.metrics[m]) for m in TABLE_METRICS)
                     + " |")
    lines.append("| TruthProbe - baseline | " + " | ".join(
        _signed(m, s.gated.metrics[m] - s.baseline.metrics[m]) for m in TABLE_METRICS) + " |")
    lines.append("")
    for name, st in s.stats.items():
        if name.startswith("gated_vs_"):
            first, second = "TruthProbe", _short(name[len("gated_vs_"):])
        else:
            first, second = _short(name), "baseline"
        lines.append("- " + _significance_line(first, second, st))
    return lines + _paper_random_summary(s)


def format_table(result: MainJobResult) -> str:
    """The final Markdown report: the chosen gate, the held-out table(s), significance, validation grid, timing."""
    cfg = result.config
    protocol = PROTOCOL_NAMES.get(cfg.get("protocol", "truthprobe"), cfg.get("protocol"))
    sel = result.selected
    how = ("given (no validation)" if sel.get("by") == "given" else
           f"chosen on validation rows {cfg['val_offset']}-{cfg['test_offset'] - 1} by F1 (answer draw "
           f"{cfg['draw_seeds'][0]})")
    preset = cfg.get("preset", "ours")
    chosen_negative = (sel.get("intervention") or {}).get("negative_gates")
    probed = ("one drawn answer per row, the published trainer and folds" if preset == "paper" else
              "both answers per row, grouped folds, the exact solver")
    lines = [f"HaluEval QA, {protocol}; model {cfg['model']}; preset {preset}: Truth Scores from rows "
             f"0-{cfg['probe_rows'] - 1} ({probed}), replies parsed by the {cfg.get('parse', 'ours')} rule.",
             f"Gate {how}: {sel['norm']}, alpha {sel['alpha']:g}." + _tie_note(result)
             + (f" {chosen_negative} of its gates are negative (those heads' outputs are sign-flipped, not damped)."
                if chosen_negative else ""), ""]
    for s in result.seeds:
        lines += format_seed(result, s) + [""]
    if len(result.seeds) > 1:
        over = result.over_seeds()
        lines += [f"Mean +- std (ddof=0) over the {len(result.seeds)} answer draws:", "",
                  "| run | " + " | ".join(LABELS[m] for m in TABLE_METRICS) + " |",
                  "|" + "---|" * (len(TABLE_METRICS) + 1)]
        for run in ("baseline", "gated", "delta"):
            cells = []
            for m in TABLE_METRICS:
                mean, std = over[run][m]["mean"], over[run][m]["std"]
                scale = 1 if m in ("unparseable", "margin_auroc") else 100
                cells.append("n/a" if not math.isfinite(mean) else f"{scale * mean:.3g} +- {scale * std:.2g}"
                             if scale == 1 else f"{scale * mean:.1f} +- {scale * std:.1f}")
            label = {"baseline": "baseline", "gated": _run_label(result, "gated"), "delta": "TruthProbe - baseline"}[run]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.validation:
        lines += ["Validation grid (F1 %, accuracy %, predicted yes %, margin AUROC; negative gates: heads whose "
                  "output the gate sign-flips):", "",
                  "| gate | F1 | accuracy | predicted yes | margin AUROC | negative gates |", "|---|---|---|---|---|---|"]
        for e in result.validation:
            label = ("baseline" if e.intervention["identity"] else
                     f"{e.intervention['norm']}, alpha {e.intervention['alpha']:g}")
            lines.append(f"| {label} | {_pct('f1', e.metrics['f1'])} | {_pct('acc', e.metrics['acc'])} | "
                         f"{_pct('pred_yes_share', e.metrics['pred_yes_share'])} | "
                         f"{_pct('margin_auroc', e.metrics['margin_auroc'])} | "
                         f"{_negative(e.intervention)} |")
        lines.append("")
    if result.stage_seconds:
        lines.append("Time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items()) + ".")
    return "\n".join(lines).rstrip("\n") + "\n"


def plot_result(result: MainJobResult, path: "str | Path") -> Path:
    """Validation F1 per gate setting (left); held-out accuracy and F1 per run, first draw (middle); with controls,
    TruthProbe's accuracy difference from each control with its 95% interval and McNemar p (right)."""
    from ..analysis import reports

    plt = reports.pyplot()
    versus = {k[len("gated_vs_"):]: v for k, v in result.seeds[0].stats.items() if k.startswith("gated_vs_")}
    fig, axes = plt.subplots(1, 3 if versus else 2, figsize=(15 if versus else 10, 3.8))
    left, right = axes[0], axes[1]
    if result.validation:
        labels = ["base" if e.intervention["identity"] else f"{e.intervention['norm'][0]}{e.intervention['alpha']:g}"
                  for e in result.validation]
        colors = ["tab:blue" if e.intervention["identity"] else "tab:red" if e.intervention.get("norm") ==
                  result.selected["norm"] and e.intervention.get("alpha") == result.selected["alpha"] else "0.6" for e in result.validation]
        left.bar(labels, [100 * e.metrics["f1"] for e in result.validation], color=colors)
        left.set_ylabel("validation F1 (%)")
        left.set_title("validation grid (chosen: red)", fontsize=9)
        left.tick_params(axis="x", labelrotation=45, labelsize=8)
    else:
        left.axis("off")
    s = result.seeds[0]
    runs = {"baseline": s.baseline, "gated": s.gated, **s.controls}
    x = np.arange(len(runs))
    for k, (m, color) in enumerate((("acc", "tab:gray"), ("f1", "tab:red"))):
        right.bar(x + (k - 0.5) * 0.38, [100 * e.metrics[m] for e in runs.values()], width=0.38, color=color,
                  label=LABELS[m])
    for i, name in enumerate(runs):
        if name in s.stats:
            right.annotate(f"p={s.stats[name]['mcnemar_p']:.1g}", (i, 2), ha="center", fontsize=7, rotation=90,
                           va="bottom")
    ticks = {"random": "matched\nrandom", "shuffled": "shuffled", "paper_inverse": "paper\ninverse"}
    right.set_xticks(x, ["baseline", "TruthProbe", *[ticks.get(n, n.replace("paper_random_s", "paper\nrandom s"))
                                                   for n in s.controls]], fontsize=7)
    right.set_ylabel("held-out (%)")
    right.set_title(f"test rows {s.baseline.rows[0]}-{s.baseline.rows[1] - 1}, draw {s.draw_seed} (McNemar p vs "
                    "baseline)", fontsize=9)
    right.legend(fontsize=8)
    if versus:
        ax = axes[2]
        names = list(versus)
        deltas = [100 * versus[n]["acc_delta"] for n in names]
        lows = [d - 100 * versus[n]["acc_delta_ci"][0] for d, n in zip(deltas, names)]
        highs = [100 * versus[n]["acc_delta_ci"][1] - d for d, n in zip(deltas, names)]
        y = np.arange(len(names))
        ax.errorbar(deltas, y, xerr=[lows, highs], fmt="o", color="tab:red", capsize=3)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_yticks(y, [f"{_short(n)}\nMcNemar p={versus[n]['mcnemar_p']:.2g}" for n in names], fontsize=7)
        ax.set_ylim(-0.5, len(names) - 0.5)
        ax.set_xlabel("TruthProbe - control, accuracy (points, 95% CI)")
        ax.set_title("the decisive comparisons (held out)", fontsize=9)
    fig.tight_layout()
    return reports.save_figure(fig, path)


# ---- the job ------------------------------------------------------------------------------------------------

def _probe(cfg: MainJobConfig, model, tokenizer, out: Path, log) -> tuple[Any, Path, Path | None]:
    import torch

    from ..probing.cache import DEFAULT_SHARD_SIZE, default_cache_root
    from ..probing.data import halueval_examples
    from ..probing.pipeline import format_summary, plot_heatmap, probe_model
    from ..scores import TruthScores

    scores_file = out / "scores.json"
    if cfg.scores is not None:
        scores = TruthScores.load(cfg.scores)
        scores.save(scores_file)
        log(f"scores: {cfg.scores} (given, not probed)")
    else:
        p = cfg.probing
        examples = halueval_examples(cfg.data, offset=0, n=cfg.probe_rows, **p.data_options())
        log(f"probing ({cfg.preset} preset): HaluEval rows 0-{cfg.probe_rows - 1} ({len(examples)} answers), "
            f"{cfg.folds}-fold {p.fold_rule}")
        shards = -(-len(examples) // DEFAULT_SHARD_SIZE)
        with _bar(log, shards, "probe: extracting") as bar:
            scores = probe_model(model, tokenizer, examples, n_folds=cfg.folds, seed=p.fold_seed,
                                 trainer=cfg.trainer or p.trainer, fold_rule=p.fold_rule,
                                 batch_size=cfg.probe_batch_size or p.batch_size, cache_dir=default_cache_root(),
                                 progress=cfg.progress and bar is None and not hasattr(log, "bar"),
                                 on_shard=None if bar is None else lambda _i, _n: bar.update(1),
                                 n_jobs=torch.get_num_threads() if cfg.device == "cpu" else None,
                                 meta={"model_source": cfg.model, "data": cfg.data or "halueval", "offset": 0,
                                       "n_rows": cfg.probe_rows, **p.meta()})
        scores.save(scores_file)
        log(format_summary(scores))
    heatmap = plot_heatmap(scores, out / "scores.png")
    return scores, scores_file, heatmap


class _StageJudge:
    """The judge, advancing the current stage's progress bar by the rows each evaluation covered."""

    def __init__(self, judge: HaluEvalJudge) -> None:
        self.judge, self.bar = judge, None

    def __call__(self, *args: Any, **kwargs: Any) -> Evaluation:
        made = self.judge(*args, **kwargs)
        if self.bar is not None:
            self.bar.update(made.rows[1] - made.rows[0])
        return made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.judge, name)


def _bar(log: Any, total: int, desc: str):
    """The stage's one progress bar when ``log`` is a ``RunLog``; else nothing."""
    from contextlib import nullcontext

    return log.bar(total, desc) if hasattr(log, "bar") else nullcontext(None)


def run_main_job(cfg: MainJobConfig, log: Callable[[str], None] = print) -> MainJobResult:
    """Probe, select the gate on validation rows, evaluate baseline, gate and controls on test rows; write everything.

    ``log`` takes the detail lines; a ``RunLog`` (``truthprobe_eval.run_log``) also gets one line per stage
    (``say``) and one progress bar per stage."""
    from ..interventions import Baseline, build
    from ..models import load_model
    from .ablations import grid_search, truthprobe_grid

    say = getattr(log, "say", log)
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    stages, lap = clock.seconds, clock.lap
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    lap("load")
    say(f"[load]     {cfg.model} ({stages['load']:.0f} s)")
    scores, scores_file, heatmap = _probe(cfg, model, tokenizer, out, log)
    lap("probe")
    best_head = np.unravel_index(int(np.argmax(scores.values)), scores.values.shape)
    say(f"[probe]    {'given: ' + str(cfg.scores) if cfg.scores else cfg.preset + ' preset, rows 0-' + str(cfg.probe_rows - 1)}"
        f": mean Truth Score {scores.values.mean():.3f}, best head {best_head[0]}.{best_head[1]} "
        f"{scores.values.max():.3f} ({stages['probe']:.0f} s)")
    settings = JudgeSettings(data=cfg.data, protocol=cfg.protocol, draw_seed=cfg.draw_seeds[0], knowledge=cfg.knowledge,
                             chat=cfg.chat, batch_size=cfg.batch_size, device=cfg.device, prefix_cache=cfg.prefix_cache,
                             parse=cfg.probing.parse)
    evaluate = _StageJudge(HaluEvalJudge(model, tokenizer, settings, out, log))
    config = {**asdict(cfg), "grid": [list(p) for p in cfg.grid], "draw_seeds": list(cfg.draw_seeds),
              "controls": list(cfg.controls), "val_offset": cfg.val_offset, "test_offset": cfg.test_offset,
              "task": settings.task(), "parse": settings.parse, "probing": cfg.probing.to_dict()}
    result = MainJobResult(config=config, scores_file=str(scores_file), heatmap_file=str(heatmap) if heatmap else None,
                           stage_seconds=stages)

    if len(cfg.grid) == 1 and cfg.val_rows == 0:
        norm, alpha = cfg.grid[0]
        result.selected = {"norm": norm, "alpha": float(alpha), "by": "given"}
        say(f"[select]   given: {norm}, alpha {alpha:g} (no validation rows)")
    else:
        log(f"selecting alpha and norm on rows {cfg.val_offset}-{cfg.test_offset - 1} ({len(cfg.grid)} settings)")
        with _bar(log, cfg.val_rows * (len(cfg.grid) + 1), "select") as evaluate.bar:
            grid = grid_search(evaluate, build("truthprobe", scores=str(scores_file)), grid=truthprobe_grid(cfg.grid),
                               offset=cfg.val_offset, n=cfg.val_rows)
        evaluate.bar = None
        result.validation = [grid.baseline, *grid.runs]
        best = grid.best
        result.selected = {"norm": best.intervention["norm"], "alpha": best.intervention["alpha"], "by": "validation F1",
                           "validation_f1": best.metrics["f1"]}
        lap("validation")
        say(f"[select]   {len(cfg.grid)} settings on rows {cfg.val_offset}-{cfg.test_offset - 1}: {best.intervention['norm']}, "
            f"alpha {best.intervention['alpha']:g} (validation F1 {100 * best.metrics['f1']:.1f}, baseline "
            f"{100 * grid.baseline.metrics['f1']:.1f}) ({stages['validation']:.0f} s)")
    chosen = build("truthprobe", scores=str(scores_file), alpha=result.selected["alpha"],  # recorded by its path
                   norm=result.selected["norm"])
    result.selected["intervention"] = chosen.describe()
    last = f"{cfg.test_offset + cfg.test_rows - 1}" if cfg.test_rows else "end"
    n_test = cfg.test_rows or (cfg.rows_total() - cfg.test_offset)
    for seed in cfg.draw_seeds:
        suffix = "" if len(cfg.draw_seeds) == 1 else f"_seed{seed}"
        log(f"testing on rows {cfg.test_offset}-{last}, answer draw {seed}")
        with _bar(log, n_test * (2 + len(cfg.control_runs())), f"test{suffix}") as evaluate.bar:
            baseline = evaluate(f"test_baseline{suffix}", "test", cfg.test_offset, cfg.test_rows, Baseline(), seed)
            gated = evaluate(f"test_gated{suffix}", "test", cfg.test_offset, cfg.test_rows, chosen, seed)
            lap("test" + suffix)
            controls = {}
            for name, kind, control_seed in cfg.control_runs():
                controls[name] = evaluate(f"test_{name}{suffix}", "test", cfg.test_offset, cfg.test_rows,
                                          chosen.control(kind, control_seed), seed)
            if controls:
                lap("controls" + suffix)
        evaluate.bar = None
        seed_result = SeedResult(seed, baseline, gated, controls)
        for name, run in {"gated": gated, **controls}.items():
            seed_result.stats[name] = paired_comparison(baseline, run, seed=seed)
        for name, run in controls.items():  # the decisive comparisons: TruthProbe against each control
            seed_result.stats[f"gated_vs_{name}"] = paired_comparison(run, gated, seed=seed)
        result.seeds.append(seed_result)
        st = seed_result.stats["gated"]
        say(f"[test]     rows {cfg.test_offset}-{last}, draw {seed}: accuracy {100 * baseline.metrics['acc']:.1f} -> "
            f"{100 * gated.metrics['acc']:.1f} (McNemar p = {st['mcnemar_p']:.3g})"
            + (f", {len(controls)} controls" if controls else "")
            + f" ({stages['test' + suffix] + stages.get('controls' + suffix, 0):.0f} s)")
    lap("statistics")
    stages["total"] = clock.total()
    result.config["seconds"] = stages["total"]
    atomic_write_text(out / "results.md", format_table(result))
    from ..interventions import relative_descriptions

    atomic_write_text(out / "results.json", json.dumps(relative_descriptions(result.to_dict(), out), indent=2) + "\n")
    plot_result(result, out / "results.png")
    return result


__all__ = ["CONTROLS", "CONTROL_KINDS", "Evaluation", "MainJobConfig", "MainJobError", "MainJobResult", "PUBLISHED_GRID",
           "SeedResult",
           "format_table", "plot_result", "run_main_job", "select_best"]
