"""Precision, recall and F1 once (scikit-learn): the same numbers as the hand formulas they replaced."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from truthprobe_eval.metrics import precision_recall_f1


def _hand(gold, pred):
    tp = int(np.sum(gold & pred))
    fp = int(np.sum(~gold & pred))
    fn = int(np.sum(gold & ~pred))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_precision_recall_f1_equals_the_hand_formulas(pairs):
    gold = np.array([g for g, _ in pairs])
    pred = np.array([p for _, p in pairs])
    assert precision_recall_f1(gold, pred) == pytest.approx(_hand(gold, pred), abs=1e-12)


def test_the_benchmarks_use_it():
    from truthprobe_eval.tasks.halueval.utils import scores_from_confusion
    from truthprobe_eval.tasks.pope import binary_metrics

    m = binary_metrics(["yes", "yes", "no", "no", "yes"], ["Yes", "No", "Yes", "Unknown", "Yes"])
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    s = scores_from_confusion({"tp": 3, "fp": 1, "tn": 4, "fn": 2, "correct": 6, "unparseable": 1, "n": 10})
    assert (s["precision"], s["recall"], s["acc"]) == pytest.approx((0.75, 0.6, 0.6)) and s["f1"] == pytest.approx(2 / 3)
    assert precision_recall_f1([], []) == (0.0, 0.0, 0.0) and precision_recall_f1([False], [False]) == (0.0, 0.0, 0.0)
