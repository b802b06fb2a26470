"""Paired statistics of two judge runs: the libraries' tests on hand-built cases, and the resampled statistics
against scikit-learn's own metrics."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

from truthprobe_eval import TruthProbeError
from truthprobe_eval.paired_stats import _f1, compare_paired, margin_auroc


def test_vectorized_f1_equals_scikit_learn():
    rng = np.random.default_rng(0)
    gold, pred = rng.random((2, 50, 40)) < 0.4
    ours = _f1(gold, pred)
    assert ours == pytest.approx([f1_score(g, p, zero_division=0) for g, p in zip(gold, pred)])
    assert _f1(np.array([True, False]), np.array([False, False])) == 0.0


def test_mcnemar_is_the_exact_binomial_test_on_discordant_rows():
    gold = np.array([True] * 10 + [False] * 10)
    base = np.zeros(20, dtype=bool)  # right on the 10 gold-"No" rows
    gated = base.copy()
    gated[:7] = True  # right on 7 more gold-"Yes" rows
    gated[10] = True  # wrong on one gold-"No" row
    res = compare_paired(gold, base, gated, n_resamples=2000)
    assert (res["only_gated_right"], res["only_baseline_right"]) == (7, 1)
    assert res["mcnemar_p"] == pytest.approx(stats.binomtest(1, 8, 0.5).pvalue)
    assert res["acc_delta"] == pytest.approx(16 / 20 - 10 / 20)
    assert res["f1_delta"] == pytest.approx(f1_score(gold, gated))
    lo, hi = res["acc_delta_ci"]
    assert lo <= res["acc_delta"] <= hi and lo > 0  # 7 vs 1 discordant rows: the interval excludes 0
    assert res["f1_delta_ci"][0] <= res["f1_delta"] <= res["f1_delta_ci"][1]


def test_identical_runs_have_a_zero_interval_and_p_one():
    gold = np.array([True, False, True, False])
    pred = np.array([True, True, False, False])
    res = compare_paired(gold, pred, pred.copy())
    assert res["acc_delta_ci"] == [0.0, 0.0] and res["f1_delta_ci"] == [0.0, 0.0]
    assert res["mcnemar_p"] == 1.0


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(1)
    gold, base, gated = rng.random((3, 60)) < 0.5
    assert compare_paired(gold, base, gated, seed=3) == compare_paired(gold, base, gated, seed=3)


def test_margin_auroc():
    gold = np.array([True, False, True, False])
    margin = np.array([0.5, -1.0, -2.0, 0.1])
    assert margin_auroc(gold, margin) == pytest.approx(roc_auc_score(gold, margin)) == pytest.approx(0.5)
    assert margin_auroc(np.array([True, True]), np.array([0.1, 0.2])) is None
    assert margin_auroc(gold, np.array([0.5, np.nan, 0.1, 0.2])) is None
    res = compare_paired(gold, gold, ~gold, margin, -margin)
    assert (res["auroc_baseline"], res["auroc_gated"]) == (pytest.approx(0.5), pytest.approx(0.5))


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(TruthProbeError, match="expected three equal-length 1-D arrays"):
        compare_paired(np.array([True, False]), np.array([True]), np.array([True, False]))


def test_mcnemar_power_matches_simulated_statsmodels_tests():
    """The exact power equals the rejection rate of statsmodels' exact McNemar test on simulated paired rows."""
    from statsmodels.stats.contingency_tables import mcnemar

    from truthprobe_eval.paired_stats import mcnemar_power

    n, p_b, p_a = 60, 0.2, 0.06
    rng = np.random.default_rng(0)
    cells = rng.multinomial(n, [p_b, p_a, 1 - p_b - p_a], size=4000)
    rejected = np.mean([mcnemar([[0, c[1]], [c[0], 0]], exact=True).pvalue <= 0.05 for c in cells])
    power = mcnemar_power(n, p_b, p_a)
    assert abs(power - rejected) < 0.025 and 0.3 < power < 0.95
    assert mcnemar_power(n, 0.1, 0.1) <= 0.05            # no difference: the level at most (exact tests are conservative)
    assert mcnemar_power(1500, 0.09, 0.06) > mcnemar_power(300, 0.09, 0.06)
