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

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import read_jsonl
from ..errors import TruthProbeError
from ..paired_stats import PairedStatsError
from . import reports

LM_EVAL_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<ts>\d{4}-\d{2}-\d{2}T[\d\-.:]+)\.jsonl$")
VLMEVAL_SUFFIXES = (".xlsx", ".tsv", ".csv", ".json")
# VLMEvalKit intermediate/evaluation outputs that are not prediction files
VLMEVAL_JUDGES = r"(?:_(?:exact_matching|chatgpt[\w.-]*|gpt[\w.-]*|qwen[\w.-]*|deepseek[\w.-]*))?"
VLMEVAL_DERIVED = re.compile(VLMEVAL_JUDGES + r"_(auxmatch|result|score|acc|acc_all|fine|rating|metrics|tmp|detailed_results)$")
VLMEVAL_SCORE_COLUMNS = ("score", "hit", "correct", "match")


class SignificanceError(PairedStatsError):
    """Per-sample logs that cannot be compared."""


class SampleMismatchError(SignificanceError):
    """The two runs were not evaluated on the same samples."""


@dataclass
class SampleRun:
    """Per-sample values of one metric for one task of one run, keyed by sample id."""

    source: str
    harness: str  # "lm-eval" or "vlmevalkit"
    task: str
    metric: str
    keys: list[str]
    values: np.ndarray
    fingerprints: dict[str, str] = field(default_factory=dict)  # key -> content hash/text, to catch same id, other doc
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def binary(self) -> bool:
        return bool(np.isin(self.values, (0.0, 1.0)).all())

    @property
    def mean(self) -> float:
        return float(self.values.mean())


# ---- lm-eval -------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (bool, int, float)) and not (isinstance(x, float) and math.isnan(x))


def load_lm_eval_samples(path: "str | os.PathLike", metric: str | None = None, filter_name: str | None = None) -> SampleRun:
    """One lm-eval ``samples_<task>_<timestamp>.jsonl`` file as a ``SampleRun``."""
    path = Path(path)
    m = LM_EVAL_SAMPLES.match(path.name)
    task = m.group("task") if m else path.stem
    records = []
    for line_no, rec in read_jsonl(path, SignificanceError):
        if not isinstance(rec, dict) or "doc_id" not in rec:
            raise SignificanceError(f"{path}, line {line_no}: expected an lm-eval sample with a doc_id, found {str(rec)[:80]}")
        records.append(rec)
    if not records:
        raise SignificanceError(f"{path}: expected lm-eval samples (one JSON object a line), found none")
    filters = list(dict.fromkeys(str(r.get("filter", "none")) for r in records))
    notes = []
    if filter_name is None:
        filter_name = filters[0]
        if len(filters) > 1:
            notes.append(f"{task}: filters {filters} logged; using {filter_name!r} (choose with --filter)")
    elif filter_name not in filters:
        raise SignificanceError(f"{path}: expected samples for filter {filter_name!r}, found filters {filters}")
    records = [r for r in records if str(r.get("filter", "none")) == filter_name]

    if metric is None:
        names = [n for n in records[0].get("metrics", []) if _is_number(records[0].get(n))]
        if not names:
            logged = records[0].get("metrics", [])
            raise SignificanceError(
                f"{path}: expected a per-sample numeric metric (e.g. acc, exact_match), found metrics {logged} "
                "with no numeric per-sample value (corpus-level metrics like f1 log tuples; pass --metric to choose)"
            )
        metric = names[0]
    keys, values, prints = [], [], {}
    for rec in records:
        value = rec.get(metric)
        if not _is_number(value):
            raise SignificanceError(
                f"{path}: doc_id {rec['doc_id']}: expected a numeric per-sample value for metric {metric!r}, "
                f"found {value!r} (metrics logged: {rec.get('metrics')})"
            )
        key = str(rec["doc_id"])
        if key in prints:
            raise SignificanceError(f"{path}: doc_id {key} appears twice for filter {filter_name!r} (repeats are not supported)")
        keys.append(key)
        values.append(float(value))
        prints[key] = str(rec.get("doc_hash") or json.dumps(rec.get("doc"), sort_keys=True))
    return SampleRun(str(path), "lm-eval", task, f"{metric},{filter_name}", keys, np.array(values), prints, notes)


def find_lm_eval_samples(folder: "str | os.PathLike") -> dict[str, list[Path]]:
    """task -> its sample files under ``folder`` (recursively), newest timestamp first."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for p in Path(folder).rglob("samples_*.jsonl"):
        m = LM_EVAL_SAMPLES.match(p.name)
        if m:
            found.setdefault(m.group("task"), []).append((m.group("ts"), p))
    return {task: [p for _, p in sorted(items, reverse=True)] for task, items in found.items()}


# ---- VLMEvalKit ----------------------------------------------------------------------------------------
def _read_table(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".xlsx":
            return pd.read_excel(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    except Exception as exc:  # pandas/openpyxl raise many types for unreadable files
        raise SignificanceError(f"{path}: could not read the table ({type(exc).__name__}: {exc})") from None
    raise SignificanceError(f"{path}: expected a .xlsx, .tsv, .csv or .json prediction file, found {suffix or 'no suffix'}")


def _yes_no(text: str) -> str:
    """VLMEvalKit's own Yes/No extraction where it is installed."""
    try:
        from vlmeval.dataset.utils.yorn import YOrN_Extraction
    except Exception:  # vlmeval missing: the same rule, stated plainly
        words = re.sub(r"[^\w\s]", " ", text.lower()).split()
        return "Yes" if "yes" in words and "no" not in words else "No" if "no" in words and "yes" not in words else "Unknown"
    return YOrN_Extraction(text)


def _normalize(text: Any) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", str(text).lower())).strip()


def load_vlmeval_predictions(path: "str | os.PathLike", metric: str | None = None, task: str | None = None) -> SampleRun:
    """A VLMEvalKit prediction (or evaluated ``_auxmatch`` / ``_result``) table as a ``SampleRun``."""
    path = Path(path)
    df = _read_table(path)
    if "index" not in df.columns:
        raise SignificanceError(f"{path}: expected an 'index' column (VLMEvalKit prediction file), found {list(df.columns)}")
    keys = [str(k) for k in df["index"]]
    seen: set[str] = set()
    dup = next((k for k in keys if k in seen or seen.add(k)), None)
    if dup is not None:
        raise SignificanceError(f"{path}: index {dup} appears more than once")
    notes: list[str] = []
    if metric is not None:
        if metric not in df.columns:
            raise SignificanceError(f"{path}: expected a column {metric!r}, found {list(df.columns)}")
        col = metric
    else:
        col = next((c for c in VLMEVAL_SCORE_COLUMNS if c in df.columns), None)
    if col is not None:
        try:
            values = df[col].astype(float).to_numpy()
        except (TypeError, ValueError):
            raise SignificanceError(f"{path}: expected numeric or boolean values in column {col!r}") from None
        metric_name = col if metric is not None else "correct"
        if metric is None:
            notes.append(f"{path.name}: per-sample correctness from VLMEvalKit's {col!r} column")
    else:
        for needed in ("answer", "prediction"):
            if needed not in df.columns:
                raise SignificanceError(
                    f"{path}: expected a per-sample score column ({', '.join(VLMEVAL_SCORE_COLUMNS)}) or "
                    f"'answer' and 'prediction' columns, found {list(df.columns)}"
                )
        answers = [str(a) for a in df["answer"]]
        preds = ["" if (isinstance(p, float) and math.isnan(p)) else str(p) for p in df["prediction"]]
        if all(a in ("Yes", "No") for a in answers):
            extracted = [_yes_no(p) for p in preds]
            values = np.array([float(e == a) for e, a in zip(extracted, answers)])
            metric_name = "correct"
            notes.append(f"{path.name}: correctness = Yes/No extracted from the prediction (VLMEvalKit's rule) == answer")
            unknown = sum(e == "Unknown" for e in extracted)
            if unknown:
                notes.append(f"{path.name}: {unknown} replies without a clear yes/no, counted wrong (as VLMEvalKit does)")
        else:
            values = np.array([float(_normalize(p) == _normalize(a)) for p, a in zip(preds, answers)])
            metric_name = "correct"
            notes.append(f"{path.name}: correctness = normalized prediction == normalized answer (exact match)")
    if np.isnan(values).any():
        i = int(np.argmax(np.isnan(values)))
        raise SignificanceError(f"{path}: index {keys[i]} has no value in {metric_name!r}")
    text_cols = [c for c in ("question", "answer", "image_path", "image_id") if c in df.columns]
    prints = {k: "|".join(str(df[c].iloc[i]) for c in text_cols) for i, k in enumerate(keys)}
    return SampleRun(str(path), "vlmevalkit", task or dataset_name(path), metric_name, keys, values, prints, notes)


def dataset_name(path: Path) -> str:
    """``<model>_<dataset>.xlsx`` in VLMEvalKit's ``<work_dir>/<model>/`` folder -> ``<dataset>``."""
    stem = VLMEVAL_DERIVED.sub("", path.stem)
    model = path.parent.name
    return stem[len(model) + 1 :] if model and stem.startswith(model + "_") else stem


def find_vlmeval_predictions(folder: "str | os.PathLike") -> dict[str, Path]:
    """dataset -> best per-sample file under ``folder``: VLMEvalKit's evaluated ``_auxmatch``/``_result`` table
    where one exists (it carries the per-sample score), else the prediction file."""
    found: dict[str, tuple[int, Path]] = {}
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or p.suffix.lower() not in VLMEVAL_SUFFIXES or p.name.startswith("."):
            continue
        derived = VLMEVAL_DERIVED.search(p.stem)
        if derived and derived.group(1) not in ("auxmatch", "result"):
            continue
        rank = 0 if derived else 1
        name = dataset_name(p)
        if name not in found or rank < found[name][0]:
            found[name] = (rank, p)
    return {name: p for name, (_, p) in found.items()}


# ---- runs ----------------------------------------------------------------------------------------------
def load_runs(path: "str | os.PathLike", task: str | None = None, metric: str | None = None,
              filter_name: str | None = None) -> dict[str, SampleRun]:
    """task -> SampleRun for a file or a result folder (lm-eval samples, else VLMEvalKit predictions)."""
    path = Path(path)
    if not path.exists():
        raise SignificanceError(f"run not found: expected an lm-eval output folder, a samples_*.jsonl file or a "
                                f"VLMEvalKit prediction file at {path}")
    if path.is_file():
        if LM_EVAL_SAMPLES.match(path.name) or path.suffix == ".jsonl":
            run = load_lm_eval_samples(path, metric, filter_name)
        else:
            run = load_vlmeval_predictions(path, metric)
        return {run.task: run}
    runs: dict[str, SampleRun] = {}
    lm = find_lm_eval_samples(path)
    for name, files in lm.items():
        if task is None or name == task:
            runs[name] = load_lm_eval_samples(files[0], metric, filter_name)
            if len(files) > 1:
                runs[name].notes.append(f"{name}: {len(files)} sample files in {path}; using the newest, {files[0].name}")
    if not lm:
        for name, file in find_vlmeval_predictions(path).items():
            if task is None or name == task:
                runs[name] = load_vlmeval_predictions(file, metric, task=name)
    if not runs:
        what = f"task {task!r}" if task else "any task"
        raise SignificanceError(f"{path}: expected per-sample logs for {what} (lm-eval samples_<task>_<time>.jsonl from "
                                f"--log_samples, or VLMEvalKit <model>_<dataset>.xlsx/.tsv/.csv), found none")
    return runs


def align(a: SampleRun, b: SampleRun) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The two runs' values in one sample order; refuse if the sample sets differ."""
    in_b = set(b.keys)
    in_a = set(a.keys)
    ident = "doc_id" if a.harness == "lm-eval" else "index"
    for k in a.keys:
        if k not in in_b:
            raise SampleMismatchError(
                f"{a.task}: the runs were evaluated on different samples: {ident} {k} is in A ({a.source}) but not in "
                f"B ({b.source}); A has {a.n} samples, B has {b.n}"
            )
    for k in b.keys:
        if k not in in_a:
            raise SampleMismatchError(
                f"{a.task}: the runs were evaluated on different samples: {ident} {k} is in B ({b.source}) but not in "
                f"A ({a.source}); A has {a.n} samples, B has {b.n}"
            )
    for k in a.keys:
        fa, fb = a.fingerprints.get(k), b.fingerprints.get(k)
        if fa is not None and fb is not None and fa != fb:
            raise SampleMismatchError(
                f"{a.task}: {ident} {k} holds a different document in A ({a.source}) and B ({b.source}): "
                f"{fa[:60]!r} vs {fb[:60]!r}"
            )
    pos = {k: i for i, k in enumerate(b.keys)}
    order = [pos[k] for k in a.keys]
    return list(a.keys), a.values, b.values[order]


# ---- statistics: one module for every paired comparison (``paired_stats``) ----------------------------------
from ..paired_stats import PairedResult, bootstrap_ci, mcnemar, paired_test  # noqa: E402,F401  (read from here too)


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


def recorded_intervention(run: "str | os.PathLike") -> dict | None:
    """The intervention a run recorded (its ``describe()``), found beside or inside ``run``: lm-eval's
    ``results_*.json`` / our judges' ``<name>.json`` (``config.intervention``), or VLMEvalKit's work-folder
    ``intervention.json``. None when the run recorded none (a plain ``hf`` run, or another tool's)."""
    path = Path(run)
    folder = path if path.is_dir() else path.parent
    candidates = [folder / "intervention.json"]
    if path.is_file() and path.name.endswith(".samples.jsonl"):
        candidates.insert(0, path.with_name(path.name[: -len(".samples.jsonl")] + ".json"))
    candidates += sorted(folder.glob("results_*.json"))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        described = (data.get("config") or {}).get("intervention") if "config" in data else data.get("intervention")
        if isinstance(described, dict):
            return described
    return None


def run_name(run: "str | os.PathLike") -> str:
    """The run's path, with the label of the intervention it recorded."""
    described = recorded_intervention(run)
    return str(run) if not described else f"{run} ({described.get('label', described.get('method'))})"


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
