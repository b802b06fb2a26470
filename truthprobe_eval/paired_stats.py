"""Every paired comparison the project reports, in one module: two runs on the same rows or samples.

- ``compare_paired``: two judge runs (HaluEval yes/no): accuracy and F1 differences with paired bootstrap
  intervals, McNemar, the margin AUROC; ``compare_scores``: per-item scores (TruthfulQA MC1 / MC2);
  ``paired_test``: per-sample values of any harness (``truthprobe significance``, the leaderboard's marks).
- One McNemar rule: statsmodels' exact (binomial) test, two-sided, on the discordant pairs (``mcnemar``), at any
  number of pairs (the exact test needs no large-sample approximation).
- Intervals: scipy's ``bootstrap``, percentile method; ``paired=True`` where two arrays are resampled jointly.
- The margin AUROC: scikit-learn's ``roc_auc_score``.

Only the statistics being resampled (differences in accuracy and F1, vectorized over resamples) are written here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TruthProbeError

class PairedStatsError(TruthProbeError, ValueError):
    """Inputs a paired comparison cannot take (``truthprobe significance`` reports it as its own error)."""


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
    gold = np.asarray(gold_yes, dtype=bool)
    base = np.asarray(base_yes, dtype=bool)
    gated = np.asarray(gated_yes, dtype=bool)
    if not (gold.shape == base.shape == gated.shape) or gold.ndim != 1 or gold.size < 2:
        raise TruthProbeError(f"paired comparison: expected three equal-length 1-D arrays of at least 2 rows, found "
                              f"{gold.shape}, {base.shape} and {gated.shape}")
    only_base, only_gated, _, p, method = mcnemar((base == gold).astype(int), (gated == gold).astype(int))
    arrays = (gold, base, gated)
    same = bool(np.array_equal(base, gated))
    acc_lo, acc_hi = _interval(_acc_difference, arrays, seed, n_resamples, confidence, same)
    f1_lo, f1_hi = _interval(_f1_difference, arrays, seed, n_resamples, confidence, same)
    out: dict[str, Any] = {
        "n": int(gold.size),
        "acc_delta": float(_acc_difference(*arrays)), "acc_delta_ci": [acc_lo, acc_hi],
        "f1_delta": float(_f1_difference(*arrays)), "f1_delta_ci": [f1_lo, f1_hi],
        "mcnemar_p": p, "mcnemar_method": method,
        "only_baseline_right": only_base, "only_gated_right": only_gated,
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
        only_a, only_b, _, p, _ = mcnemar(a, b)
        out.update(p=p, test="exact McNemar (statsmodels)", only_baseline_right=only_a, only_other_right=only_b)
    elif np.allclose(a, b):
        out.update(p=1.0, test="Wilcoxon signed-rank (scipy); all differences zero")
    else:
        out.update(p=float(stats.wilcoxon(b, a, zero_method="wilcox").pvalue), test="Wilcoxon signed-rank (scipy)")
    return out


# ---- per-sample values of any harness -------------------------------------------------------------------
@dataclass
class PairedResult:
    task: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean of B - A
    ci_low: float
    ci_high: float
    confidence: float
    t_stat: float
    t_p: float  # for ``alternative``
    t_p_two_sided: float
    alternative: str
    binary: bool
    a_only: int | None = None  # A right, B wrong
    b_only: int | None = None  # B right, A wrong
    mcnemar_stat: float | None = None
    mcnemar_p: float | None = None
    mcnemar_method: str | None = None

    @property
    def p_for_marks(self) -> float:
        """Two-sided p-value used for significance marks: McNemar for 0/1 data, the paired t-test otherwise."""
        return self.mcnemar_p if self.binary and self.mcnemar_p is not None else self.t_p_two_sided


def bootstrap_ci(d: np.ndarray, n_boot: int = 10000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (``scipy.stats.bootstrap``, resampling with replacement).

    Resamples are drawn in batches of at most 2M values, so memory stays bounded for long runs; the batch size is
    part of the seeded draw, and kept as it always was so that reported intervals do not move."""
    from scipy import stats

    if not 0 < confidence < 1:
        raise PairedStatsError(f"expected a confidence level in (0, 1), found {confidence}")
    d = np.asarray(d, dtype=float)
    if np.ptp(d) == 0:  # every resample has the same mean (scipy would call the interval degenerate)
        return float(d[0]), float(d[0])
    batch = max(1, min(n_boot, 2_000_000 // max(1, d.size)))
    res = stats.bootstrap((d,), np.mean, n_resamples=n_boot, batch=batch, vectorized=True, confidence_level=confidence,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float, float, str]:
    """McNemar's test on paired 0/1 outcomes, the project's one rule: statsmodels' exact binomial test, two-sided,
    on the discordant pairs. Returns (A-only right, B-only right, statistic = the smaller count, p, method)."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a, b = np.asarray(a), np.asarray(b)
    a_only = int(((a == 1) & (b == 0)).sum())
    b_only = int(((a == 0) & (b == 1)).sum())
    if a_only + b_only == 0:
        return a_only, b_only, 0.0, 1.0, "exact binomial (no discordant pairs)"
    test = sm_mcnemar([[0, a_only], [b_only, 0]], exact=True)  # only the discordant cells enter the test
    return a_only, b_only, float(test.statistic), float(test.pvalue), "exact binomial"


def paired_test(a: np.ndarray, b: np.ndarray, task: str = "", metric: str = "", alternative: str = "greater",
                n_boot: int = 10000, confidence: float = 0.95, seed: int = 0) -> PairedResult:
    """All paired statistics for per-sample values ``a`` and ``b`` (same samples, same order)."""
    from scipy import stats

    if alternative not in ("greater", "less", "two-sided"):
        raise PairedStatsError(f"expected alternative greater, less or two-sided, found {alternative!r}")
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise PairedStatsError(f"expected two equal-length runs of at least 2 samples, found {a.shape} and {b.shape}")
    d = b - a
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # no variance in the differences: scipy's t is undefined, the answer is not
        if abs(d[0]) <= 1e-12:
            t_stat, t_p, t_p2 = 0.0, 1.0, 1.0
        else:
            t_stat, t_p2 = math.copysign(math.inf, d[0]), 0.0
            agrees = alternative == "two-sided" or (alternative == "greater") == (d[0] > 0)
            t_p = 0.0 if agrees else 1.0
    else:
        r = stats.ttest_rel(b, a, alternative=alternative)
        t_stat, t_p = float(r.statistic), float(r.pvalue)
        t_p2 = float(stats.ttest_rel(b, a).pvalue)
    lo, hi = bootstrap_ci(d, n_boot, confidence, seed)
    binary = bool(np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all())
    res = PairedResult(task, metric, int(a.size), float(a.mean()), float(b.mean()), float(d.mean()), lo, hi, confidence,
                       t_stat, t_p, t_p2, alternative, binary)
    if binary:
        res.a_only, res.b_only, res.mcnemar_stat, res.mcnemar_p, res.mcnemar_method = mcnemar(a, b)
    return res


__all__ = ["PairedResult", "PairedStatsError", "bootstrap_ci", "compare_paired", "compare_scores", "margin_auroc", "mcnemar",
           "mcnemar_power", "paired_test"]
