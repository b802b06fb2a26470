"""Linear probes per attention head, k-fold cross-validated: the Truth Score of a head is its mean validation accuracy.

Two trainers fit one logistic-regression probe per (layer, head) on every fold, plus one on all examples:

``exact`` (default)
    L2-regularized logistic regression solved to convergence, with scikit-learn's objective
    (``LogisticRegression(C=C)``: sum of log-losses + ||w||^2 / (2C), intercept unpenalized). All heads x folds
    are solved together by a batched, preconditioned L-BFGS in torch (CPU or GPU), chunk of heads by chunk of
    heads (``probing/lbfgs.py``). The result does not hang on optimizer settings: it is the unique minimum, to a
    gradient tolerance 100x tighter than scikit-learn's default.
``paper``
    The published TruthProbe trainer (``vectorized_linear_probe`` in miso-choi/TruthProbe), detail for detail:
    W (L, H, D) and B (L, H) start at zero; AdamW (lr 1e-2, weight decay 1e-3); 200 epochs; batches of 512 taken
    in order from each fold's training indices (no shuffle); the loss is BCE-with-logits averaged over the batch,
    the layers and the heads together; the weights after the last epoch are scored at sigmoid > 0.5. Used with
    ``fold_rule="kfold"`` (scikit-learn ``KFold(5, shuffle=True, random_state=42)`` over the examples).
``published``
    Our earlier approximation of it (kept so that old score files rebuild): AdamW with the same settings, but
    nn.Linear's random initialization, shuffled mini-batches, and the loss averaged per head.

See ``docs/probe_trainers.md`` for the why and for speed measurements (``benchmarks/probe_training.py``).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import TruthProbeError
from .folds import FoldError, check_labels, grouped_stratified_folds, published_kfold
from .lbfgs import EXACT_MAX_ITER, EXACT_TOL, solve_logistic

TRAINERS = ("exact", "paper", "published")
FOLD_RULES = ("grouped", "kfold")

EXACT_CHUNK_BYTES = 16 * 2**20       # float32 bytes of one chunk of heads' activations (CPU; cache-sized)
PUBLISHED_CHUNK_BYTES = 4 * 2**20
GPU_CHUNK_BYTES = 4 * 2**30          # on a GPU: every head of a 7B model at N = 2,920 in one batch


class ProbeInputError(TruthProbeError, ValueError):
    """Activations, labels or settings that probes cannot be trained on."""


@dataclass
class ProbeResult:
    """Per-head cross-validated probe metrics, plus a probe per head fitted on all examples."""

    accuracy: np.ndarray    # (L, H) mean validation accuracy over folds = the Truth Score
    precision: np.ndarray   # (L, H) mean over folds; positive class = label 1 = truthful
    recall: np.ndarray      # (L, H)
    f1: np.ndarray          # (L, H)
    weights: np.ndarray     # (L, H, D) float32, probes fitted on all examples after cross-validation
    bias: np.ndarray        # (L, H)
    folds: np.ndarray       # (N,) the fold of each example
    trainer: str
    info: dict[str, Any] = field(default_factory=dict)   # trainer settings and solver statistics

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        return {"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "f1": self.f1}

    def to_scores(self, meta: dict | None = None) -> "Any":
        """A ``TruthScores`` (values = accuracy) with all four metrics and the probe weights and biases."""
        from ..scores import TruthScores

        full_meta = {"trainer": self.trainer, "folds": int(self.folds.max()) + 1, **self.info}
        full_meta.update(meta or {})
        return TruthScores(values=self.accuracy, meta=full_meta, metrics=dict(self.metrics),
                           probe_weights=self.weights, probe_bias=self.bias)


# ---- input checks -------------------------------------------------------------------------------------
def _check_inputs(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 4:
        raise ProbeInputError(f"activations: expected a 4-D array (examples, layers, heads, head_dim), found shape {X.shape}")
    if min(X.shape) == 0:
        raise ProbeInputError(f"activations: expected non-empty dimensions, found shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise ProbeInputError(f"activations: expected float16/float32/float64 values, found dtype {X.dtype}")
    try:
        labels = check_labels(y, n=X.shape[0])
    except FoldError as exc:
        raise ProbeInputError(str(exc).replace("one per example", f"one per example of the {X.shape[0]} activations")) from None
    if groups is None:
        groups = np.arange(X.shape[0])
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != X.shape[0]:
        raise ProbeInputError(f"groups: expected one group id per example ({X.shape[0]}), found shape {groups.shape}")
    return X, labels, groups


def _check_folds(folds: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int) -> np.ndarray:
    folds = np.asarray(folds)
    if folds.shape != y.shape or not np.issubdtype(folds.dtype, np.integer):
        raise ProbeInputError(f"folds: expected one integer fold index per example ({y.shape[0]}), "
                              f"found shape {folds.shape}, dtype {folds.dtype}")
    if folds.min() < 0 or folds.max() >= n_folds or np.unique(folds).size != n_folds:
        raise ProbeInputError(f"folds: expected every fold index 0..{n_folds - 1} used, found {np.unique(folds).tolist()[:10]}")
    for k in range(n_folds):
        train = y[folds != k]
        if train.min() == train.max():
            raise ProbeInputError(f"folds: the training part of fold {k} has only label {int(train[0])}")
    split = [g for g in np.unique(groups) if np.unique(folds[groups == g]).size > 1]
    if split:
        warnings.warn(f"folds: {len(split)} group(s) span several folds (e.g. group {split[0]!r}): "
                      f"validation examples have a twin in training", stacklevel=3)
    return folds.astype(np.int64)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ProbeInputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', found {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeInputError(f"device {device!r}: CUDA is not available here; use device='cpu'")
    return dev


@contextlib.contextmanager
def _torch_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """Run CPU work on ``n`` threads (default 1: on a shared CPU, more threads spin and lose)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fold_weights(folds: np.ndarray, n_folds: int) -> np.ndarray:
    """(N, n_folds + 1) 0/1 sample weights: column k trains fold k (all but its validation part), the last all."""
    train = folds[:, None] != np.arange(n_folds)[None, :]
    return np.concatenate([train, np.ones((folds.size, 1), dtype=bool)], axis=1)


def _head_chunks(n_heads: int, n: int, dim: int, device: torch.device, chunk_bytes: int) -> list[slice]:
    """Heads per batch: cache-sized on the CPU; on a GPU as many as ``GPU_CHUNK_BYTES`` allow (all, usually)."""
    per_head = n * (dim + 1) * 4 * 2    # a float32 copy and its transpose
    budget = chunk_bytes if device.type == "cpu" else GPU_CHUNK_BYTES
    size = max(min(n_heads, 8), min(n_heads, budget // per_head))
    return [slice(i, min(i + size, n_heads)) for i in range(0, n_heads, size)]


def _chunk_tensor(Xflat: np.ndarray, sl: slice, device: torch.device) -> torch.Tensor:
    """(h, N, D) float32 activations of the heads in ``sl`` (from the (N, L*H, D) view)."""
    part = np.ascontiguousarray(Xflat[:, sl].transpose(1, 0, 2), dtype=np.float32)
    return torch.from_numpy(part).to(device)


# ---- metrics --------------------------------------------------------------------------------------------
def _fold_metrics(margins: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, n_folds: int) -> torch.Tensor:
    """(h, 4) mean over folds of validation accuracy, precision, recall, F1 (zero_division=0).

    ``margins`` (h, N, F) decision values of each fold's probe on every example (fold k's column is used on
    fold k's validation examples)."""
    pred = margins[..., :n_folds] > 0                                   # (h, N, K)
    val = folds[:, None] == torch.arange(n_folds, device=folds.device)[None, :]   # (N, K)
    pos = (y == 1)[:, None]
    tp = (pred & val & pos).sum(1).double()
    fp = (pred & val & ~pos).sum(1).double()
    fn = (~pred & val & pos).sum(1).double()
    n_val = val.sum(0).double()
    acc = (n_val - fp - fn) / n_val

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(b > 0, a / b.clamp_min(1), torch.zeros_like(a))

    per_fold = torch.stack([acc, ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)], -1)
    return per_fold.mean(1)                                            # (h, 4)


def _train_exact(Xflat: np.ndarray, y: np.ndarray, folds: np.ndarray, n_folds: int, C: float,
                 device: torch.device, progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    from tqdm.auto import tqdm

    n, n_heads, dim = Xflat.shape
    weights = torch.from_numpy(_fold_weights(folds, n_folds)).to(device)
    yt = torch.from_numpy(y).to(device)
    ft = torch.from_numpy(folds).to(device)
    params = np.empty((n_heads, dim + 1), dtype=np.float64)
    metrics = np.empty((n_heads, 4), dtype=np.float64)
    stats = {"iterations": 0, "evaluations": 0, "unconverged": 0}
    chunks = _head_chunks(n_heads, n, dim, device, EXACT_CHUNK_BYTES)
    with tqdm(total=n_heads, desc=f"exact probes ({n_folds} folds + all)", unit="head", disable=not progress) as bar:
        for sl in chunks:
            Xc = _chunk_tensor(Xflat, sl, device)
            theta, centered, st = solve_logistic(Xc, yt, weights, C)
            c32 = centered.float()   # predictions in the activations' precision, as scikit-learn's on float32 input
            margins = torch.bmm(Xc, c32[..., :-1].transpose(1, 2)).add_(c32[..., -1][:, None, :])
            metrics[sl] = _fold_metrics(margins, yt, ft, n_folds).cpu().numpy()
            params[sl] = theta[:, -1].cpu().numpy()
            stats["iterations"] = max(stats["iterations"], st["iterations"])
            stats["evaluations"] += st["evaluations"]
            stats["unconverged"] += st["unconverged"]
            bar.update(sl.stop - sl.start)
    if stats["unconverged"]:
        warnings.warn(f"exact trainer: {stats['unconverged']} probe(s) did not reach the gradient tolerance "
                      f"{EXACT_TOL:g} in {EXACT_MAX_ITER} iterations", stacklevel=3)
    return params, metrics, {"solver": "preconditioned L-BFGS", "tol": EXACT_TOL, "C": C, **stats}


# ---- published: batched AdamW over all heads -----------------------------------------------------------------
def _epoch_orders(n: int, epochs: int, seed: int) -> torch.Tensor:
    """(epochs, N) example orders, one shuffle per epoch from ``seed`` (shared by every head)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])


def _adamw_run(Xc: torch.Tensor, XcT: torch.Tensor, y: torch.Tensor, train: torch.Tensor, orders: torch.Tensor, *,
               lr: float, weight_decay: float, batch_size: int, W: torch.Tensor, b: torch.Tensor,
               bar: Any = None) -> None:
    """Train probes (heads h, columns F) in place on the rows where ``train`` (N, F) is set.

    Each epoch takes its order of the examples and cuts it into as many equal slices as the largest training
    set needs for batches of at most ``batch_size``; a column's mini-batch is its training rows in the slice,
    so every column sees each of its examples once per epoch (with 467 training examples of 584, one batch:
    full-batch steps). Mean binary cross-entropy per column; AdamW (betas 0.9/0.999, eps 1e-8, decoupled
    weight decay) updating exactly as ``torch.optim.AdamW``."""
    n_batches = max(1, math.ceil(int(train.sum(0).max()) / batch_size))
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    state = [(W, torch.zeros_like(W), torch.zeros_like(W)), (b, torch.zeros_like(b), torch.zeros_like(b))]
    yf, trainf = y.float(), train.float()
    step = 0
    for order in orders:
        for rows in (torch.tensor_split(order, n_batches) if n_batches > 1 else (None,)):
            Xb = Xc if rows is None else Xc.index_select(1, rows)           # (h, B, D)
            XbT = XcT if rows is None else Xb.transpose(1, 2).contiguous()  # (h, D, B)
            yb = yf if rows is None else yf[rows]
            wb = trainf if rows is None else trainf[rows]                   # (B, F)
            count = wb.sum(0)
            if bool((count == 0).any()):
                continue   # a slice without training rows for some column (only with tiny data)
            step += 1
            z = torch.bmm(W, XbT).add_(b[..., None])                         # (h, F, B)
            r = torch.sigmoid(z).sub_(yb).mul_((wb / count).T)               # d(mean BCE)/dz
            grads = (torch.bmm(r, Xb), r.sum(-1))
            for (p, m, v), g in zip(state, grads):
                p.mul_(1 - lr * weight_decay)
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        if bar is not None:
            bar.update(1)


def _train_published(Xflat: np.ndarray, y: np.ndarray, folds: np.ndarray, n_folds: int, *, epochs: int,
                     lr: float, weight_decay: float, batch_size: int, seed: int, device: torch.device,
                     progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """All heads as one batched program (on the CPU in chunks of heads that fit the cache: heads are
    independent and share the shuffles, so chunking changes nothing but speed)."""
    from tqdm.auto import tqdm

    n, n_heads, dim = Xflat.shape
    yt = torch.from_numpy(y).to(device)
    ft = torch.from_numpy(folds).to(device)
    train = torch.from_numpy(_fold_weights(folds, n_folds)).to(device)
    orders = [_epoch_orders(n, epochs, seed).to(device), _epoch_orders(n, epochs, seed + 1).to(device)]
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)    # nn.Linear's default initialization
    W0 = (torch.rand(n_heads, n_folds + 1, dim, generator=generator, dtype=torch.float32) * 2 - 1) * bound
    b0 = (torch.rand(n_heads, n_folds + 1, generator=generator, dtype=torch.float32) * 2 - 1) * bound
    params = np.empty((n_heads, dim + 1), dtype=np.float64)
    metrics = np.empty((n_heads, 4), dtype=np.float64)
    settings = dict(lr=lr, weight_decay=weight_decay, batch_size=batch_size)
    chunks = _head_chunks(n_heads, n, dim, device, PUBLISHED_CHUNK_BYTES)
    desc = f"published probes ({n_folds} folds, then all" + (f"; {len(chunks)} chunks of heads)" if len(chunks) > 1 else ")")
    with tqdm(total=2 * epochs * len(chunks), desc=desc, unit="epoch", disable=not progress) as bar:
        for sl in chunks:
            Xc = _chunk_tensor(Xflat, sl, device)
            XcT = Xc.transpose(1, 2).contiguous()
            Wf, bf = W0[sl, :n_folds].to(device).contiguous(), b0[sl, :n_folds].to(device).contiguous()
            _adamw_run(Xc, XcT, yt, train[:, :n_folds], orders[0], W=Wf, b=bf, bar=bar, **settings)
            Wa, ba = W0[sl, n_folds:].to(device).contiguous(), b0[sl, n_folds:].to(device).contiguous()
            _adamw_run(Xc, XcT, yt, train[:, n_folds:], orders[1], W=Wa, b=ba, bar=bar, **settings)
            margins = (torch.bmm(Wf, XcT) + bf[..., None]).transpose(1, 2)   # (h, N, F)
            metrics[sl] = _fold_metrics(margins, yt, ft, n_folds).cpu().numpy()
            params[sl] = torch.cat([Wa[:, 0], ba], -1).double().cpu().numpy()
    info = {"optimizer": "AdamW", "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size}
    return params, metrics, info


# ---- paper: the published trainer, detail for detail ---------------------------------------------------------
def _paper_run(Xc: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, *, epochs: int, lr: float, weight_decay: float,
               batch_size: int, heads_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probes of the heads in ``Xc`` (h, N, D) trained on ``rows`` (in that order) from zero; returns (W, b).

    Each epoch walks ``rows`` in order in batches of ``batch_size``; the loss is the mean BCE over the batch and
    *all* ``heads_total`` heads of the model (the published loss is one mean over (B, L, H)), so each head's
    gradient is divided by B * heads_total; torch's AdamW updates W and b."""
    h, _, dim = Xc.shape
    W = torch.zeros(h, dim, dtype=torch.float32, device=Xc.device, requires_grad=True)
    b = torch.zeros(h, dtype=torch.float32, device=Xc.device, requires_grad=True)
    optimizer = torch.optim.AdamW([W, b], lr=lr, weight_decay=weight_decay)
    batches = [rows[i:i + batch_size] for i in range(0, rows.numel(), batch_size)]
    inputs = [(Xc.index_select(1, r), y[r].float()) for r in batches]
    with torch.enable_grad():
        for _ in range(epochs):
            for Xb, yb in inputs:
                optimizer.zero_grad(set_to_none=True)
                logits = torch.einsum("hbd,hd->hb", Xb, W) + b[:, None]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, yb.expand_as(logits), reduction="sum") / (yb.numel() * heads_total)
                loss.backward()
                optimizer.step()
    return W.detach(), b.detach()


def _train_paper(Xflat: np.ndarray, y: np.ndarray, folds: np.ndarray, n_folds: int, *, epochs: int, lr: float,
                 weight_decay: float, batch_size: int, device: torch.device,
                 progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fold by fold, as published (a fold's training indices in increasing order), then one probe on all."""
    from tqdm.auto import tqdm

    n, n_heads, dim = Xflat.shape
    yt = torch.from_numpy(y).to(device)
    ft = torch.from_numpy(folds).to(device)
    params = np.empty((n_heads, dim + 1), dtype=np.float64)
    metrics = np.empty((n_heads, 4), dtype=np.float64)
    settings = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, heads_total=n_heads)
    chunks = _head_chunks(n_heads, n, dim, device, PUBLISHED_CHUNK_BYTES)
    with tqdm(total=len(chunks) * (n_folds + 1), desc=f"paper probes ({n_folds} folds, then all)", unit="fit",
              disable=not progress) as bar:
        for sl in chunks:
            Xc = _chunk_tensor(Xflat, sl, device)
            margins = torch.empty(Xc.shape[0], n, n_folds, dtype=torch.float32, device=device)
            for k in range(n_folds):
                rows = torch.nonzero(ft != k).squeeze(1)
                W, b = _paper_run(Xc, yt, rows, **settings)
                margins[..., k] = torch.einsum("hnd,hd->hn", Xc, W) + b[:, None]
                bar.update(1)
            metrics[sl] = _fold_metrics(margins, yt, ft, n_folds).cpu().numpy()
            W, b = _paper_run(Xc, yt, torch.arange(n, device=device), **settings)
            params[sl] = torch.cat([W, b[:, None]], -1).double().cpu().numpy()
            bar.update(1)
    info = {"optimizer": "AdamW", "init": "zeros", "batches": "in order", "loss": "mean over batch, layers and heads",
            "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size}
    return params, metrics, info


# ---- public entry point --------------------------------------------------------------------------------------
def train_probes(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, *, n_folds: int = 5, seed: int = 0,
                 trainer: str = "exact", epochs: int = 200, lr: float = 1e-2, weight_decay: float = 1e-3,
                 batch_size: int = 512, C: float = 1.0, device: str | None = None, n_jobs: int | None = None,
                 folds: np.ndarray | None = None, fold_rule: str = "grouped", progress: bool = True) -> ProbeResult:
    """Cross-validated logistic-regression probes, one per (layer, head).

    X: (N, L, H, D) float16/float32 activations; y: (N,) 0/1 (1 = truthful); groups: (N,) question ids, all
    examples of a group kept on one side of every split (None: each example its own group). ``folds``
    overrides the fold assignment; else ``fold_rule`` makes it: ``grouped`` (ours: grouped, stratified, from
    ``seed``) or ``kfold`` (the published ``KFold(n_folds, shuffle=True, random_state=seed)`` over the examples,
    groups ignored). ``trainer`` is ``exact`` (uses ``C``), ``paper`` or ``published`` (use ``epochs``, ``lr``,
    ``weight_decay``, ``batch_size``; ``published`` also ``seed``). ``device``: None = cuda if available, else cpu.
    ``n_jobs``: CPU threads (default 1).
    """
    if trainer not in TRAINERS:
        raise ProbeInputError(f"trainer: expected one of {', '.join(TRAINERS)}, found {trainer!r}")
    X, y, groups = _check_inputs(X, y, groups)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ProbeInputError(f"n_folds: expected an integer >= 2, found {n_folds!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ProbeInputError(f"{name}: expected an integer >= 1, found {value!r}")
    for name, value in (("lr", lr), ("C", C)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ProbeInputError(f"{name}: expected a positive number, found {value!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ProbeInputError(f"weight_decay: expected a number >= 0, found {weight_decay!r}")
    if fold_rule not in FOLD_RULES:
        raise ProbeInputError(f"fold_rule: expected one of {', '.join(FOLD_RULES)}, found {fold_rule!r}")
    if folds is None and fold_rule == "kfold":
        try:
            folds = published_kfold(y, n_folds=n_folds, seed=seed)
        except FoldError as exc:
            raise ProbeInputError(str(exc)) from None
    elif folds is None:
        try:
            folds = grouped_stratified_folds(y, groups, n_folds=n_folds, seed=seed)
        except FoldError as exc:
            raise ProbeInputError(str(exc)) from None
    else:
        folds = _check_folds(folds, y, groups, n_folds)
    for start in range(0, X.shape[0], 64):   # in blocks: no full-size temporary
        block = X[start : start + 64]
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ProbeInputError(f"activations: expected finite values, found NaN/inf (first at example "
                                  f"{start + bad[0]}, layer {bad[1]}, head {bad[2]})")
    dev = _resolve_device(device)
    n, num_layers, num_heads, dim = X.shape
    Xflat = X.reshape(n, num_layers * num_heads, dim)
    with _torch_threads(n_jobs, dev):
        if trainer == "exact":
            params, metrics, info = _train_exact(Xflat, y, folds, n_folds, float(C), dev, progress)
        elif trainer == "paper":
            params, metrics, info = _train_paper(Xflat, y, folds, n_folds, epochs=int(epochs), lr=float(lr),
                                                 weight_decay=float(weight_decay), batch_size=int(batch_size),
                                                 device=dev, progress=progress)
        else:
            params, metrics, info = _train_published(Xflat, y, folds, n_folds, epochs=int(epochs), lr=float(lr),
                                                     weight_decay=float(weight_decay), batch_size=int(batch_size),
                                                     seed=int(seed), device=dev, progress=progress)
    shape = (num_layers, num_heads)
    metrics = metrics.reshape(*shape, 4)
    return ProbeResult(
        accuracy=metrics[..., 0], precision=metrics[..., 1], recall=metrics[..., 2], f1=metrics[..., 3],
        weights=params[:, :dim].reshape(*shape, dim).astype(np.float32),
        bias=params[:, dim].reshape(shape).astype(np.float32),
        folds=folds, trainer=trainer, info={"device": dev.type, "fold_rule": fold_rule, **info},
    )


__all__ = ["FOLD_RULES", "ProbeInputError", "ProbeResult", "TRAINERS", "train_probes"]
