"""One table from many evaluation runs: rows model x method, columns benchmark metrics, deltas vs the baseline.

Reads, recursively under each result folder:
- lm-eval ``results_<timestamp>.json``: the model from ``config.model_args`` (``pretrained=``) and the method from
  the intervention the ``truthgated`` / ``intervened`` model recorded (``config.intervention``, its ``describe()``);
  ``hf`` runs are the plain model; per-sample logs ``samples_<task>_<timestamp>.jsonl`` beside it
  (``--log_samples``) give significance marks;
- VLMEvalKit work folders ``<model>/<model>_<dataset>_score.csv`` / ``_acc.csv`` (VLMEvalKit's own rating tables),
  with the prediction file ``<model>_<dataset>.xlsx`` beside them for significance; model and method from the
  folder's ``intervention.json`` (``truthprobe vlmeval`` writes it), else the plain model named by the folder;
- our own JSON results (``{"format": "truthprobe-results", "model", "intervention" (or "method"), "benchmark",
  "metrics": {...}}``) and CHAIR outputs (``{"CHAIRs", "CHAIRi", ...}``, with the folder's ``intervention.json``).

Nothing is guessed from model names or argument strings: a method is what its run recorded.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import TruthProbeError
from ..gate_config import GATE_NAMES
from . import reports
from . import significance as sig

VANILLA = "vanilla"
TP_BASE = "TruthProbe (base-LLM scores)"
TP_OWN = "TruthProbe (own scores)"
TP = "TruthProbe"

ITI = "ITI"  # the rows other modules and tests name; every other row is named by its method's class
NEURONS = "truth neurons"
_FAMILY_OF_ROW: dict[str, str] = {}  # row name -> its method, learnt as method_from_description names rows
INTERVENTION_FILE = "intervention.json"  # what ``truthprobe vlmeval`` writes into each model's work folder
RESULTS_JSON = re.compile(r"^results_(?P<ts>.+)\.json$")
VLMEVAL_RATING = re.compile(r"^(?P<stem>.+)_(?P<kind>score|acc)\.csv$")
SKIP_KEYS = {"alias", "name", "sample_len", "samples", " "}


class LeaderboardError(TruthProbeError, ValueError):
    """Result folders that cannot be collected."""


@dataclass
class ResultEntry:
    model: str
    method: str
    benchmark: str
    metrics: dict[str, float]
    source: str
    harness: str
    settings: str = ""
    samples: str | None = None  # per-sample log for significance
    sample_metric: str | None = None  # which metric column the per-sample log measures
    lower_is_better: set[str] = field(default_factory=set)  # metrics where a drop is an improvement (CHAIR)
    spread: dict[str, tuple[float, int]] = field(default_factory=dict)  # metric -> (std over seeds, n seeds)

    @property
    def row_key(self) -> tuple[str, str, str]:
        return (self.model, self.method, self.settings)


# ---- lm-eval -------------------------------------------------------------------------------------------
def parse_model_args(model_args: Any) -> dict[str, str]:
    """lm-eval's ``model_args``: a dict (0.4.13 results files) or a ``k=v,k=v`` string."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    out = {}
    for part in str(model_args or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _short(model: str) -> str:
    return str(model).rstrip("/").split("/")[-1]


def _canonical(model: str) -> str:
    from ..models import ALIASES

    model = ALIASES[model][1] if model in ALIASES else str(model)
    return _short(model).lower()


def method_from_description(description: dict[str, Any] | None, model: str) -> tuple[str, str]:
    """(method, settings) from an intervention's recorded ``describe()`` (None or identity: the plain model).

    Each method names its own rows (``table_row``); TruthProbe rows also say whose scores they used: the model's
    own, or another model's of its lineage (the base LLM).
    """
    from ..interventions import method_class

    if not description or description.get("identity"):
        return VANILLA, ""
    try:
        cls = method_class(description.get("method"))
    except TruthProbeError:  # recorded by a method this installation does not have: its own label
        return str(description.get("label") or description.get("method")), ""
    method, settings = cls.table_row(description)
    _FAMILY_OF_ROW.setdefault(method, cls.name)
    scores_model = description.get("scores_model")
    if method == TP and scores_model and scores_model != "unknown model":
        method = TP_OWN if _canonical(scores_model) == _canonical(model) else TP_BASE
        _FAMILY_OF_ROW.setdefault(method, cls.name)
    return method, settings


def _metric_name(key: str) -> str | None:
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    if metric.endswith("_stderr") or metric in SKIP_KEYS:
        return None
    return metric if filt == "none" else f"{metric} ({filt})"


def collect_lm_eval(path: Path) -> list[ResultEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{path}: not a valid lm-eval results JSON ({exc})") from None
    if not isinstance(data, dict) or "results" not in data or "config" not in data:
        raise LeaderboardError(f"{path}: expected lm-eval results with 'results' and 'config', found keys "
                               f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    config = data["config"]
    args = parse_model_args(config.get("model_args"))
    harness_model = str(config.get("model", ""))
    model = _short(args.get("pretrained") or data.get("model_name") or harness_model)
    described = config.get("intervention")
    if described is None and harness_model in ("truthgated", "intervened"):
        raise LeaderboardError(f"{path}: a {harness_model} run without config.intervention (written by "
                               "truthprobe-eval 0.3 and later); rerun it to record what it ran")
    method, settings = method_from_description(described, model)
    ts = RESULTS_JSON.match(path.name).group("ts") if RESULTS_JSON.match(path.name) else None
    higher = data.get("higher_is_better") or {}
    entries = []
    for task, values in data["results"].items():
        metrics = {}
        for key, value in values.items():
            name = _metric_name(key)
            if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[name] = float(value)
        if not metrics:
            continue
        samples = path.parent / f"samples_{task}_{ts}.jsonl" if ts else None
        sample_metric = None
        if samples is not None and samples.is_file():
            try:
                run = sig.load_lm_eval_samples(samples)
                metric, filt = run.metric.split(",", 1)
                sample_metric = metric if filt == "none" else f"{metric} ({filt})"
            except sig.SignificanceError:
                samples = None
        else:
            samples = None
        lower = {name for name in metrics if (higher.get(task) or {}).get(name.split(" (")[0]) is False}
        entries.append(ResultEntry(model, method, task, metrics, str(path), "lm-eval", settings,
                                   str(samples) if samples else None, sample_metric, lower))
    return entries


# ---- VLMEvalKit and our JSON ---------------------------------------------------------------------------
def vlmeval_model_and_method(folder: Path) -> tuple[str, str, str]:
    """(model, method, settings) of a VLMEvalKit model folder, from the ``intervention.json`` recorded there.

    A folder without one holds a model that ran without truthprobe-eval's runner: the plain model, named by its
    folder."""
    record = folder / INTERVENTION_FILE
    if not record.is_file():
        return folder.name, VANILLA, ""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{record}: expected JSON, found {exc}") from None
    if not isinstance(data, dict) or "intervention" not in data:
        raise LeaderboardError(f"{record}: expected {{'model': ..., 'intervention': {{...}}}}, found "
                               f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    model = _short(data.get("model") or folder.name)
    method, settings = method_from_description(data["intervention"], model)
    return model, method, settings


def _rating_metrics(table) -> dict[str, float]:
    cols = [c for c in table.columns if str(c) != "split"]
    metrics = {}
    if "split" in table.columns:
        for _, row in table.iterrows():
            split = str(row["split"])
            for c in cols:
                try:
                    value = float(row[c])
                except (TypeError, ValueError):
                    continue
                metrics[str(c) if split == "Overall" or len(table) == 1 else f"{c} ({split})"] = value
    else:
        for c in cols:
            try:
                metrics[str(c)] = float(table[c].iloc[0])
            except (TypeError, ValueError):
                continue
    return metrics


def collect_vlmeval_rating(path: Path) -> ResultEntry | None:
    import pandas as pd

    m = VLMEVAL_RATING.match(path.name)
    folder_model = path.parent.name
    stem = m.group("stem")
    if not stem.startswith(folder_model + "_"):
        return None  # not in VLMEvalKit's <work_dir>/<model>/ layout
    benchmark = stem[len(folder_model) + 1 :]
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for broken CSVs
        raise LeaderboardError(f"{path}: could not read VLMEvalKit's rating table ({exc})") from None
    metrics = _rating_metrics(table)
    if not metrics:
        return None
    if {"precision", "recall"} <= set(metrics):  # VLMEvalKit's POPE_rating calls F1 "Overall"
        metrics = {re.sub(r"^Overall", "F1", k): v for k, v in metrics.items()}
    model, method, settings = vlmeval_model_and_method(path.parent)
    preds = sig.find_vlmeval_predictions(path.parent)
    samples = preds.get(benchmark)
    sample_metric = "acc" if "acc" in metrics else ("Overall" if "Overall" in metrics else None)
    return ResultEntry(model, method, benchmark, metrics, str(path), "vlmevalkit", settings,
                       str(samples) if samples and sample_metric else None, sample_metric)


def collect_json(path: Path) -> ResultEntry | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("format") == "truthprobe-results":
        missing = [k for k in ("model", "benchmark", "metrics") if k not in data]
        if missing:
            raise LeaderboardError(f"{path}: truthprobe-results file is missing {missing}")
        metrics = {str(k): float(v) for k, v in data["metrics"].items() if isinstance(v, (int, float))}
        samples = data.get("samples")
        if samples:
            samples = str((path.parent / samples).resolve())
        if "intervention" in data:
            method, settings = method_from_description(data["intervention"], _short(data["model"]))
        else:
            method, settings = data.get("method", VANILLA), str(data.get("settings", ""))
        return ResultEntry(_short(data["model"]), method, str(data["benchmark"]), metrics, str(path), "truthprobe",
                           settings, samples, data.get("sample_metric"), set(data.get("lower_is_better", [])))
    if {"CHAIRs", "CHAIRi"} <= set(data):
        model, method, settings = vlmeval_model_and_method(path.parent)
        metrics = {k: float(data[k]) for k in ("CHAIRs", "CHAIRi", "recall", "len") if isinstance(data.get(k), (int, float))}
        return ResultEntry(model, method, "CHAIR", metrics, str(path), "chair", settings,
                           lower_is_better={"CHAIRs", "CHAIRi"})
    return None


def collect(folders: Sequence["str | os.PathLike"]) -> tuple[list[ResultEntry], list[str]]:
    """Every result found under ``folders``, and notes about files that were skipped and why."""
    entries: list[ResultEntry] = []
    notes: list[str] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise LeaderboardError(f"result folder not found: {folder}")
        files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        for p in files:
            if RESULTS_JSON.match(p.name):
                found = collect_lm_eval(p)
                entries += found
                if not found:
                    notes.append(f"{p}: no numeric metrics")
            elif VLMEVAL_RATING.match(p.name):
                e = collect_vlmeval_rating(p)
                if e is None:
                    notes.append(f"{p}: not in VLMEvalKit's <model>/<model>_<dataset>_score.csv layout, skipped")
                else:
                    entries.append(e)
            elif p.suffix == ".json" and not p.name.startswith("samples_"):
                e = collect_json(p)
                if e is not None:
                    entries.append(e)
    if not entries:
        raise LeaderboardError(f"no results found under {', '.join(map(str, folders))}: expected lm-eval results_*.json, "
                               "VLMEvalKit <model>/<model>_<dataset>_score.csv or _acc.csv, or truthprobe-results JSON")
    return entries, notes


# ---- the table -----------------------------------------------------------------------------------------
@dataclass
class Cell:
    value: float
    delta: float | None = None
    p: float | None = None
    lower_is_better: bool = False
    std: float | None = None  # over seeds, for averaged rows
    n: int = 1

    @property
    def better(self) -> bool | None:
        if not self.delta:
            return None
        return (self.delta < 0) if self.lower_is_better else (self.delta > 0)

    @property
    def mark(self) -> str:
        return sig.stars(self.p)


@dataclass
class Leaderboard:
    columns: list[tuple[str, str]]  # (benchmark, metric)
    rows: list[tuple[str, str, str]]  # (model, method, settings)
    cells: dict[tuple[tuple[str, str, str], tuple[str, str]], Cell]
    notes: list[str] = field(default_factory=list)

    def column_name(self, col: tuple[str, str]) -> str:
        return f"{col[0]} {col[1]}"


def _sort_rows(rows):
    """Per model: the plain model, then each method's rows in the registry's order (the method's own rows before
    its controls), rows of methods this installation does not have last."""
    from ..interventions import methods

    known = methods()
    rank = {name: i for i, name in enumerate(known)}

    def key(r):
        if r[1] == VANILLA:
            return (r[0], -1, 0, r[1], r[2])
        family = _FAMILY_OF_ROW.get(r[1])
        title = known[family].title if family in known else None
        own = 0 if title and r[1].startswith(title) else 1
        return (r[0], rank.get(family, len(rank)), own, r[1], r[2])

    return sorted(rows, key=key)


SEED = re.compile(r"(?:^|, )seed=([^,]+)")


def aggregate_seeds(entries: Sequence[ResultEntry]) -> tuple[list[ResultEntry], list[str]]:
    """Runs that differ only in ``seed=`` (random-gate ablations) become one entry: mean, with the standard
    deviation over seeds (ddof=1) in ``spread``, as the published appendix reports them."""
    import numpy as np

    groups: dict[tuple, list[ResultEntry]] = {}
    out, notes = [], []
    for e in entries:
        if SEED.search(e.settings):
            groups.setdefault((e.model, e.method, SEED.sub("", e.settings).strip(", "), e.benchmark), []).append(e)
        else:
            out.append(e)
    for (model, method, settings, bench), members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        seeds = sorted(SEED.search(m.settings).group(1) for m in members)
        metrics, spread = {}, {}
        for name in sorted(set.intersection(*(set(m.metrics) for m in members))):
            values = np.array([m.metrics[name] for m in members])
            metrics[name] = float(values.mean())
            spread[name] = (float(values.std(ddof=1)), len(values))
        label = (settings + ", " if settings else "") + f"seeds={','.join(seeds)}"
        out.append(ResultEntry(model, method, bench, metrics, "; ".join(m.source for m in members), members[0].harness,
                               label, lower_is_better=members[0].lower_is_better, spread=spread))
        notes.append(f"{model} / {method} / {bench}: mean and standard deviation over {len(members)} seeds "
                     "(no per-sample significance test for averaged rows)")
    return out, notes


def build(entries: Sequence[ResultEntry], significance: bool = True, seeds: bool = True) -> Leaderboard:
    """Pivot entries into rows x columns; deltas and significance marks against each model's vanilla row.
    With ``seeds``, runs differing only in their gate seed are averaged (mean +- std)."""
    notes: list[str] = []
    if seeds:
        entries, notes = aggregate_seeds(entries)
    by_key: dict[tuple, dict[str, ResultEntry]] = {}
    columns: dict[tuple[str, str], None] = {}
    for e in entries:
        slot = by_key.setdefault(e.row_key, {})
        if e.benchmark in slot:
            notes.append(f"{e.model} / {e.method} / {e.benchmark}: several results; using {e.source} "
                         f"(not {slot[e.benchmark].source})")
        slot[e.benchmark] = e
        for m in e.metrics:
            columns[(e.benchmark, m)] = None
    rows = _sort_rows(by_key)
    baselines: dict[str, tuple] = {}
    for r in rows:
        if r[1] == VANILLA:
            if r[0] in baselines:
                notes.append(f"{r[0]}: several vanilla rows; deltas use the first ({baselines[r[0]][2] or 'default'})")
            else:
                baselines[r[0]] = r
    cells = {}
    for r in rows:
        base_key = baselines.get(r[0])
        for bench, e in by_key[r].items():
            base = by_key[base_key].get(bench) if base_key and base_key != r else None
            p = None
            if significance and base is not None and e.samples and base.samples and e.sample_metric:
                p = _p_value(base, e, notes)
            for m, v in e.metrics.items():
                delta = v - base.metrics[m] if base is not None and m in base.metrics else None
                std, n = e.spread.get(m, (None, 1))
                cells[(r, (bench, m))] = Cell(v, delta, p if m == e.sample_metric else None, m in e.lower_is_better, std, n)
    for model in {r[0] for r in rows}:
        if model not in baselines:
            notes.append(f"{model}: no vanilla run found, so no deltas")
    return Leaderboard(sorted(columns), rows, cells, notes)


def _p_value(base: ResultEntry, entry: ResultEntry, notes: list[str]) -> float | None:
    try:
        def load(path: str) -> sig.SampleRun:
            return sig.load_lm_eval_samples(path) if path.endswith(".jsonl") else sig.load_vlmeval_predictions(path)

        ra, rb = load(base.samples), load(entry.samples)
        _, va, vb = sig.align(ra, rb)
        return sig.paired_test(va, vb, n_boot=1).p_for_marks
    except sig.SignificanceError as exc:
        notes.append(f"{entry.model} / {entry.method} / {entry.benchmark}: no significance mark ({exc})")
        return None


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    text = reports.fmt(cell.value, 4)
    if cell.std is not None:
        text += f" ± {cell.std:.4f}"
    if cell.delta is not None:
        text += f" ({cell.delta:+.4f}{cell.mark})"
    return text


def to_markdown(board: Leaderboard) -> str:
    headers = ["model", "method", "settings", *[board.column_name(c) for c in board.columns]]
    body = [[*r, *[_cell_text(board.cells.get((r, c))) for c in board.columns]] for r in board.rows]
    out = ["# Leaderboard", "", reports.markdown_table(headers, body), "",
           "Cells: value (delta vs the model's vanilla row, with * p < 0.05, ** p < 0.01, *** p < 0.001 where per-sample "
           "logs of both runs exist: McNemar for 0/1 outcomes, paired t-test otherwise)."]
    if board.notes:
        out += ["", "Notes:", *[f"- {n}" for n in board.notes]]
    return "\n".join(out) + "\n"


def csv_rows(board: Leaderboard) -> tuple[list[str], list[list]]:
    headers = ["model", "method", "settings"]
    for c in board.columns:
        name = board.column_name(c)
        headers += [name, f"{name} delta", f"{name} p", f"{name} std"]
    rows = []
    for r in board.rows:
        row = list(r)
        for c in board.columns:
            cell = board.cells.get((r, c))
            row += [cell.value, cell.delta, cell.p, cell.std] if cell else [None, None, None, None]
        rows.append(row)
    return headers, rows


def to_html(board: Leaderboard, title: str = "truthprobe-eval leaderboard") -> str:
    """A static page with the table; click a column header to sort (plain JS, nothing loaded from outside).
    Rendered from the jinja2 template ``templates/leaderboard.html`` (autoescaped)."""
    from importlib import resources

    import jinja2

    rows = []
    for r in board.rows:
        cells = []
        for c in board.columns:
            cell = board.cells.get((r, c))
            if cell is None:
                cells.append(None)
                continue
            cells.append({
                "value": repr(cell.value), "shown": reports.fmt(cell.value, 4),
                "std": None if cell.std is None else f"{cell.std:.4f} (n={cell.n})",
                "delta": None if cell.delta is None else f"{cell.delta:+.4f}{cell.mark}",
                "cls": {True: "better", False: "worse", None: ""}[cell.better],
                "p": None if cell.p is None else reports.fmt_p(cell.p)})
        rows.append({"text": list(r), "cells": cells})
    source = resources.files("truthprobe_eval").joinpath("templates/leaderboard.html").read_text(encoding="utf-8")
    template = jinja2.Environment(autoescape=True, keep_trailing_newline=True).from_string(source)
    return template.render(title=title, text_columns=["model", "method", "settings"], columns=board.columns,
                           rows=rows, notes=board.notes)


def write_outputs(board: Leaderboard, out_dir: "str | os.PathLike") -> dict[str, Path]:
    out = Path(out_dir)
    headers, rows = csv_rows(board)
    return {
        "markdown": reports.write_text(out / "leaderboard.md", to_markdown(board)),
        "csv": reports.write_csv(out / "leaderboard.csv", headers, rows),
        "html": reports.write_text(out / "leaderboard.html", to_html(board)),
    }
