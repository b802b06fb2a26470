"""Methods side by side on one loaded model (what ``truthprobe compare-methods`` runs).

Runs: the baseline and every registered method (``methods``; default all), and (``controls``) each method's
controls and the papers' ablations it declares, each named for what it is (``Intervention.run_titles``).
Benchmarks, each with its paired test against the baseline:

- HaluEval QA under the TruthProbe paper's protocol (``halueval_truthprobe_seed0``) on rows no other stage uses:
  accuracy and F1 with an exact McNemar p and paired bootstrap intervals;
- TruthfulQA MC1 / MC2 under ITI's published protocol, 2-fold over questions: methods fit on TruthfulQA
  (``fit_data = "truthfulqa"``, e.g. ITI and the truth neurons) are fit on one half and evaluated on the other, both
  ways; every method is evaluated on the same two halves. MC1: exact McNemar; MC2: Wilcoxon signed-rank; both with
  paired bootstrap intervals of the mean difference;
- cross-entropy and KL divergence against the plain model on neutral text (HaluEval knowledge paragraphs).

Nothing here names a method: each method's class says what it needs (its settings and their defaults, the file
it reads and how ``fit`` makes it, on which data, its controls and ablations, and analyses of its own beside the
others', ``comparison_notes``). Methods fit on HaluEval read rows ``[0, rows)``; the evaluated rows must start
after them. On HaluEval and the neutral text the first half's files (fit on the second half's questions) are used.
Everything goes to ``out``: the fitted files, every lm-eval result and per-sample file, ``comparison.md`` /
``.json`` / ``.png``, and one ``truthprobe-results`` JSON per run and benchmark under ``leaderboard/``
(``truthprobe leaderboard`` reads them).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import atomic_write_text
from .._timing import StageClock
from ..errors import TruthProbeError
from ..interventions import Baseline, FitData, Intervention, build, methods, relative_descriptions

BENCHMARKS = ("halueval", "truthfulqa", "neutral")
BASELINE = "baseline"


def method_names() -> tuple[str, ...]:
    """Every registered method the comparison can run (all by default)."""
    return tuple(methods())


def run_labels() -> dict[str, str]:
    """Run name -> what it is: the baseline, every method, and every control and ablation each method declares."""
    labels = {BASELINE: "baseline"}
    for cls in methods().values():
        labels.update(cls.run_titles())
    return labels


class ComparisonError(TruthProbeError, ValueError):
    """Settings of the comparison that cannot work."""


@dataclass
class ComparisonConfig:
    model: str = "smollm2-135m-instruct"
    out: str = "runs/compare-methods"
    truthfulqa_csv: str | None = None  # None: $TRUTHPROBE_TRUTHFULQA_CSV
    questions: int | None = 100  # TruthfulQA questions (a seeded random subset; None: all), split in two halves
    split_seed: int = 0
    halueval_offset: int = 342  # after the main job's probing (0-291) and validation (292-341) rows
    halueval_rows: int = 200
    neutral_offset: int = 9000
    neutral_texts: int = 50
    preset: str = "ours"  # paper: the published fits and reply parse; ours: ours (presets.py)
    methods: tuple[str, ...] | None = None  # None: every registered method
    # method -> its settings and its fit's (``--set METHOD.NAME=VALUE``); a method's artifact setting (scores,
    # directions, ...) given here is used instead of fitting one
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    controls: bool = True
    control_seed: int = 0
    benchmarks: tuple[str, ...] = BENCHMARKS
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True

    def chosen(self) -> dict[str, type[Intervention]]:
        known = methods()
        names = known if self.methods is None else self.methods
        odd = [m for m in names if m not in known]
        if odd or not names:
            raise ComparisonError(f"methods: expected some of {', '.join(known)}, found {list(names)}")
        return {m: known[m] for m in names}

    def split(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the method's settings, its fit's settings) as given."""
        return self.chosen()[name].split_settings(dict(self.settings.get(name) or {}))

    def check(self) -> None:
        from ..presets import check_preset

        check_preset(self.preset)
        chosen = self.chosen()
        odd = sorted(set(self.settings) - set(chosen))
        if odd:
            raise ComparisonError(f"settings: given for {', '.join(odd)}, not among the methods compared "
                                  f"({', '.join(chosen)})")
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise ComparisonError(f"benchmarks: expected some of {', '.join(BENCHMARKS)}, found {list(self.benchmarks)}")
        if self.questions is not None and self.questions < 4:
            raise ComparisonError(f"questions: expected at least 4 (two halves of two), found {self.questions}")
        if self.halueval_rows < 2 or self.neutral_texts < 1:
            raise ComparisonError("rows: expected at least 2 HaluEval rows and 1 neutral text")
        for name, cls in chosen.items():
            ours, fit = self.split(name)
            if "control" in ours:
                raise ComparisonError(f"{name} settings: control is set by the comparison (its controls run beside it)")
            by_name = {p.name: p for p in cls.params}
            for key, value in ours.items():  # bad values fail before any model work
                if key in by_name:
                    by_name[key].parse(value, cls.error)
            if cls.artifact is not None and not ours.get(cls.artifact):
                cls.check_fit(fit, None if self.questions is None else self.questions // 2)
                read = cls.halueval_rows_read(fit)
                if self.halueval_offset < read:
                    raise ComparisonError(f"HaluEval rows start at {self.halueval_offset}, inside the rows "
                                          f"0-{read - 1} that {cls.title}'s fit reads")


@dataclass
class RunResult:
    name: str
    label: str
    interventions: list[dict[str, Any]]  # describe() per TruthfulQA half (the first also serves HaluEval, neutral)
    halueval: dict[str, Any] | None = None
    truthfulqa: dict[str, Any] | None = None
    neutral: dict[str, Any] | None = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark metric -> paired test vs baseline
    method: str = ""  # the registered method (family) the run belongs to; "" for the baseline


@dataclass
class ComparisonResult:
    config: dict[str, Any]
    halves: list[list[int]]
    files: dict[str, list[str]]  # method -> its fitted (or given) files, one per TruthfulQA half
    runs: list[RunResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)  # methods' own analyses (comparison_notes)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "truthprobe-method-comparison", "config": self.config, "halves": self.halves,
                "files": self.files, "runs": [asdict(r) for r in self.runs], "stage_seconds": self.stage_seconds,
                "notes": self.notes}


# ---- the runs ---------------------------------------------------------------------------------------------

def _interventions(cfg: ComparisonConfig, fitted: dict[str, list[str | None]],
                   settings: dict[str, dict[str, Any]]) -> dict[str, list[Intervention]]:
    """Run name -> one intervention per TruthfulQA half (each half's from the file fit on the other half), for the
    baseline, every method, and (``controls``) each method's controls and ablations."""
    runs: dict[str, list[Intervention]] = {BASELINE: [Baseline(), Baseline()]}
    for name, cls in cfg.chosen().items():
        files = fitted.get(name) or [None, None]
        made: list[Intervention] = []
        for f in files:
            same = [m for m, g in zip(made, files) if g == f]
            made.append(same[0] if same else build(name, **settings[name], **({cls.artifact: f} if cls.artifact else {})))
        runs[name] = made
        if cfg.controls:
            for kind in cls.controls:
                runs[f"{name}_{kind}"] = [m.control(kind, cfg.control_seed) for m in made]
            for kind, (_, changes) in cls.ablations.items():
                runs[f"{name}_{kind}"] = [m.with_settings(**changes) for m in made]
    return runs


def _fit_all(cfg: ComparisonConfig, model: Any, tokenizer: Any, halves: list[list[int]], out: Path,
             log: Callable[[str], None], lap: Callable[[str], None]) -> tuple[dict[str, list[str | None]],
                                                                          dict[str, dict[str, Any]]]:
    """Each method's files (given, or fit now: on HaluEval once, or on each TruthfulQA half for the other) and its
    settings (the model-dependent defaults under the given ones)."""
    fitted: dict[str, list[str | None]] = {}
    resolved: dict[str, dict[str, Any]] = {}
    compared = sorted(halves[0] + halves[1])
    for name, cls in cfg.chosen().items():
        ours, fit = cfg.split(name)
        resolved[name] = {**cls.settings_for(model), **{k: v for k, v in ours.items() if k != cls.artifact}}
        base = dict(model_name=cfg.model, out=out, truthfulqa_csv=cfg.truthfulqa_csv, preset=cfg.preset,
                    split_seed=cfg.split_seed, progress=cfg.progress, device=cfg.device, compared_questions=compared,
                    log=log)
        if cls.artifact is None:
            fitted[name] = [None, None]
        elif ours.get(cls.artifact):
            log(f"{cls.title}: {cls.artifact} from {ours[cls.artifact]}")
            fitted[name] = [str(ours[cls.artifact])] * 2
        elif cls.fit_data == "truthfulqa":  # half i is evaluated with the file fit on the other half
            fitted[name] = [cls.fit(model, tokenizer, FitData(**base, questions=halves[1 - i], suffix=f"_half{i}",
                                                              meta={"evaluated_half": i}), **fit) for i in (0, 1)]
        else:
            fitted[name] = [cls.fit(model, tokenizer, FitData(**base), **fit)] * 2
        lap(f"fit {name}")
    return fitted, resolved


def run_comparison(cfg: ComparisonConfig, log: Callable[[str], None] = print) -> ComparisonResult:
    """Every run on every benchmark, the paired tests against the baseline, the table, the figure."""
    from ..model_adapters.lm_eval_truthgated import TruthGatedLM
    from ..models import load_model
    from ..paired_stats import compare_scores
    from ..presets import halueval_parse
    from ..probing.iti import question_halves
    from ..tasks.truthfulqa.utils import csv_path, read_rows
    from .halueval_judge import Evaluation, HaluEvalJudge, JudgeSettings, paired_comparison
    from .neutral_text import halueval_paragraphs, neutral_text_cost
    from .truthfulqa_mc import TruthfulQAEvaluator, concatenate

    cfg.check()
    csv = str(csv_path(cfg.truthfulqa_csv))
    cfg.truthfulqa_csv = csv
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock()
    stages, lap = clock.seconds, clock.lap
    halves = [list(h) for h in question_halves(len(read_rows(csv)), cfg.split_seed, cfg.questions, preset=cfg.preset)]
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    lap("load")
    fitted, resolved = _fit_all(cfg, model, tokenizer, halves, out, log, lap)
    notes = [{"method": name, **note} for name, cls in cfg.chosen().items()
             for note in cls.comparison_notes(fitted, out)]
    lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, method="none", batch_size=cfg.batch_size,
                      device=cfg.device)
    judge = HaluEvalJudge(model, tokenizer, JudgeSettings(batch_size=cfg.batch_size, device=cfg.device,
                                                          parse=halueval_parse(cfg.preset)), out, log, lm=lm)
    tqa = TruthfulQAEvaluator(lm, csv, out)
    texts = halueval_paragraphs(cfg.neutral_offset, cfg.neutral_texts) if "neutral" in cfg.benchmarks else []
    chosen = cfg.chosen()
    config = {**asdict(cfg), "benchmarks": list(cfg.benchmarks), "methods": list(chosen), "settings": resolved,
              "halueval_task": judge.task}
    result = ComparisonResult(config, halves, {k: [f for f in v if f] for k, v in fitted.items()},
                              stage_seconds=stages, notes=notes)
    base: RunResult | None = None
    say = getattr(log, "say", log)
    all_runs = _interventions(cfg, fitted, resolved)
    labels = run_labels()
    for number, (name, made) in enumerate(all_runs.items(), 1):
        family = next((m for m in chosen if name == m or name.startswith(f"{m}_")), "")
        run = RunResult(name, labels.get(name, name), [m.describe() for m in made], method=family)
        log(f"-- {run.label}: {made[0].label()}")
        started, parts_said = time.perf_counter(), []
        if "halueval" in cfg.benchmarks:
            e = judge(f"halueval_{name}", "test", cfg.halueval_offset, cfg.halueval_rows, made[0])
            run.halueval = asdict(e)
            parts_said.append(f"HaluEval acc {100 * e.metrics['acc']:.1f}")
            lap("halueval")
        if "truthfulqa" in cfg.benchmarks:
            parts = [tqa(f"truthfulqa_{name}_half{i}", halves[i], made[i]) for i in (0, 1)]
            joined = concatenate(name, parts)
            run.truthfulqa = joined.to_dict()
            log(f"      TruthfulQA {len(joined.rows)} questions: MC1 {100 * joined.mc1.mean():.1f}, MC2 "
                f"{100 * joined.mc2.mean():.1f} ({joined.seconds:.0f} s)")
            parts_said.append(f"MC1 {100 * joined.mc1.mean():.1f}, MC2 {100 * joined.mc2.mean():.1f}")
            lap("truthfulqa")
        if texts:
            cost = neutral_text_cost(model, tokenizer, texts, made[0], batch_size=cfg.batch_size)
            run.neutral = cost.to_dict()
            log(f"      neutral text: CE {cost.ce:.3f} (plain {cost.ce_plain:.3f}), KL {cost.kl:.4f} nats/token")
            parts_said.append(f"KL {cost.kl:.3f}")
            lap("neutral")
        if base is None:
            base = run
        else:
            if run.halueval:
                run.stats["halueval"] = paired_comparison(Evaluation(**base.halueval), Evaluation(**run.halueval),
                                                          cfg.control_seed)
            if run.truthfulqa:
                for m in ("mc1", "mc2"):
                    run.stats[m] = compare_scores(np.array(base.truthfulqa[f"{m}_per_question"]),
                                                  np.array(run.truthfulqa[f"{m}_per_question"]), binary=m == "mc1",
                                                  seed=cfg.control_seed)
        result.runs.append(run)
        _write_leaderboard_files(cfg, run, out / "leaderboard")
        if say is not log:   # a RunLog: one line per run on the screen
            say(f"[run {number}/{len(all_runs)}] {run.label}: {'; '.join(parts_said)} "
                f"({time.perf_counter() - started:.0f} s)")
    stages["total"] = clock.total()
    atomic_write_text(out / "comparison.json",
                      json.dumps(relative_descriptions(result.to_dict(), out), indent=2, default=str) + "\n")
    atomic_write_text(out / "comparison.md", format_comparison(result))
    plot_comparison(result, out / "comparison.png")
    return result


def _write_leaderboard_files(cfg: ComparisonConfig, run: RunResult, folder: Path) -> None:
    """One ``truthprobe-results`` JSON per benchmark, with the run's recorded intervention."""
    entries = {}
    if run.halueval:
        entries["halueval_truthprobe"] = {k: run.halueval["metrics"][k] for k in ("acc", "f1", "precision", "recall")}
    if run.truthfulqa:
        entries["truthfulqa"] = {"mc1": run.truthfulqa["mc1"], "mc2": run.truthfulqa["mc2"]}
    if run.neutral:
        entries["neutral_text"] = {"ce": run.neutral["ce"], "kl": run.neutral["kl"]}
    for bench, metrics in entries.items():
        payload = {"format": "truthprobe-results", "model": cfg.model, "intervention": run.interventions[0],
                   "benchmark": bench, "metrics": metrics,
                   **({"lower_is_better": ["ce", "kl"]} if bench == "neutral_text" else {})}
        atomic_write_text(folder / f"{run.name}_{bench}.json",
                          json.dumps(relative_descriptions(payload, folder), indent=2, default=str) + "\n")


# ---- report -----------------------------------------------------------------------------------------------

def _p(st: dict[str, Any] | None, key: str = "p") -> str:
    if not st:
        return ""
    p = st.get(key)
    return "" if p is None else (f"p={p:.2g}" if p >= 0.001 else "p<0.001")


def _cell(value: float | None, delta: float | None = None, st: dict | None = None, pkey: str = "p",
          scale: float = 100.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{scale * value:.1f}"
    if delta is not None:
        text += f" ({scale * delta:+.1f}, {_p(st, pkey)})"
    return text


def format_comparison(result: ComparisonResult) -> str:
    cfg = result.config
    base = result.runs[0]
    own_runs = [r for r in result.runs if r.method and r.name == r.method]  # each method itself, as it ran
    settings = "; ".join(r.interventions[0].get("label") or r.label for r in own_runs)
    benchmarks = cfg.get("benchmarks", BENCHMARKS)
    where = {"halueval": f"HaluEval: {cfg['halueval_task']} rows {cfg['halueval_offset']}-"
                         f"{cfg['halueval_offset'] + cfg['halueval_rows'] - 1}",
             "truthfulqa": f"TruthfulQA: {sum(map(len, result.halves))} questions in two halves (each half evaluated "
                           "with the files of methods fit on TruthfulQA from the other half)",
             "neutral": f"neutral text: {cfg['neutral_texts']} HaluEval knowledge paragraphs"}
    lines = [f"Methods compared on {cfg['model']} (one loaded model). {settings} (settings fixed before any test row "
             "is seen).",
             "; ".join(where[b] for b in BENCHMARKS if b in benchmarks) + ".",
             "Cells: value in % (difference to the baseline in points, paired p: exact McNemar for HaluEval accuracy and "
             "MC1, Wilcoxon signed-rank for MC2). CE: cross-entropy in nats/token; KL(plain || method) in nats/token.",
             "", "| method | HaluEval acc | HaluEval F1 | TruthfulQA MC1 | TruthfulQA MC2 | CE | KL |",
             "|---|---|---|---|---|---|---|"]
    for run in result.runs:
        first = run is base
        cells = []
        if run.halueval:
            m, b = run.halueval["metrics"], base.halueval["metrics"]
            st = run.stats.get("halueval")
            cells.append(_cell(m["acc"], None if first else m["acc"] - b["acc"], st, "mcnemar_p"))
            cells.append(_cell(m["f1"]) if first else f"{100 * m['f1']:.1f} ({100 * (m['f1'] - b['f1']):+.1f})")
        else:
            cells += ["", ""]
        for metric in ("mc1", "mc2"):
            if run.truthfulqa:
                cells.append(_cell(run.truthfulqa[metric], None if first else
                                   run.truthfulqa[metric] - base.truthfulqa[metric], run.stats.get(metric)))
            else:
                cells.append("")
        if run.neutral:
            cells += [f"{run.neutral['ce']:.3f}", f"{run.neutral['kl']:.4f}"]
        else:
            cells += ["", ""]
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    lines.append("")
    for run in result.runs[1:]:
        for key, st in run.stats.items():
            ci = st.get("acc_delta_ci") or st.get("delta_ci")
            delta = st.get("acc_delta", st.get("delta"))
            lines.append(f"- {run.label}, {key}: difference {100 * delta:+.1f} points (95% CI {100 * ci[0]:+.1f} to "
                         f"{100 * ci[1]:+.1f}), {_p(st, 'mcnemar_p' if key == 'halueval' else 'p')}.")
    for note in result.notes:
        lines.append(f"- {note['text']}")
    lines += ["", "Time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items()) + "."]
    return "\n".join(lines) + "\n"


def plot_comparison(result: ComparisonResult, path: "str | Path") -> Path:
    """Difference to the baseline with its 95% interval, per run and benchmark; * marks p < 0.05."""
    from ..analysis import reports

    plt = reports.pyplot()
    panels = [("halueval", "HaluEval accuracy", "acc_delta", "acc_delta_ci", "mcnemar_p"),
              ("mc1", "TruthfulQA MC1", "delta", "delta_ci", "p"), ("mc2", "TruthfulQA MC2", "delta", "delta_ci", "p")]
    runs = result.runs[1:]
    panels = [p for p in panels if any(p[0] in r.stats for r in runs)]
    has_kl = any(r.neutral for r in result.runs)
    fig, axes = plt.subplots(1, len(panels) + has_kl, figsize=(3.3 * (len(panels) + has_kl), 0.45 * len(runs) + 1.8),
                             squeeze=False, sharey=True)
    y = np.arange(len(runs))
    families = list(dict.fromkeys(r.method for r in runs))
    palette = ["tab:blue", "tab:red", "tab:purple", "tab:green", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]
    for ax, (key, title, dk, ck, pk) in zip(axes[0], panels):
        for i, r in enumerate(runs):
            st = r.stats.get(key)
            if not st:
                continue
            d, (lo, hi) = 100 * st[dk], st[ck]
            color = palette[families.index(r.method) % len(palette)] if r.method in families else "tab:blue"
            color = "0.6" if r.name != r.method else color  # controls and ablations in grey
            ax.errorbar([d], [i], xerr=[[d - 100 * lo], [100 * hi - d]], fmt="o", color=color, capsize=3)
            if st[pk] < 0.05:
                ax.annotate("*", (d, i + 0.15), ha="center", fontsize=11)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{title}: method - baseline (points)", fontsize=8)
    if has_kl:
        ax = axes[0][-1]
        ax.barh(y, [r.neutral["kl"] if r.neutral else 0 for r in runs], color="0.5")
        ax.set_title("KL(plain || method), nats/token", fontsize=8)
    axes[0][0].set_yticks(y, [r.label for r in runs], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{result.config['model']}: methods against the baseline (95% paired bootstrap intervals; * p < 0.05)",
                 fontsize=9)
    fig.tight_layout()
    return reports.save_figure(fig, path)


__all__ = ["BASELINE", "BENCHMARKS", "ComparisonConfig", "ComparisonError", "ComparisonResult", "RunResult", "format_comparison",
           "method_names", "plot_comparison", "run_comparison", "run_labels"]
