"""Linear probes per (layer, head) with grouped k-fold cross-validation; the mean validation accuracy is the
head's Truth Score.

Trainers:
- ``exact`` (default): L2-regularized logistic regression solved to convergence (scikit-learn's objective,
  ``LogisticRegression(C=C)``), one per head and fold, in parallel over heads.
- ``published``: every head at once as one batched tensor program (AdamW, binary cross-entropy, 200 epochs,
  lr 1e-2, weight decay 1e-3, batch 512), as the published scores were made.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TruthProbeError
from .folds import check_labels, grouped_stratified_folds

TRAINERS = ("exact", "published")


@dataclass
class ProbeResult:
    accuracy: np.ndarray  # (L, H) mean validation accuracy over folds: the Truth Score
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    weights: np.ndarray  # (L, H, D) probes fitted on all examples
    bias: np.ndarray  # (L, H)
    folds: np.ndarray  # (N,)
    trainer: str

    def to_scores(self, meta: dict | None = None):
        from ..scores import TruthScores

        return TruthScores(
            self.accuracy,
            meta={"metric": "cv_val_accuracy", "trainer": self.trainer, **(meta or {})},
            metrics={"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "f1": self.f1},
            probe_weights=self.weights,
            probe_bias=self.bias,
        )


def _binary_metrics(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., N) 0/1 predictions against (N,) labels -> (4, ...) accuracy, precision, recall, f1 (zero_division=0)."""
    tp = (pred * y).sum(-1)
    fp = (pred * (1 - y)).sum(-1)
    fn = ((1 - pred) * y).sum(-1)
    acc = (pred == y).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)
    return np.stack([acc, prec, rec, f1])


def _fit_exact(X: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=1000)
    clf.fit(X, y)
    return clf.coef_[0], float(clf.intercept_[0])


def _exact_head(Xh: np.ndarray, y: np.ndarray, folds: np.ndarray, n_folds: int, C: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One head: (4,) fold-mean metrics, and the all-data probe (w, b)."""
    per_fold = []
    for k in range(n_folds):
        tr, va = folds != k, folds == k
        w, b = _fit_exact(Xh[tr], y[tr], C)
        pred = ((Xh[va] @ w + b) > 0).astype(np.float64)
        per_fold.append(_binary_metrics(pred, y[va].astype(np.float64)))
    w, b = _fit_exact(Xh, y, C)
    return np.mean(per_fold, axis=0), w, b


def _train_exact(X, y, folds, n_folds, C, n_jobs, progress):
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    N, L, H, D = X.shape
    heads = [(l, h) for l in range(L) for h in range(H)]
    jobs = (delayed(_exact_head)(np.ascontiguousarray(X[:, l, h], dtype=np.float64), y, folds, n_folds, C) for l, h in heads)
    runner = Parallel(n_jobs=n_jobs or -1, return_as="generator")
    metrics = np.zeros((4, L, H))
    weights = np.zeros((L, H, D), dtype=np.float32)
    bias = np.zeros((L, H), dtype=np.float32)
    for (l, h), (m, w, b) in tqdm(zip(heads, runner(jobs)), total=len(heads), desc="training probes (exact)", disable=not progress, leave=False):
        metrics[:, l, h], weights[l, h], bias[l, h] = m, w, b
    return metrics, weights, bias


def _train_published(X, y, folds, n_folds, epochs, lr, weight_decay, batch_size, seed, device, progress):
    import torch
    from tqdm.auto import tqdm

    N, L, H, D = X.shape
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    Xt = torch.as_tensor(np.ascontiguousarray(X.reshape(N, L * H, D)), dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y, dtype=torch.float32, device=dev)

    def fit(idx: np.ndarray):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        w = torch.zeros(L * H, D, device=dev, requires_grad=True)
        b = torch.zeros(L * H, device=dev, requires_grad=True)
        opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
        idx_t = torch.as_tensor(idx, device=dev)
        for _ in range(epochs):
            perm = idx_t[torch.randperm(len(idx), generator=gen).to(dev)]
            for start in range(0, len(perm), batch_size):
                bi = perm[start:start + batch_size]
                logits = torch.einsum("nkd,kd->nk", Xt[bi], w) + b
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[bi, None].expand_as(logits))
                opt.zero_grad()
                loss.backward()
                opt.step()
        return w.detach(), b.detach()

    per_fold = []
    for k in tqdm(range(n_folds), desc="training probes (published)", disable=not progress, leave=False):
        w, b = fit(np.flatnonzero(folds != k))
        va = np.flatnonzero(folds == k)
        with torch.no_grad():
            pred = ((torch.einsum("nkd,kd->kn", Xt[va], w) + b[:, None]) > 0).double().cpu().numpy()
        per_fold.append(_binary_metrics(pred, y[va].astype(np.float64)))
    w, b = fit(np.arange(N))
    metrics = np.mean(per_fold, axis=0).reshape(4, L, H)
    return metrics, w.cpu().numpy().reshape(L, H, D), b.cpu().numpy().reshape(L, H)


def train_probes(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, *, n_folds: int = 5, seed: int = 0,
                 trainer: str = "exact", epochs: int = 200, lr: float = 1e-2, weight_decay: float = 1e-3,
                 batch_size: int = 512, C: float = 1.0, device: str | None = None, n_jobs: int | None = None,
                 folds: np.ndarray | None = None, progress: bool = True) -> ProbeResult:
    """X: (N, L, H, D) activations; y: (N,) 0/1; groups: (N,) question ids (None = each example its own group)."""
    if trainer not in TRAINERS:
        raise TruthProbeError(f"trainer: expected one of {', '.join(TRAINERS)}, found {trainer!r}")
    X = np.asarray(X)
    if X.ndim != 4:
        raise TruthProbeError(f"activations: expected a 4-D array (examples, layers, heads, head_dim), found shape {X.shape}")
    y = check_labels(y, X.shape[0])
    if folds is None:
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        folds = grouped_stratified_folds(y, groups, n_folds, seed)
    else:
        folds = np.asarray(folds)
        n_folds = int(folds.max()) + 1
    if trainer == "exact":
        metrics, w, b = _train_exact(X, y, folds, n_folds, C, n_jobs, progress)
    else:
        metrics, w, b = _train_published(X, y, folds, n_folds, epochs, lr, weight_decay, batch_size, seed, device, progress)
    acc, prec, rec, f1 = metrics
    return ProbeResult(acc, prec, rec, f1, w.astype(np.float32), b.astype(np.float32), folds, trainer)


__all__ = ["ProbeResult", "TRAINERS", "train_probes"]
