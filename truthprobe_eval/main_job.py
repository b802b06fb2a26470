"""The published LLM experiment end to end (what ``truthprobe run`` runs).

1. Probe: Truth Scores from HaluEval rows ``[0, probe_rows)``.
2. Select: alpha and norm by F1 on the validation rows that follow (published grid: centered 2.5 / 4.5 / 6.0 / 7.5,
   min-max 0.1 / 0.2 / 0.3).
3. Test: the baseline and the selected gate on the later, untouched test rows, through lm-eval's
   ``halueval_qa_seed*`` task (HaluEval's judge protocol), one loaded model for every evaluation.

The three row ranges are disjoint by construction. Everything goes to one folder: the score file and its
heatmap, every lm-eval result and per-sample file, and the final table as Markdown and JSON.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ._io import atomic_write_text
from .errors import TruthProbeError
from .halueval_judge import LABELS, METRICS, Evaluation, HaluEvalJudge, JudgeSettings, select_best

PUBLISHED_GRID: tuple[tuple[str, float], ...] = (
    ("centered", 2.5), ("centered", 4.5), ("centered", 6.0), ("centered", 7.5),
    ("minmax", 0.1), ("minmax", 0.2), ("minmax", 0.3),
)
HALUEVAL_ROWS = 10_000


class MainJobError(TruthProbeError, ValueError):
    """Settings of the main job that cannot work."""


@dataclass
class MainJobConfig:
    """Default sizes: 1,000 judge evaluations (35-60 min on a 2-core CPU); ``test_rows=None``: every remaining row."""

    model: str = "smollm2-135m-instruct"
    data: str | None = None  # a HaluEval QA .jsonl(.gz); None: the embedded copy
    out: str = "runs/truthprobe-run"
    probe_rows: int = 292
    val_rows: int = 50
    test_rows: int | None = 300
    grid: tuple[tuple[str, float], ...] = PUBLISHED_GRID
    draw_seed: int = 0  # which seeded answer draw (halueval_qa_seed0/1/2)
    batch_size: int = 8
    chat: bool = False  # lm-eval's --apply_chat_template
    knowledge: bool = True
    scores: str | None = None  # reuse a score file instead of probing
    folds: int = 5
    trainer: str = "exact"
    probe_batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True

    def rows_total(self) -> int:
        from .datasets import iter_halueval

        return HALUEVAL_ROWS if self.data is None else sum(1 for _ in iter_halueval(self.data))

    def check(self) -> None:
        """Fail before any model work: row ranges, grid, seeds."""
        from .gate_config import check_gate_settings

        if self.draw_seed not in (0, 1, 2):
            raise MainJobError(f"draw seed: expected 0, 1 or 2 (the tasks halueval_qa_seed0/1/2), found {self.draw_seed}")
        for name in ("probe_rows", "val_rows", "batch_size", "probe_batch_size"):
            if getattr(self, name) < (0 if name == "val_rows" else 1):
                raise MainJobError(f"{name.replace('_', ' ')}: expected a positive integer, found {getattr(self, name)}")
        if self.test_rows is not None and self.test_rows < 1:
            raise MainJobError(f"test rows: expected a positive integer or 'all', found {self.test_rows}")
        if not self.grid:
            raise MainJobError("grid: expected at least one (norm, alpha) pair, found none")
        for norm, alpha in self.grid:
            check_gate_settings(alpha, norm)
        if self.val_rows == 0 and len(self.grid) > 1:
            raise MainJobError(f"validation rows: 0 leaves nothing to choose among {len(self.grid)} gate settings; "
                               "give one with --norm and --alpha, or validation rows")
        total = self.rows_total()
        used = self.probe_rows + self.val_rows + (self.test_rows or 1)
        if used > total:
            raise MainJobError(f"rows: probe {self.probe_rows} + validation {self.val_rows} + test {self.test_rows} = "
                               f"{used}, but the data has {total} rows")

    @property
    def val_offset(self) -> int:
        return self.probe_rows

    @property
    def test_offset(self) -> int:
        return self.probe_rows + self.val_rows


@dataclass
class MainJobResult:
    config: dict[str, Any]
    scores_file: str
    heatmap_file: str | None
    validation: list[Evaluation] = field(default_factory=list)
    baseline: Evaluation | None = None
    gated: Evaluation | None = None
    selected: dict[str, Any] = field(default_factory=dict)

    def deltas(self) -> dict[str, float]:
        return {m: self.gated.metrics[m] - self.baseline.metrics[m] for m in METRICS}

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "scores_file": self.scores_file, "heatmap_file": self.heatmap_file,
                "selected": self.selected, "validation": [asdict(e) for e in self.validation],
                "test": {"baseline": asdict(self.baseline), "gated": asdict(self.gated), "delta": self.deltas()}}


# ---- formatting --------------------------------------------------------------------------------------------

def _pct(metric: str, value: float) -> str:
    return str(int(value)) if metric == "unparseable" else f"{100 * value:.1f}"


def _signed(metric: str, value: float) -> str:
    return f"{int(value):+d}" if metric == "unparseable" else f"{100 * value:+.1f}"


def _tie_note(result: MainJobResult) -> str:
    """Say so when no gate beat the ungated model on validation: the choice is then only the tie-break."""
    base = [e for e in result.validation if e.gate["gate"] == "none"]
    gated = [e.metrics["f1"] for e in result.validation if e.gate["gate"] != "none"]
    if not base or not gated or max(gated) > base[0].metrics["f1"]:
        return ""
    return (f" No gate beat the baseline's validation F1 ({100 * base[0].metrics['f1']:.1f}); this one won the "
            "tie-break (accuracy, then grid order).")


def format_table(result: MainJobResult) -> str:
    """The final Markdown table: baseline, gated and their difference on the test rows (percentages)."""
    b, g, d = result.baseline, result.gated, result.deltas()
    first, stop = b.rows
    header = "| model | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [
        f"HaluEval QA judge, test rows {first}-{stop - 1} ({stop - first} rows, answer draw seed "
        f"{result.config['draw_seed']}); accuracy, F1, precision, recall and yes-ratio in %, unparseable as a count.",
        f"Gate chosen on validation rows {result.config['val_offset']}-{result.config['test_offset'] - 1} by F1: "
        f"{result.selected['norm']}, alpha {result.selected['alpha']:g}." + _tie_note(result),
        "",
        header,
        "|" + "---|" * (len(METRICS) + 1),
        "| baseline | " + " | ".join(_pct(m, b.metrics[m]) for m in METRICS) + " |",
        f"| TruthProbe ({result.selected['norm']}, alpha {result.selected['alpha']:g}) | "
        + " | ".join(_pct(m, g.metrics[m]) for m in METRICS) + " |",
        "| delta | " + " | ".join(_signed(m, d[m]) for m in METRICS) + " |",
    ]
    if result.validation:
        lines += ["", "Validation grid (F1 %, accuracy %, yes-ratio %):", "",
                  "| gate | F1 | accuracy | yes-ratio |", "|---|---|---|---|"]
        for e in result.validation:
            label = "baseline" if e.gate["gate"] == "none" else f"{e.gate['norm']}, alpha {e.gate['alpha']:g}"
            lines.append(f"| {label} | {_pct('f1', e.metrics['f1'])} | {_pct('acc', e.metrics['acc'])} | "
                         f"{_pct('yes_ratio', e.metrics['yes_ratio'])} |")
    return "\n".join(lines) + "\n"


# ---- the job ------------------------------------------------------------------------------------------------

def _probe(cfg: MainJobConfig, model, tokenizer, out: Path, log) -> tuple[Any, Path, Path | None]:
    from .probing.cache import default_cache_root
    from .probing.data import halueval_examples
    from .probing.pipeline import format_summary, plot_heatmap, probe_model
    from .scores import TruthScores

    scores_file = out / "scores.json"
    if cfg.scores is not None:
        scores = TruthScores.load(cfg.scores)
        scores.save(scores_file)
        log(f"scores: {cfg.scores} (given, not probed)")
    else:
        log(f"probing: HaluEval rows 0-{cfg.probe_rows - 1} ({2 * cfg.probe_rows} answers), {cfg.folds}-fold")
        examples = halueval_examples(cfg.data, offset=0, n=cfg.probe_rows)
        scores = probe_model(model, tokenizer, examples, n_folds=cfg.folds, trainer=cfg.trainer,
                             batch_size=cfg.probe_batch_size, cache_dir=default_cache_root(), progress=cfg.progress,
                             meta={"model_source": cfg.model, "data": cfg.data or "halueval", "offset": 0,
                                   "n_rows": cfg.probe_rows})
        scores.save(scores_file)
        log(format_summary(scores))
    heatmap = plot_heatmap(scores, out / "scores.png")
    return scores, scores_file, heatmap


def run_main_job(cfg: MainJobConfig, log: Callable[[str], None] = print) -> MainJobResult:
    """Probe, select the gate on validation rows, evaluate baseline and gate on test rows; write everything."""
    from .analysis.ablations import grid_search
    from .models import load_model

    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    scores, scores_file, heatmap = _probe(cfg, model, tokenizer, out, log)
    settings = JudgeSettings(data=cfg.data, draw_seed=cfg.draw_seed, knowledge=cfg.knowledge, chat=cfg.chat,
                             batch_size=cfg.batch_size, device=cfg.device)
    evaluate = HaluEvalJudge(model, tokenizer, settings, out, log)
    config = {**asdict(cfg), "grid": [list(p) for p in cfg.grid], "val_offset": cfg.val_offset,
              "test_offset": cfg.test_offset}
    result = MainJobResult(config=config, scores_file=str(scores_file), heatmap_file=str(heatmap) if heatmap else None)

    if len(cfg.grid) == 1 and cfg.val_rows == 0:
        norm, alpha = cfg.grid[0]
        result.selected = {"norm": norm, "alpha": float(alpha), "by": "given"}
    else:
        log(f"selecting alpha and norm on rows {cfg.val_offset}-{cfg.test_offset - 1} ({len(cfg.grid)} settings)")
        grid = grid_search(evaluate, scores, grid=cfg.grid, offset=cfg.val_offset, n=cfg.val_rows)
        result.validation = [grid.baseline, *grid.runs]
        best = grid.best
        result.selected = {"norm": best.gate["norm"], "alpha": best.gate["alpha"], "by": "validation F1",
                           "validation_f1": best.metrics["f1"]}
    log(f"testing on rows {cfg.test_offset}-" + (f"{cfg.test_offset + cfg.test_rows - 1}" if cfg.test_rows else "end"))
    result.baseline = evaluate("test_baseline", "test", cfg.test_offset, cfg.test_rows, {"gate": "none"})
    result.gated = evaluate("test_gated", "test", cfg.test_offset, cfg.test_rows,
                            {"scores": scores, "alpha": result.selected["alpha"], "norm": result.selected["norm"]})
    result.config["seconds"] = round(time.perf_counter() - started, 1)
    table = format_table(result)
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


__all__ = ["Evaluation", "MainJobConfig", "MainJobError", "MainJobResult", "PUBLISHED_GRID", "format_table", "run_main_job",
           "select_best"]
