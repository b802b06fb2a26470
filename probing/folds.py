"""Grouped, stratified k-fold assignment for probe cross-validation.

Every example of one group (both answers to one question) lands in the same fold, so a probe is never
validated on the twin of an example it was trained on. The published TruthProbe code split pairs at random,
which leaks: the truthful and the hallucinated answer share the context and the question, and most of the
activation, so a probe can score on a validation example by having seen its twin.

Folds are balanced per label: groups are taken in a seeded random order (largest first) and each goes to
the fold that, relative to its share, most lacks the labels the group carries. For the usual data (each
question a pair with one answer of each label) every fold gets the same number of pairs, give or take one.

Why not scikit-learn's ``StratifiedGroupKFold``: it makes the same promises (groups intact, labels balanced) by a
different greedy rule (groups ordered by the spread of their label counts, each put where the spread of label
shares across folds grows least), so it assigns other folds, even for pairs once there are more than 2 folds. Every
Truth Score, ITI direction and result this project reports was computed with the folds below; switching would
move all of them. ``tests/test_probe_trainers.py`` checks, on the real TruthfulQA groups, that these folds
balance labels and sizes at least as well as scikit-learn's (on all 813 questions: label shares within 0.1
percentage point of the whole; fold sizes within 2 examples, where scikit-learn's differ by up to 12).
"""
from __future__ import annotations

import numpy as np

from ..errors import TruthProbeError


class FoldError(TruthProbeError, ValueError):
    """Labels, groups or a fold count that cannot make k-fold cross-validation work."""


def check_labels(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """``labels`` as an int64 0/1 vector with both classes present, or a ``FoldError`` saying what is wrong."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise FoldError(f"labels: expected a 1-D array of 0/1, found shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise FoldError(f"labels: expected {n} labels (one per example), found {y.shape[0]}")
    if y.size == 0:
        raise FoldError("labels: expected at least one example of each class (0 and 1), found no examples")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise FoldError(f"labels: expected 0/1 numbers, found dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        values = ", ".join(map(repr, np.unique(y[bad])[:5].tolist()))
        raise FoldError(f"labels: expected only 0 (hallucinated) and 1 (truthful), found {values}")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise FoldError(f"labels: expected both classes, found only label {int(np.argmax(counts))} "
                        f"({int(counts.max())} examples): a probe needs truthful and hallucinated examples")
    return y


def grouped_stratified_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..n_folds-1) per example; all examples of one group on the same side; stratified by label.

    Deterministic for a seed, and independent of the order of the examples. Raises ``FoldError`` when there
    are fewer groups than folds, only one class, or a split whose training part would lack a class.
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise FoldError(f"n_folds: expected an integer >= 2, found {n_folds!r}")
    y = check_labels(labels)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != y.shape[0]:
        raise FoldError(f"groups: expected a 1-D array with one group id per example ({y.shape[0]}), found shape {g.shape}")
    group_ids, group_of = np.unique(g, return_inverse=True)
    n_groups = group_ids.size
    if n_groups < n_folds:
        raise FoldError(f"{n_folds}-fold cross-validation needs at least {n_folds} groups (questions), "
                        f"found {n_groups}: add examples or use fewer folds")
    # per-group label counts, and the label totals each fold should approach
    group_counts = np.zeros((n_groups, 2), dtype=np.int64)
    np.add.at(group_counts, (group_of, y), 1)
    totals = group_counts.sum(axis=0).astype(np.float64)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-group_counts[order].sum(axis=1), kind="stable")]  # big groups first, ties seeded

    fold_counts = np.zeros((n_folds, 2), dtype=np.float64)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    for gi in order:
        carried = group_counts[gi]
        # how much each fold already holds of the labels this group carries, relative to the label totals
        fill = (fold_counts / totals) @ carried
        sizes = fold_counts.sum(axis=1)
        best = np.lexsort((np.arange(n_folds), sizes, fill))[0]  # least filled, then smallest, then lowest index
        fold_of_group[gi] = best
        fold_counts[best] += carried

    folds = fold_of_group[group_of]
    for k in range(n_folds):
        train = y[folds != k]
        if train.size == 0 or train.min() == train.max():
            raise FoldError(f"fold {k}: its training part has only label {int(train[0]) if train.size else '-'}; "
                            f"expected both classes outside every fold: add examples or use fewer folds")
    return folds


def published_kfold(labels: np.ndarray, n_folds: int = 5, seed: int = 42) -> np.ndarray:
    """The published TruthProbe folds: scikit-learn ``KFold(n_folds, shuffle=True, random_state=seed)`` over the
    examples (no groups, no stratification), as a fold index per example."""
    from sklearn.model_selection import KFold

    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise FoldError(f"n_folds: expected an integer >= 2, found {n_folds!r}")
    y = check_labels(labels)
    if y.size < n_folds:
        raise FoldError(f"{n_folds}-fold cross-validation needs at least {n_folds} examples, found {y.size}")
    folds = np.empty(y.size, dtype=np.int64)
    for k, (_, val) in enumerate(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(y)):
        folds[val] = k
    for k in range(n_folds):
        train = y[folds != k]
        if train.min() == train.max():
            raise FoldError(f"fold {k}: its training part has only label {int(train[0])}; add examples or use fewer folds")
    return folds


__all__ = ["FoldError", "check_labels", "grouped_stratified_folds", "published_kfold"]
