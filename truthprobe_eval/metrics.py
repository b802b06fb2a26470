"""Binary precision, recall and F1, once, through scikit-learn (``precision_recall_fscore_support``).

Every benchmark that scores yes/no answers (POPE, HaluEval under both protocols) takes them from here; each keeps
its own accuracy, because they differ in how an unparseable reply counts (always wrong for HaluEval's judge and
POPE, a "No" under the TruthProbe protocol).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def precision_recall_f1(gold: Sequence[bool], pred: Sequence[bool]) -> tuple[float, float, float]:
    """(precision, recall, F1) with True the positive class; 0 where a ratio is undefined (no positives)."""
    from sklearn.metrics import precision_recall_fscore_support

    gold, pred = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    if gold.size == 0:
        return 0.0, 0.0, 0.0
    p, r, f, _ = precision_recall_fscore_support(gold, pred, average="binary", pos_label=True, zero_division=0)
    return float(p), float(r), float(f)


__all__ = ["precision_recall_f1"]
