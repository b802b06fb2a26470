"""Where each harness writes its results and how to read them back, in one place: ``truthprobe significance``
(per-sample values) and ``truthprobe leaderboard`` (metrics and the recorded intervention) are report builders over
this module.

- lm-eval: ``results_<timestamp>.json`` with ``samples_<task>_<timestamp>.jsonl`` (``--log_samples``); and the
  judges of ``truthprobe run`` / ``ablate`` / ``compare-methods``, which write lm-eval's own result dict as
  ``lm_eval/<name>.json`` beside ``<name>.samples.jsonl`` (their benchmark is named with the rows they evaluated,
  so validation and test slices of one task stay apart);
- VLMEvalKit: prediction files ``<model>_<dataset>.xlsx`` / ``.tsv`` / ``.csv`` / ``.json``, its rating tables
  ``<model>_<dataset>_score.csv`` / ``_acc.csv``, and the ``intervention.json`` ``truthprobe vlmeval`` writes;
- lmms-eval: ``<model>/<YYYYMMDD_HHMMSS>_results.json`` (lm-eval's result layout, ``config.intervention``
  from our ``truthgated``) with ``<YYYYMMDD_HHMMSS>_samples_<task>.jsonl``, whose per-sample metrics are records
  with a ``score`` (POPE's ``pope_accuracy``, ...);
- ours: ``truthprobe-results`` JSON files (``compare-methods``' ``leaderboard/``) and CHAIR score JSON.
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

LMMS_EVAL_SAMPLES = re.compile(r"^(?P<ts>\d{8}_\d{6})_samples_(?P<task>.+)\.jsonl$")
LMMS_EVAL_RESULTS = re.compile(r"^(?P<ts>\d{8}_\d{6})_results\.json$")
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
    harness: str  # "lm-eval", "lmms-eval" or "vlmevalkit"
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


def _sample_records(path: Path, name_pattern: re.Pattern, harness: str) -> tuple[str, list[dict]]:
    """(task, records) of a harness's per-sample JSONL file: one object a line, each with a ``doc_id``."""
    m = name_pattern.match(path.name)
    records = []
    for line_no, rec in read_jsonl(path, SignificanceError):
        if not isinstance(rec, dict) or "doc_id" not in rec:
            raise SignificanceError(f"{path}, line {line_no}: expected an {harness} sample with a doc_id, found {str(rec)[:80]}")
        records.append(rec)
    if not records:
        raise SignificanceError(f"{path}: expected {harness} samples (one JSON object a line), found none")
    return (m.group("task") if m else path.stem), records


def load_lm_eval_samples(path: "str | os.PathLike", metric: str | None = None, filter_name: str | None = None) -> SampleRun:
    """One lm-eval ``samples_<task>_<timestamp>.jsonl`` file as a ``SampleRun``."""
    path = Path(path)
    task, records = _sample_records(path, LM_EVAL_SAMPLES, "lm-eval")
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


# ---- lmms-eval -----------------------------------------------------------------------------------------
def _sample_score(value: Any) -> float | None:
    """An lmms-eval per-sample metric: a number, or a record with a numeric ``score`` (POPE's, ours)."""
    if isinstance(value, dict):
        value = value.get("score")
    return float(value) if _is_number(value) else None


def load_lmms_eval_samples(path: "str | os.PathLike", metric: str | None = None) -> SampleRun:
    """One lmms-eval ``<time>_samples_<task>.jsonl`` file as a ``SampleRun`` (default metric: the first one logged
    with a per-sample score)."""
    path = Path(path)
    task, records = _sample_records(path, LMMS_EVAL_SAMPLES, "lmms-eval")
    if metric is None:
        names = [k for k, v in records[0].items() if k not in ("doc_id", "target") and _sample_score(v) is not None]
        if not names:
            raise SignificanceError(f"{path}: expected a per-sample metric with a numeric score, found keys {sorted(records[0])}")
        metric = names[0]
    keys, values, prints = [], [], {}
    for rec in records:
        value = _sample_score(rec.get(metric))
        if value is None:
            raise SignificanceError(f"{path}: doc_id {rec['doc_id']}: expected a numeric score for metric {metric!r}, "
                                    f"found {rec.get(metric)!r}")
        key = str(rec["doc_id"])
        if key in prints:
            raise SignificanceError(f"{path}: doc_id {key} appears twice (repeats are not supported)")
        keys.append(key)
        values.append(value)
        prints[key] = str(rec.get("doc_hash") or rec.get("input") or "")
    return SampleRun(str(path), "lmms-eval", task, f"{metric},none", keys, np.array(values), prints)


def find_lmms_eval_samples(folder: "str | os.PathLike") -> dict[str, list[Path]]:
    """task -> its lmms-eval sample files under ``folder`` (recursively), newest first."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for p in Path(folder).rglob("*_samples_*.jsonl"):
        m = LMMS_EVAL_SAMPLES.match(p.name)
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
def load_sample_file(path: "str | os.PathLike", metric: str | None = None, filter_name: str | None = None) -> SampleRun:
    """One per-sample file of any harness, told apart by its name: lmms-eval's ``<time>_samples_<task>.jsonl``,
    other ``.jsonl`` (lm-eval's ``samples_<task>_<time>.jsonl``, our judges' ``<name>.samples.jsonl``), else a
    VLMEvalKit prediction table."""
    path = Path(path)
    if LMMS_EVAL_SAMPLES.match(path.name):
        return load_lmms_eval_samples(path, metric)
    if LM_EVAL_SAMPLES.match(path.name) or path.suffix == ".jsonl":
        return load_lm_eval_samples(path, metric, filter_name)
    return load_vlmeval_predictions(path, metric)


def load_runs(path: "str | os.PathLike", task: str | None = None, metric: str | None = None,
              filter_name: str | None = None) -> dict[str, SampleRun]:
    """task -> SampleRun for a file or a result folder (lm-eval samples, else VLMEvalKit predictions)."""
    path = Path(path)
    if not path.exists():
        raise SignificanceError(f"run not found: expected an lm-eval output folder, a samples_*.jsonl file or a "
                                f"VLMEvalKit prediction file at {path}")
    if path.is_file():
        run = load_sample_file(path, metric, filter_name)
        return {run.task: run}
    runs: dict[str, SampleRun] = {}
    lm = find_lm_eval_samples(path)
    for name, files in lm.items():
        if task is None or name == task:
            runs[name] = load_lm_eval_samples(files[0], metric, filter_name)
            if len(files) > 1:
                runs[name].notes.append(f"{name}: {len(files)} sample files in {path}; using the newest, {files[0].name}")
    lmms = {} if lm else find_lmms_eval_samples(path)
    for name, files in lmms.items():
        if task is None or name == task:
            runs[name] = load_lmms_eval_samples(files[0], metric)
            if len(files) > 1:
                runs[name].notes.append(f"{name}: {len(files)} sample files in {path}; using the newest, {files[0].name}")
    if not lm and not lmms:
        for name, file in find_vlmeval_predictions(path).items():
            if task is None or name == task:
                runs[name] = load_vlmeval_predictions(file, metric, task=name)
    if not runs:
        what = f"task {task!r}" if task else "any task"
        raise SignificanceError(f"{path}: expected per-sample logs for {what} (lm-eval samples_<task>_<time>.jsonl or "
                                f"lmms-eval <time>_samples_<task>.jsonl from --log_samples, or VLMEvalKit <model>_<dataset>.xlsx/.tsv/.csv), found none")
    return runs


def align(a: SampleRun, b: SampleRun) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The two runs' values in one sample order; refuse if the sample sets differ."""
    in_b = set(b.keys)
    in_a = set(a.keys)
    ident = "doc_id" if a.harness in ("lm-eval", "lmms-eval") else "index"
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



def recorded_intervention(run: "str | os.PathLike") -> dict | None:
    """The intervention a run recorded (its ``describe()``), found beside or inside ``run``: lm-eval's
    ``results_*.json`` / our judges' ``<name>.json`` (``config.intervention``), or VLMEvalKit's work-folder
    ``intervention.json``. None when the run recorded none (a plain ``hf`` run, or another tool's)."""
    path = Path(run)
    folder = path if path.is_dir() else path.parent
    candidates = [folder / "intervention.json"]
    if path.is_file() and path.name.endswith(".samples.jsonl"):
        candidates.insert(0, path.with_name(path.name[: -len(".samples.jsonl")] + ".json"))
    lmms = LMMS_EVAL_SAMPLES.match(path.name) if path.is_file() else None
    if lmms:  # an lmms-eval samples file: the results file of the same run first
        candidates.append(folder / f"{lmms.group('ts')}_results.json")
    candidates += sorted(folder.glob("results_*.json")) + sorted(folder.glob("*_results.json"), reverse=True)
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



# ---- metrics and what ran, for the leaderboard ------------------------------------------------------
VANILLA = "vanilla"

ITI = "ITI"  # the rows other modules and tests name; every other row is named by its method's class
NEURONS = "truth neurons"
_FAMILY_OF_ROW: dict[str, str] = {}  # row name -> its method, learnt as method_from_description names rows
INTERVENTION_FILE = "intervention.json"  # what ``truthprobe vlmeval`` writes into each model's work folder
RESULTS_JSON = re.compile(r"^results_(?P<ts>.+)\.json$")
VLMEVAL_RATING = re.compile(r"^(?P<stem>.+)_(?P<kind>score|acc)\.csv$")
SKIP_KEYS = {"alias", "name", "sample_len", "samples", " "}



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


from ..models import short_model_name as _short  # noqa: E402


def method_from_description(description: dict[str, Any] | None, model: str) -> tuple[str, str]:
    """(method, settings) from an intervention's recorded ``describe()`` (None or identity: the plain model).

    Each method names its own rows (``table_row``, given the evaluated model: TruthProbe's say whose scores they
    used, the model's own or its base LLM's).
    """
    from ..interventions import method_class

    if not description or description.get("identity"):
        return VANILLA, ""
    try:
        cls = method_class(description.get("method"))
    except TruthProbeError:  # recorded by a method this installation does not have: its own label
        return str(description.get("label") or description.get("method")), ""
    method, settings = cls.table_row(description, model)
    _FAMILY_OF_ROW.setdefault(method, cls.name)
    return method, settings


def _metric_name(key: str) -> str | None:
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    if metric.endswith("_stderr") or metric in SKIP_KEYS:
        return None
    return metric if filt == "none" else f"{metric} ({filt})"


def _judge_samples(path: Path) -> Path | None:
    """``<name>.samples.jsonl`` beside our judges' ``<name>.json``."""
    candidate = path.with_name(f"{path.stem}.samples.jsonl")
    return candidate if candidate.is_file() else None


def benchmark_name(task: str, data: dict) -> str:
    """The task, with the HaluEval rows it evaluated where its config says (``halueval_offset`` / ``halueval_n``
    metadata: our judges' slices, or ``lm_eval --metadata``), so that a validation and a test slice of one task
    are different columns."""
    meta = ((data.get("configs") or {}).get(task) or {}).get("metadata") or {}
    if not isinstance(meta, dict):  # lmms-eval task YAMLs write a list (``- version: 0.0``)
        return task
    offset, n = meta.get("halueval_offset"), meta.get("halueval_n")
    if isinstance(offset, int) and isinstance(n, int) and n > 0:
        return f"{task} rows {offset}-{offset + n - 1}"
    return task


def is_lm_eval_results(data: Any) -> bool:
    return isinstance(data, dict) and "results" in data and "config" in data and "configs" in data


def collect_lm_eval(path: Path, harness: str = "lm-eval") -> list[ResultEntry]:
    """lm-eval's results (or lmms-eval's, the same layout; ``harness="lmms-eval"``) as leaderboard entries."""
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
    named = (LMMS_EVAL_RESULTS if harness == "lmms-eval" else RESULTS_JSON).match(path.name)
    ts = named.group("ts") if named else None
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
        if harness == "lmms-eval":
            samples = path.parent / f"{ts}_samples_{task}.jsonl"
        else:
            samples = path.parent / f"samples_{task}_{ts}.jsonl" if ts else _judge_samples(path)
        sample_metric = None
        if samples is not None and samples.is_file():
            try:
                run = load_lmms_eval_samples(samples) if harness == "lmms-eval" else load_lm_eval_samples(samples)
                metric, filt = run.metric.split(",", 1)
                sample_metric = metric if filt == "none" else f"{metric} ({filt})"
            except SignificanceError:
                samples = None
        else:
            samples = None
        lower = {name for name in metrics if (higher.get(task) or {}).get(name.split(" (")[0]) is False}
        entries.append(ResultEntry(model, method, benchmark_name(task, data), metrics, str(path), harness, settings,
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
    preds = find_vlmeval_predictions(path.parent)
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


def _reads_as_lm_eval(path: Path) -> bool:
    try:
        return is_lm_eval_results(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


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
            if RESULTS_JSON.match(p.name) or LMMS_EVAL_RESULTS.match(p.name):
                found = collect_lm_eval(p, "lmms-eval" if LMMS_EVAL_RESULTS.match(p.name) else "lm-eval")
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
                if _judge_samples(p) is not None and _reads_as_lm_eval(p):  # truthprobe run / ablate / compare-methods
                    entries += collect_lm_eval(p)
                    continue
                e = collect_json(p)
                if e is not None:
                    entries.append(e)
    if not entries:
        raise LeaderboardError(f"no results found under {', '.join(map(str, folders))}: expected lm-eval results_*.json, "
                               "lmms-eval <time>_results.json "
                               "(or our judges' lm_eval/<name>.json with <name>.samples.jsonl), VLMEvalKit <model>/<model>_<dataset>_score.csv or _acc.csv, or truthprobe-results JSON")
    return entries, notes




class LeaderboardError(TruthProbeError, ValueError):
    """Result folders that cannot be collected."""
