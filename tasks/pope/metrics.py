"""POPE metrics: accuracy, precision, recall, F1 (positive class "Yes") and yes-ratio, per split and their mean.

Replies become ``"Yes"``, ``"No"`` or ``"Unknown"`` through VLMEvalKit's own ``YOrN_Extraction`` (a reply is
Yes when it contains the word "yes" and not "no", and the other way round; anything else is Unknown). As in
VLMEvalKit's ``POPE_rating``, an Unknown reply is wrong and counts as a "No" prediction for precision and
recall; here it is also counted (``unknown``) so that unparseable replies are never silently hidden.

Inputs and outputs are NumPy arrays and plain dicts; fractions in [0, 1].
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from truthprobe_eval.errors import TruthProbeError
from truthprobe_eval.metrics import precision_recall_f1

YES, NO, UNKNOWN = "Yes", "No", "Unknown"
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_ratio")
POPE_SPLITS = ("random", "popular", "adversarial")


class POPEInputError(TruthProbeError, ValueError):
    """POPE labels, replies or splits that cannot be scored."""


def extract_answers(replies: Iterable[object]) -> np.ndarray:
    """Yes / No / Unknown for each reply, by VLMEvalKit's ``YOrN_Extraction`` (needs the ``[vlm]`` extra)."""
    try:
        from vlmeval.dataset.utils.yorn import YOrN_Extraction
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise POPEInputError(f"expected VLMEvalKit (pip install ms-vlmeval) for yes/no extraction, found: {exc}") from None
    return np.asarray([YOrN_Extraction(str(r)) for r in replies], dtype=object)


def normalize_labels(labels: Iterable[object]) -> np.ndarray:
    """Ground-truth labels as "Yes" / "No" (accepts yes/no in any case); anything else is an error."""
    out = []
    for i, label in enumerate(labels):
        text = str(label).strip().lower()
        if text not in ("yes", "no"):
            raise POPEInputError(f"label {i}: expected yes or no, found {label!r}")
        out.append(YES if text == "yes" else NO)
    return np.asarray(out, dtype=object)


def binary_metrics(labels: Sequence[object], extracted: Sequence[object]) -> dict:
    """Metrics of one set of questions. ``extracted`` holds "Yes" / "No" / "Unknown"."""
    y_true = normalize_labels(labels)
    pred = np.asarray(list(extracted), dtype=object)
    if len(pred) != len(y_true):
        raise POPEInputError(f"expected one reply per label ({len(y_true)}), found {len(pred)}")
    bad = sorted({str(p) for p in pred} - {YES, NO, UNKNOWN})
    if bad:
        raise POPEInputError(f"extracted answers: expected Yes, No or Unknown, found {bad[:5]}")
    n = len(y_true)
    if n == 0:
        raise POPEInputError("expected at least one question, found none")
    t, p = y_true == YES, pred == YES
    tp, fp, fn = int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(t & ~p))
    precision, recall, f1 = precision_recall_f1(t, p)
    unknown = int(np.sum(pred == UNKNOWN))
    return {
        "accuracy": float(np.mean(pred == y_true)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "yes_ratio": float(np.mean(p)),
        "unknown_ratio": unknown / n,
        "n": n,
        "unknown": unknown,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": n - tp - fp - fn,
    }


def _split_lists(splits: Iterable[object], n: int) -> list[list[str]]:
    out = [[s.strip() for s in str(x).split(",") if s.strip()] for x in splits]
    if len(out) != n:
        raise POPEInputError(f"expected one split entry per question ({n}), found {len(out)}")
    for i, names in enumerate(out):
        if not names:
            raise POPEInputError(f"question {i}: expected a split name (e.g. random), found none")
    return out


def pope_metrics(labels: Sequence[object], extracted: Sequence[object], splits: Sequence[object]) -> dict:
    """Per-split metrics, their unweighted mean over splits, and the pooled overall numbers.

    ``splits[i]`` names the split(s) of question i; a question shared by several splits (POPE's "yes"
    questions are) may carry a comma-separated list, e.g. ``"adversarial,popular,random"``, and then counts
    in each of them, as in VLMEvalKit's POPE table. Returns ``{"splits": {name: metrics}, "mean": {...},
    "overall": metrics over all (split, question) pairs}``.
    """
    labels, extracted = list(labels), list(extracted)
    names = _split_lists(splits, len(labels))
    rows = [(s, i) for i, ss in enumerate(names) for s in ss]
    order = [s for s in POPE_SPLITS if any(r[0] == s for r in rows)]
    order += sorted({r[0] for r in rows} - set(order))
    per_split = {}
    for split in order:
        idx = [i for s, i in rows if s == split]
        per_split[split] = binary_metrics([labels[i] for i in idx], [extracted[i] for i in idx])
    mean = {m: float(np.mean([per_split[s][m] for s in order])) for m in METRICS}
    mean["n_splits"] = len(order)
    overall = binary_metrics([labels[i] for _, i in rows], [extracted[i] for _, i in rows])
    return {"splits": per_split, "mean": mean, "overall": overall}


def metrics_table(result: dict) -> list[dict]:
    """Rows ``{"split", accuracy, precision, recall, f1, yes_ratio, unknown_ratio, n, unknown}`` in percent
    (counts as counts): one per split, then ``mean`` (over splits) and ``overall`` (pooled)."""
    rows = []
    for name, m in [*result["splits"].items(), ("mean", result["mean"]), ("overall", result["overall"])]:
        row = {"split": name, **{k: 100.0 * m[k] for k in METRICS}}
        row["n"] = m.get("n", sum(result["splits"][s]["n"] for s in result["splits"]))
        row["unknown"] = m.get("unknown", sum(result["splits"][s]["unknown"] for s in result["splits"]))
        rows.append(row)
    return rows


def format_table(result: dict) -> str:
    """The metrics table as aligned text (percent)."""
    header = f"{'split':<12} {'acc':>7} {'prec':>7} {'recall':>7} {'F1':>7} {'yes%':>7} {'unk%':>7} {'n':>6}"
    lines = [header]
    for row in metrics_table(result):
        lines.append(
            f"{row['split']:<12} {row['accuracy']:7.2f} {row['precision']:7.2f} {row['recall']:7.2f} {row['f1']:7.2f} "
            f"{row['yes_ratio']:7.2f} {row['unknown_ratio']:7.2f} {row['n']:6d}"
        )
    return "\n".join(lines)


__all__ = ["POPEInputError", "POPE_SPLITS", "METRICS", "extract_answers", "normalize_labels", "binary_metrics",
           "pope_metrics", "metrics_table", "format_table"]
