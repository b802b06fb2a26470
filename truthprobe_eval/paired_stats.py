"""Paired comparisons of two judge runs on the same rows: McNemar, paired bootstrap intervals, margin AUROC.

The tests are the libraries' own: the exact McNemar test of statsmodels, scipy's ``bootstrap`` with
``paired=True`` (rows resampled jointly for both runs), scikit-learn's ``roc_auc_score``. Only the statistics
being resampled (differences in accuracy and F1, vectorized over resamples) are written here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import TruthProbeError

N_RESAMPLES = 10_000
CONFIDENCE = 0.95


def _f1(gold: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    tp = np.sum(gold & pred, axis=axis)
    fp = np.sum(~gold & pred, axis=axis)
    fn = np.sum(gold & ~pred, axis=axis)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _acc_difference(gold, base, gated, axis=-1):
    return np.mean(gated == gold, axis=axis) - np.mean(base == gold, axis=axis)


def _f1_difference(gold, base, gated, axis=-1):
    return _f1(gold, gated, axis) - _f1(gold, base, axis)


def _interval(statistic, arrays, seed: int, n_resamples: int, confidence: float,
              identical: bool) -> tuple[float, float]:
    from scipy import stats

    observed = float(statistic(*arrays))
    if identical:  # identical runs: every resample gives 0 (scipy's interval would be degenerate)
        return observed, observed
    res = stats.bootstrap(arrays, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def margin_auroc(gold_yes: np.ndarray, margin: np.ndarray) -> float | None:
    """AUROC of the Yes-minus-No margin for gold "Yes"; None when a class is missing or a margin is unknown."""
    from sklearn.metrics import roc_auc_score

    gold = np.asarray(gold_yes, dtype=bool)
    margin = np.asarray(margin, dtype=float)
    if gold.all() or not gold.any() or not np.isfinite(margin).all():
        return None
    return float(roc_auc_score(gold, margin))


def mcnemar_power(n: int, p_only_b: float, p_only_a: float, level: float = 0.05) -> float:
    """Power of the two-sided exact McNemar test (statsmodels' rule: p = 2 P(X <= min count), X ~ Bin(D, 1/2) on
    the D discordant rows) with ``n`` paired rows, when a row is right only under B with probability ``p_only_b``
    and only under A with ``p_only_a`` (their difference is the accuracy difference B - A). Exact: summed over the
    binomial number of discordant rows."""
    from scipy import stats

    if n < 1 or min(p_only_b, p_only_a) < 0 or p_only_b + p_only_a > 1:
        raise TruthProbeError(f"power: expected n >= 1 and discordant shares in [0, 1] summing to at most 1, found "
                              f"n={n}, {p_only_b}, {p_only_a}")
    d = p_only_b + p_only_a
    if d == 0:
        return 0.0
    D = np.arange(n + 1)
    k = stats.binom.ppf(level / 2, D, 0.5)
    k = np.where(2 * stats.binom.cdf(k, D, 0.5) <= level, k, k - 1)   # largest count still rejected, -1: none
    q = p_only_b / d
    reject = np.where(k >= 0, stats.binom.cdf(k, D, q) + stats.binom.sf(D - k - 1, D, q), 0.0)
    return float(np.sum(stats.binom.pmf(D, n, d) * np.minimum(reject, 1.0)))


def compare_paired(gold_yes: np.ndarray, base_yes: np.ndarray, gated_yes: np.ndarray,
                   base_margin: np.ndarray | None = None, gated_margin: np.ndarray | None = None, *,
                   seed: int = 0, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Baseline vs gated on the same rows ("Yes" = hallucinated, the positive class).

    Returns the accuracy and F1 differences with paired percentile-bootstrap intervals, the exact McNemar
    p-value of the accuracy difference (two-sided; the discordant counts beside it) and, where margins are
    given, both margin AUROCs.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    gold = np.asarray(gold_yes, dtype=bool)
    base = np.asarray(base_yes, dtype=bool)
    gated = np.asarray(gated_yes, dtype=bool)
    if not (gold.shape == base.shape == gated.shape) or gold.ndim != 1 or gold.size < 2:
        raise TruthProbeError(f"paired comparison: expected three equal-length 1-D arrays of at least 2 rows, found "
                              f"{gold.shape}, {base.shape} and {gated.shape}")
    base_ok, gated_ok = base == gold, gated == gold
    table = [[int(np.sum(base_ok & gated_ok)), int(np.sum(base_ok & ~gated_ok))],
             [int(np.sum(~base_ok & gated_ok)), int(np.sum(~base_ok & ~gated_ok))]]
    test = mcnemar(table, exact=True)
    arrays = (gold, base, gated)
    same = bool(np.array_equal(base, gated))
    acc_lo, acc_hi = _interval(_acc_difference, arrays, seed, n_resamples, confidence, same)
    f1_lo, f1_hi = _interval(_f1_difference, arrays, seed, n_resamples, confidence, same)
    out: dict[str, Any] = {
        "n": int(gold.size),
        "acc_delta": float(_acc_difference(*arrays)), "acc_delta_ci": [acc_lo, acc_hi],
        "f1_delta": float(_f1_difference(*arrays)), "f1_delta_ci": [f1_lo, f1_hi],
        "mcnemar_p": float(test.pvalue), "mcnemar_method": "exact (statsmodels)",
        "only_baseline_right": table[0][1], "only_gated_right": table[1][0],
        "bootstrap": {"method": "percentile, paired", "n_resamples": n_resamples, "confidence": confidence,
                      "seed": seed},
    }
    if base_margin is not None and gated_margin is not None:
        out["auroc_baseline"] = margin_auroc(gold, base_margin)
        out["auroc_gated"] = margin_auroc(gold, gated_margin)
    return out


def _mean_difference(base, other, axis=-1):
    return np.mean(other, axis=axis) - np.mean(base, axis=axis)


def compare_scores(base: np.ndarray, other: np.ndarray, *, binary: bool = False, seed: int = 0,
                   n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Two runs' per-item scores on the same items (TruthfulQA MC1 0/1, MC2 probabilities): the mean difference
    with a paired percentile-bootstrap interval, and its p-value: exact McNemar (statsmodels) for 0/1 scores
    (``binary``), else the Wilcoxon signed-rank test (scipy, two-sided, zero differences dropped)."""
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise TruthProbeError(f"paired comparison: expected two equal-length 1-D arrays of at least 2 items, found "
                              f"{a.shape} and {b.shape}")
    lo, hi = _interval(_mean_difference, (a, b), seed, n_resamples, confidence, bool(np.array_equal(a, b)))
    out: dict[str, Any] = {"n": int(a.size), "delta": float(b.mean() - a.mean()), "delta_ci": [lo, hi],
                           "bootstrap": {"method": "percentile, paired", "n_resamples": n_resamples,
                                         "confidence": confidence, "seed": seed}}
    if binary:
        if not np.isin(np.concatenate([a, b]), (0.0, 1.0)).all():
            raise TruthProbeError("paired comparison: binary=True expects 0/1 scores")
        table = [[int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))],
                 [int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))]]
        out.update(p=float(mcnemar(table, exact=True).pvalue), test="exact McNemar (statsmodels)",
                   only_baseline_right=table[0][1], only_other_right=table[1][0])
    elif np.allclose(a, b):
        out.update(p=1.0, test="Wilcoxon signed-rank (scipy); all differences zero")
    else:
        out.update(p=float(stats.wilcoxon(b, a, zero_method="wilcox").pvalue), test="Wilcoxon signed-rank (scipy)")
    return out


__all__ = ["compare_paired", "compare_scores", "margin_auroc"]
