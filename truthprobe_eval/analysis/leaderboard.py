"""One table from many evaluation runs: rows model x method, columns benchmark metrics, deltas vs the baseline.

A report over ``results_files`` (the one reader of every harness's result files), which reads, recursively under
each result folder:
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

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..interventions.truthprobe import BASE_SCORES as TP_BASE  # noqa: F401  (row names tests and docs read)
from ..interventions.truthprobe import OWN_SCORES as TP_OWN  # noqa: F401
from . import reports
from . import significance as sig
from .results_files import (  # noqa: F401  (read from here too)
    _FAMILY_OF_ROW,
    INTERVENTION_FILE,
    ITI,
    NEURONS,
    VANILLA,
    LeaderboardError,
    ResultEntry,
    collect,
    collect_json,
    collect_lm_eval,
    collect_vlmeval_rating,
    method_from_description,
    parse_model_args,
    vlmeval_model_and_method,
)


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
        ra, rb = sig.load_sample_file(base.samples), sig.load_sample_file(entry.samples)
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
