"""Paired significance of two evaluation runs on the same samples.

Reads per-sample correctness from
- lm-eval ``--log_samples`` output: ``samples_<task>_<timestamp>.jsonl`` (one JSON object per sample and filter,
  with ``doc_id``, ``doc_hash``, ``filter``, ``metrics`` and one field per metric, e.g. ``"acc": 1.0``);
- VLMEvalKit prediction files ``<model>_<dataset>.xlsx`` / ``.tsv`` / ``.csv`` / ``.json`` (``index``, ``answer``,
  ``prediction``, ...). Where VLMEvalKit's own evaluation wrote a per-sample ``score`` / ``hit`` column (its
  ``_auxmatch`` / ``_result`` files), that is used; otherwise Yes/No answers are extracted the way VLMEvalKit does
  (``YOrN_Extraction``) and other answers compared by normalized exact match.

Statistics on the per-sample differences d = B - A (``paired_stats.paired_test``, the one statistics module):
mean difference, paired t-test (one-sided by default: is B better?), a percentile bootstrap confidence interval of
the mean difference, and, when both runs are 0/1, McNemar's exact test (the project's one McNemar rule). Runs whose
sample sets differ are refused, naming the first mismatching sample.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from ..paired_stats import PairedResult, bootstrap_ci, mcnemar, paired_test  # noqa: F401  (the one statistics module)
from . import reports
from .results_files import (  # noqa: F401  (the one reader of result files; its names are read from here too)
    LM_EVAL_SAMPLES,
    VLMEVAL_DERIVED,
    VLMEVAL_SUFFIXES,
    SampleMismatchError,
    SampleRun,
    SignificanceError,
    align,
    dataset_name,
    find_lm_eval_samples,
    find_vlmeval_predictions,
    load_lm_eval_samples,
    load_lmms_eval_samples,
    load_runs,
    load_sample_file,
    load_vlmeval_predictions,
    recorded_intervention,
    run_name,
)


def compare_runs(path_a: "str | os.PathLike", path_b: "str | os.PathLike", task: str | None = None,
                 metric: str | None = None, filter_name: str | None = None, alternative: str = "greater",
                 n_boot: int = 10000, confidence: float = 0.95, seed: int = 0) -> tuple[list[PairedResult], list[str]]:
    """Paired results for every task the two runs share, and notes (tasks only one run has, choices made)."""
    runs_a = load_runs(path_a, task, metric, filter_name)
    runs_b = load_runs(path_b, task, metric, filter_name)
    notes = [n for r in (*runs_a.values(), *runs_b.values()) for n in r.notes]
    if Path(path_a).is_file() and Path(path_b).is_file() and len(runs_a) == len(runs_b) == 1 and runs_a.keys() != runs_b.keys():
        # two single files (e.g. truthprobe run's <name>.samples.jsonl): the user paired them; the samples must match
        (name_a, run_a), (name_b, _) = next(iter(runs_a.items())), next(iter(runs_b.items()))
        notes.append(f"two files given: A's {name_a!r} is paired with B's {name_b!r}")
        runs_a = {name_b: run_a}
    shared = [t for t in runs_a if t in runs_b]
    if not shared:
        raise SignificanceError(f"the runs share no task: A has {sorted(runs_a)}, B has {sorted(runs_b)}")
    for t in runs_a:
        if t not in runs_b:
            notes.append(f"{t}: only in A, not compared")
    for t in runs_b:
        if t not in runs_a:
            notes.append(f"{t}: only in B, not compared")
    results = []
    for t in shared:
        ra, rb = runs_a[t], runs_b[t]
        if ra.metric != rb.metric:
            raise SignificanceError(f"{t}: A's per-sample metric is {ra.metric!r}, B's is {rb.metric!r}; pass --metric")
        _, va, vb = align(ra, rb)
        results.append(paired_test(va, vb, t, ra.metric, alternative, n_boot, confidence, seed))
    return results, list(dict.fromkeys(notes))


def stars(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


# ---- reports -------------------------------------------------------------------------------------------
HEADERS = ["task", "metric", "n", "mean_a", "mean_b", "diff_b_minus_a", "ci_low", "ci_high", "t", "t_p",
           "t_alternative", "mcnemar_a_only", "mcnemar_b_only", "mcnemar_p", "mcnemar_method"]


def rows(results: Sequence[PairedResult]) -> list[list]:
    return [[r.task, r.metric, r.n, r.mean_a, r.mean_b, r.diff, r.ci_low, r.ci_high, r.t_stat, r.t_p, r.alternative,
             r.a_only, r.b_only, r.mcnemar_p, r.mcnemar_method] for r in results]


def to_markdown(results: Sequence[PairedResult], notes: Sequence[str], name_a: str = "A", name_b: str = "B") -> str:
    conf = f"{results[0].confidence:.0%}" if results else "95%"
    alt = {"greater": "B > A", "less": "B < A", "two-sided": "B != A"}[results[0].alternative] if results else ""
    body = [[r.task, r.metric, r.n, f"{r.mean_a:.4f}", f"{r.mean_b:.4f}", f"{r.diff:+.4f}{stars(r.p_for_marks)}",
             f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]", f"{r.t_stat:.3f}", reports.fmt_p(r.t_p),
             "n/a" if r.mcnemar_p is None else f"{r.a_only} / {r.b_only}",
             "n/a" if r.mcnemar_p is None else f"{reports.fmt_p(r.mcnemar_p)} ({r.mcnemar_method})"] for r in results]
    out = [f"# Paired comparison: A = {name_a}, B = {name_b}", "",
           reports.markdown_table(["task", "metric", "n", "mean A", "mean B", "B - A", f"{conf} bootstrap CI",
                                   "t", f"t-test p ({alt})", "A-only / B-only right", "McNemar p"], body),
           "", "Marks on B - A: * p < 0.05, ** p < 0.01, *** p < 0.001 (two-sided; McNemar for 0/1 outcomes, "
           "paired t-test otherwise)."]
    if notes:
        out += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


def write_outputs(results: Sequence[PairedResult], notes: Sequence[str], out_dir: "str | os.PathLike",
                  name_a: str = "A", name_b: str = "B") -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "markdown": reports.write_text(out / "significance.md", to_markdown(results, notes, name_a, name_b)),
        "csv": reports.write_csv(out / "significance.csv", HEADERS, rows(results)),
    }
