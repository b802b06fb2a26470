"""Methods side by side on one loaded model (what ``truthprobe compare-methods`` runs).

Runs: the baseline, TruthProbe, ITI and truth-neuron suppression (``methods``), and (``controls``) their random
controls: random and shuffled gates, ITI on random heads and along random directions, as many random neurons
per layer. Benchmarks, each with its paired test against the baseline:

- HaluEval QA under the TruthProbe paper's protocol (``halueval_truthprobe_seed0``) on rows no other stage uses:
  accuracy and F1 with an exact McNemar p and paired bootstrap intervals;
- TruthfulQA MC1 / MC2 under ITI's published protocol, 2-fold over questions: ITI's directions are fit on one
  half and evaluated on the other, both ways; every method is evaluated on the same two halves. MC1: exact
  McNemar; MC2: Wilcoxon signed-rank; both with paired bootstrap intervals of the mean difference;
- cross-entropy and KL divergence against the plain model on neutral text (HaluEval knowledge paragraphs).

TruthProbe's scores are probed on HaluEval rows ``[0, probe_rows)`` (or given); the methods run at the
settings given (defaults: the published ones), chosen before any test row is seen. ITI's directions and the
truth neurons come from one TruthfulQA half each, for evaluating the other; on HaluEval and the neutral text
the first half's (fit on the second half's questions) are used. With both Truth Scores and truth neurons the
comparison also reports where each sits by layer (``layer_overlap``). Everything goes to ``out``: direction files, score
file, every lm-eval result and per-sample file, ``comparison.md`` / ``.json`` / ``.png``, and one
``truthprobe-results`` JSON per run and benchmark under ``leaderboard/`` (``truthprobe leaderboard`` reads them).
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
from ..interventions import Baseline, Intervention, build

BENCHMARKS = ("halueval", "truthfulqa", "neutral")
METHODS = ("truthprobe", "iti", "neurons", "rve")
TRUTHPROBE_DEFAULTS = {"alpha": 4.5, "norm": "centered"}
ITI_DEFAULTS = {"k": 48, "alpha": 15.0}
NEURON_DEFAULTS = {"factor": 0.0}
RVE_DEFAULTS = {"span": "context", "k": 2, "beta": 1.0, "alpha": 0.05}  # layers: the middle five
NEURON_FIND_DEFAULTS = {"steps": 20, "p_threshold": 0.05, "top_n": None}
# every control named for what it is: the paper's own ablations, and ours
RUN_LABELS = {"baseline": "baseline", "truthprobe": "TruthProbe",
              "truthprobe_random": "strength-matched random gate (ours)",
              "truthprobe_shuffled": "shuffled gate (ours)",
              "truthprobe_paper_random": "paper's random gate (1 + U[-1,1], redrawn per call)",
              "truthprobe_paper_inverse": "paper's inverse gate (minmax 1/s)",
              "iti": "ITI", "iti_random_heads": "ITI, random heads",
              "iti_random_directions": "ITI, random directions", "neurons": "truth neurons",
              "neurons_random": "random neurons", "rve": "RVE (context)", "rve_random_heads": "RVE, random heads",
              "rve_sensitive": "RVE, sensitive heads only (paper's ablation)",
              "rve_no_denoise": "RVE, no denoising (paper's ablation)",
              "rve_global": "whole-span context boost (PAI-style baseline, ours)"}


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
    scores: str | None = None  # a TruthProbe score file; None: probe HaluEval rows [0, probe_rows)
    probe_rows: int = 292
    preset: str = "ours"  # paper: the published probing, ITI pipeline and reply parse; ours: ours (presets.py)
    truthprobe: dict[str, Any] = field(default_factory=lambda: dict(TRUTHPROBE_DEFAULTS))
    iti: dict[str, Any] = field(default_factory=lambda: dict(ITI_DEFAULTS))
    iti_folds: int = 4
    neurons: dict[str, Any] = field(default_factory=lambda: dict(NEURON_DEFAULTS))
    neuron_find: dict[str, Any] = field(default_factory=lambda: dict(NEURON_FIND_DEFAULTS))
    rve: dict[str, Any] = field(default_factory=lambda: dict(RVE_DEFAULTS))
    ars_rows: int = 200  # ARS from text pairs of HaluEval rows [0, ars_rows) (inside the probing rows)
    ars: str | None = None  # an ARS score file instead (truthprobe ars score)
    methods: tuple[str, ...] = METHODS
    controls: bool = True
    control_seed: int = 0
    benchmarks: tuple[str, ...] = BENCHMARKS
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True

    def check(self) -> None:
        from ..presets import check_preset

        check_preset(self.preset)
        odd = [m for m in self.methods if m not in METHODS]
        if odd:
            raise ComparisonError(f"methods: expected some of {', '.join(METHODS)}, found {list(self.methods)}")
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise ComparisonError(f"benchmarks: expected some of {', '.join(BENCHMARKS)}, found {list(self.benchmarks)}")
        if self.questions is not None and self.questions < 4:
            raise ComparisonError(f"questions: expected at least 4 (two halves of two), found {self.questions}")
        if "iti" in self.methods and self.questions is not None and self.questions // 2 < self.iti_folds:
            raise ComparisonError(f"questions: {self.questions} give halves of {self.questions // 2}, fewer than the "
                                  f"{self.iti_folds} folds ITI's probes are cross-validated with; give more questions "
                                  "or fewer --iti-folds")
        if self.halueval_rows < 2 or self.neutral_texts < 1:
            raise ComparisonError("rows: expected at least 2 HaluEval rows and 1 neutral text")
        if "rve" in self.methods and self.halueval_offset < self.ars_rows:
            raise ComparisonError(f"HaluEval rows start at {self.halueval_offset}, inside the ARS rows 0-{self.ars_rows - 1}")
        if self.halueval_offset < self.probe_rows:
            raise ComparisonError(f"HaluEval rows start at {self.halueval_offset}, inside the probing rows "
                                  f"0-{self.probe_rows - 1}")
        for name, own in (("truthprobe", "scores"), ("iti", "directions"), ("neurons", "neurons"), ("rve", "ars")):
            reserved = {own, "control"} & set(getattr(self, name))
            if reserved:
                raise ComparisonError(f"{name} settings: {', '.join(sorted(reserved))} are set by the comparison")
        build("truthprobe", gate="random", **self.truthprobe)  # bad settings fail before any model work
        from ..neuron_scores import selection

        selection(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), float(self.neuron_find.get("p_threshold", 0.05)),
                  self.neuron_find.get("top_n"))
        unknown_find = set(self.neuron_find) - set(NEURON_FIND_DEFAULTS)
        if unknown_find:
            raise ComparisonError(f"neuron finding: expected settings {', '.join(NEURON_FIND_DEFAULTS)}, found "
                                  f"{', '.join(sorted(unknown_find))}")


@dataclass
class RunResult:
    name: str
    label: str
    interventions: list[dict[str, Any]]  # describe() per TruthfulQA half (the first also serves HaluEval, neutral)
    halueval: dict[str, Any] | None = None
    truthfulqa: dict[str, Any] | None = None
    neutral: dict[str, Any] | None = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark metric -> paired test vs baseline


@dataclass
class ComparisonResult:
    config: dict[str, Any]
    halves: list[list[int]]
    files: dict[str, str]
    runs: list[RunResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    layer_overlap: list[dict[str, Any]] = field(default_factory=list)  # per neuron file: neurons vs top heads

    def to_dict(self) -> dict[str, Any]:
        return {"format": "truthprobe-method-comparison", "config": self.config, "halves": self.halves,
                "files": self.files, "runs": [asdict(r) for r in self.runs], "stage_seconds": self.stage_seconds,
                "layer_overlap": self.layer_overlap}


# ---- the runs ---------------------------------------------------------------------------------------------

def _interventions(cfg: ComparisonConfig, scores: Any, directions: list[str], neurons: list[str],
                   ars: str | None = None) -> dict[str, list[Intervention]]:
    """Run name -> one intervention per TruthfulQA half (ITI's and the neurons' from the other half's questions)."""
    runs: dict[str, list[Intervention]] = {"baseline": [Baseline(), Baseline()]}
    per_method: dict[str, list[Intervention]] = {}
    if "truthprobe" in cfg.methods:
        tp = build("truthprobe", scores=scores, **cfg.truthprobe)
        per_method["truthprobe"] = [tp, tp]
    if "iti" in cfg.methods:
        per_method["iti"] = [build("iti", directions=d, **cfg.iti) for d in directions]
    if "neurons" in cfg.methods:
        per_method["neurons"] = [build("neurons", neurons=n, **cfg.neurons) for n in neurons]
    if "rve" in cfg.methods:
        rve = build("rve", ars=ars, **cfg.rve)
        per_method["rve"] = [rve, rve]
    for name, made in per_method.items():
        runs[name] = made
        if cfg.controls:
            for kind in made[0].controls:
                runs[f"{name}_{kind}"] = [m.control(kind, cfg.control_seed) for m in made]
            if name == "rve":  # the paper's two ablations, and our PAI-style baseline (not the paper's "Global")
                for run, changes in (("rve_sensitive", {"heads": "sensitive"}), ("rve_no_denoise", {"denoise": False}),
                                     ("rve_global", {"variant": "whole_span", "ars": "", "heads": "all",
                                                     "denoise": True})):
                    made_run = made[0].with_settings(**changes)
                    runs[run] = [made_run, made_run]
    return runs


def _fit_directions(cfg: ComparisonConfig, model: Any, tokenizer: Any, halves: list[list[int]], out: Path,
                    log: Callable[[str], None]) -> list[str]:
    """ITI direction files: ``iti_half{i}.json`` fit on the *other* half, so that half i is evaluated out of fold."""
    from ..probing.cache import default_cache_root
    from ..probing.iti import fit_iti

    files = []
    for i in (0, 1):
        train = halves[1 - i]
        log(f"ITI: fitting directions on TruthfulQA half {1 - i} ({len(train)} questions), for evaluating half {i}")
        made = fit_iti(model, tokenizer, train, csv=cfg.truthfulqa_csv, folds=cfg.iti_folds, seed=cfg.split_seed,
                       cache_dir=default_cache_root(), progress=cfg.progress, batch_size=16, preset=cfg.preset,
                       sigma_questions=sorted(halves[0] + halves[1]),  # paper: sigma over the compared questions
                       meta={"model_source": cfg.model, "evaluated_half": i, "split_seed": cfg.split_seed})
        path = made.save(out / f"iti_half{i}.json")
        files.append(str(path))
    return files


def _find_neurons(cfg: ComparisonConfig, model: Any, tokenizer: Any, halves: list[list[int]], out: Path,
                  log: Callable[[str], None]) -> tuple[list[str], list[Any]]:
    """Neuron score files and their ``NeuronScores``: ``neurons_half{i}.json`` found on the *other* half, so that half i is evaluated out of
    fold (the option order of the lettered prompts follows ``split_seed``)."""
    from ..probing.neurons import find_neurons

    files, found = [], []
    for i in (0, 1):
        train = halves[1 - i]
        log(f"truth neurons: attributing TruthfulQA half {1 - i} ({len(train)} questions), for evaluating half {i}")
        made = find_neurons(model, tokenizer, train, csv=cfg.truthfulqa_csv, seed=cfg.split_seed,
                            progress=cfg.progress, **cfg.neuron_find,
                            meta={"model_source": cfg.model, "evaluated_half": i, "split_seed": cfg.split_seed})
        files.append(str(made.save(out / f"neurons_half{i}.json")))
        found.append(made)
        log(f"      {made.count} neurons selected (p < {made.meta['p_threshold']}; chance alone passes "
            f"{made.meta['expected_by_chance']:.0f}, Benjamini-Hochberg keeps {made.meta['n_bh']})")
    return files, found


def _layer_overlap(scores: Any, neuron_files: list[str], neuron_scores: list[Any], out: Path) -> list[dict[str, Any]]:
    """Where the truth neurons sit against the top Truth-Score heads, per neuron file; with a map of each."""
    from ..neuron_scores import layer_overlap
    from ..plots import plot_neuron_map

    found = []
    for i, (path, neurons) in enumerate(zip(neuron_files, neuron_scores)):
        plot_neuron_map(neurons, out / f"neurons_half{i}.png", head_scores=scores)
        if scores is not None and neurons.shape[0] == scores.num_layers and neurons.count:
            found.append({"neurons": path, **layer_overlap(neurons, scores)})
    return found


def _ars_scores(cfg: ComparisonConfig, model: Any, tokenizer: Any, out: Path, log: Callable[[str], None]) -> str:
    """ARS of every head from HaluEval text pairs (right / hallucinated answer, the same knowledge), rows
    ``[0, ars_rows)``; fills in RVE's default layers (the middle five) from the model's depth."""
    from ..architectures import locate_heads
    from ..probing.ars import ars_scores, halueval_pairs
    from ..probing.data import load_halueval
    from ..spans import context_span

    settings = {**RVE_DEFAULTS, **cfg.rve}
    if "layers" not in cfg.rve:
        middle = locate_heads(model).num_layers // 2
        cfg.rve = {**cfg.rve, "layers": f"{middle - 2}-{middle + 2}"}
    if cfg.ars is not None:
        log(f"RVE: ARS from {cfg.ars}")
        return cfg.ars
    log(f"RVE: ARS of every head from HaluEval rows 0-{cfg.ars_rows - 1} (span: the knowledge paragraph)")
    find = context_span(tokenizer, settings.get("span_start", "#Knowledge:"), settings.get("span_end", "#Question#:"))

    def encode(pair, text):
        return tokenizer(text, return_tensors="pt").to(cfg.device)

    made = ars_scores(model, encode, halueval_pairs(load_halueval(None, 0, cfg.ars_rows)), find, progress=cfg.progress,
                      meta={"model_source": cfg.model, "span": "context", "halueval_rows": cfg.ars_rows})
    return str(made.save(out / "ars.json"))


def _probe_scores(cfg: ComparisonConfig, model: Any, tokenizer: Any, out: Path, log: Callable[[str], None]):
    from ..probing.cache import default_cache_root
    from ..probing.data import halueval_examples
    from ..probing.pipeline import probe_model
    from ..probing.truthprobe_preset import truthprobe_preset
    from ..scores import TruthScores

    if cfg.scores is not None:
        scores = TruthScores.load(cfg.scores)
        log(f"TruthProbe: scores from {cfg.scores}")
    else:
        p = truthprobe_preset(cfg.preset)
        log(f"TruthProbe: probing HaluEval rows 0-{cfg.probe_rows - 1} ({cfg.preset} preset)")
        examples = halueval_examples(None, offset=0, n=cfg.probe_rows, **p.data_options())
        scores = probe_model(model, tokenizer, examples, cache_dir=default_cache_root(), progress=cfg.progress,
                             seed=p.fold_seed, trainer=p.trainer, fold_rule=p.fold_rule, batch_size=p.batch_size,
                             meta={"model_source": cfg.model, "data": "halueval", "offset": 0,
                                   "n_rows": cfg.probe_rows, **p.meta()})
    scores.save(out / "scores.json")
    return scores


def run_comparison(cfg: ComparisonConfig, log: Callable[[str], None] = print) -> ComparisonResult:
    """Every run on every benchmark, the paired tests against the baseline, the table, the figure."""
    from ..model_adapters.lm_eval_truthgated import TruthGatedLM
    from ..models import load_model
    from ..paired_stats import compare_scores
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
    scores = _probe_scores(cfg, model, tokenizer, out, log) if "truthprobe" in cfg.methods or cfg.scores else None
    lap("probe")
    directions = _fit_directions(cfg, model, tokenizer, halves, out, log) if "iti" in cfg.methods else []
    lap("iti fit")
    neuron_files, neuron_scores = (_find_neurons(cfg, model, tokenizer, halves, out, log) if "neurons" in cfg.methods
                                   else ([], []))
    lap("neuron find")
    ars = _ars_scores(cfg, model, tokenizer, out, log) if "rve" in cfg.methods else None
    lap("ars")
    lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, method="none", batch_size=cfg.batch_size,
                      device=cfg.device)
    from ..probing.truthprobe_preset import truthprobe_preset

    judge = HaluEvalJudge(model, tokenizer, JudgeSettings(batch_size=cfg.batch_size, device=cfg.device,
                                                          parse=truthprobe_preset(cfg.preset).parse), out, log, lm=lm)
    tqa = TruthfulQAEvaluator(lm, csv, out)
    texts = halueval_paragraphs(cfg.neutral_offset, cfg.neutral_texts) if "neutral" in cfg.benchmarks else []
    config = {**asdict(cfg), "benchmarks": list(cfg.benchmarks), "methods": list(cfg.methods),
              "halueval_task": judge.task}
    files = {"scores": str(out / "scores.json") if scores is not None else "", "directions": "; ".join(directions),
             "neurons": "; ".join(neuron_files), "ars": ars or ""}
    result = ComparisonResult(config, halves, files, stage_seconds=stages,
                              layer_overlap=_layer_overlap(scores, neuron_files, neuron_scores, out))
    base: RunResult | None = None
    say = getattr(log, "say", log)
    all_runs = _interventions(cfg, scores, directions, neuron_files, ars)
    for number, (name, made) in enumerate(all_runs.items(), 1):
        run = RunResult(name, RUN_LABELS.get(name, name), [m.describe() for m in made])
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
    atomic_write_text(out / "comparison.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
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
        atomic_write_text(folder / f"{run.name}_{bench}.json", json.dumps(payload, indent=2, default=str) + "\n")


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
    methods = cfg.get("methods", METHODS)
    settings = ", ".join(f"{name} {cfg[key]}" for name, key in (("TruthProbe", "truthprobe"), ("ITI", "iti"),
                                                                ("truth neurons", "neurons"), ("RVE", "rve"))
                         if key in methods)
    benchmarks = cfg.get("benchmarks", BENCHMARKS)
    where = {"halueval": f"HaluEval: {cfg['halueval_task']} rows {cfg['halueval_offset']}-"
                         f"{cfg['halueval_offset'] + cfg['halueval_rows'] - 1}",
             "truthfulqa": f"TruthfulQA: {sum(map(len, result.halves))} questions in two halves (ITI directions and "
                           "truth neurons from the other half)",
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
    for i, o in enumerate(result.layer_overlap):
        lines.append(f"- Truth neurons (file {i}: {sum(o['neuron_layer_counts'])} neurons) against the top-{o['top_heads']} "
                     f"Truth-Score heads, by layer: the {o['top_layers']} layers with most neurons {o['neuron_top_layers']}, "
                     f"with most top heads {o['head_top_layers']}; shared {o['shared_layers']} (Jaccard "
                     f"{o['jaccard']:.2f}, chance of at least that overlap p={o['p_overlap_at_least']:.2g}); Spearman "
                     f"rho of the per-layer counts {o['spearman_rho']:.2f} (p={o['spearman_p']:.2g}).")
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
    for ax, (key, title, dk, ck, pk) in zip(axes[0], panels):
        for i, r in enumerate(runs):
            st = r.stats.get(key)
            if not st:
                continue
            d, (lo, hi) = 100 * st[dk], st[ck]
            color = {"iti": "tab:red", "neurons": "tab:purple", "rve": "tab:green"}.get(r.name.split("_")[0], "tab:blue")
            color = "0.6" if "random" in r.name or "shuffled" in r.name else color
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


__all__ = ["BENCHMARKS", "METHODS", "ComparisonConfig", "ComparisonError", "ComparisonResult", "RunResult", "format_comparison",
           "plot_comparison", "run_comparison"]
