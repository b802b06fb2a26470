"""Probe trainers and grouped folds: planted signal is found, folds keep groups together, ``exact`` equals a
plain scikit-learn loop, the two trainers agree, same seed gives the same result, bad input fails clearly."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import threadpoolctl
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score
from truthprobe_eval.probing.folds import FoldError, grouped_stratified_folds
from truthprobe_eval.probing.trainers import ProbeInputError, ProbeResult, train_probes

from truthprobe_eval.scores import TruthScores

SIGNAL_HEADS = {(3, 1), (5, 0)}
FAST = dict(epochs=60, progress=False)   # the published trainer with fewer epochs, where its speed matters


def planted(n_pairs: int = 100, layers: int = 6, heads: int = 3, dim: int = 8, shift: float = 6.0, seed: int = 0):
    """Pairs of examples (label 1, label 0) per question; a label-dependent mean shift only in SIGNAL_HEADS."""
    rng = np.random.default_rng(seed)
    n = 2 * n_pairs
    y = np.tile([1, 0], n_pairs)
    groups = np.repeat(np.arange(n_pairs), 2)
    question = rng.standard_normal((n_pairs, layers, heads, dim))        # shared by both answers of a question
    X = question[groups] + rng.standard_normal((n, layers, heads, dim))
    for layer, head in SIGNAL_HEADS:
        direction = rng.standard_normal(dim)
        X[:, layer, head] += np.outer(y - 0.5, direction / np.linalg.norm(direction)) * shift
    return X.astype(np.float32), y, groups


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def exact_result(data) -> ProbeResult:
    X, y, groups = data
    return train_probes(X, y, groups, progress=False)


@pytest.fixture(scope="module")
def published_result(data) -> ProbeResult:
    X, y, groups = data
    return train_probes(X, y, groups, trainer="published", device="cpu", progress=False)


def top_heads(acc: np.ndarray, k: int) -> set[tuple[int, int]]:
    order = np.argsort(-acc.ravel(), kind="stable")[:k]
    return {divmod(int(i), acc.shape[1]) for i in order}


# ---- planted signal -------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["exact", "published"])
def test_planted_heads_are_found(which, exact_result, published_result):
    result = exact_result if which == "exact" else published_result
    acc = result.accuracy
    assert acc.shape == (6, 3)
    assert top_heads(acc, 2) == SIGNAL_HEADS
    signal = np.array([acc[h] for h in SIGNAL_HEADS])
    noise = np.array([acc[l, h] for l in range(6) for h in range(3) if (l, h) not in SIGNAL_HEADS])
    assert signal.min() >= 0.95, signal
    assert noise.max() <= 0.65 and abs(noise.mean() - 0.5) < 0.06, noise
    # the other metrics and the all-examples probes have their documented shapes and ranges
    for name, values in result.metrics.items():
        assert values.shape == (6, 3) and ((0 <= values) & (values <= 1)).all(), name
    assert result.weights.shape == (6, 3, 8) and result.weights.dtype == np.float32
    assert result.bias.shape == (6, 3)
    assert result.trainer == which


def test_trainers_agree_on_planted_data(exact_result, published_result):
    np.testing.assert_array_equal(exact_result.folds, published_result.folds)
    assert np.abs(exact_result.accuracy - published_result.accuracy).mean() < 0.02
    # the all-examples probes of a signal head point the same way
    for head in SIGNAL_HEADS:
        a, b = exact_result.weights[head], published_result.weights[head]
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9


# ---- exact equals scikit-learn -----------------------------------------------------------------------------
def sklearn_loop(X, y, folds, **lr_kwargs):
    """The plain per-head loop: LogisticRegression per fold, fold-mean metrics, and a probe on all examples."""
    n, layers, heads, dim = X.shape
    out = {m: np.zeros((layers, heads)) for m in ("accuracy", "precision", "recall", "f1")}
    weights, bias = np.zeros((layers, heads, dim)), np.zeros((layers, heads))
    for l in range(layers):
        for h in range(heads):
            per_fold = []
            for k in range(folds.max() + 1):
                tr, va = folds != k, folds == k
                clf = LogisticRegression(**lr_kwargs).fit(X[tr, l, h], y[tr])
                pred = clf.predict(X[va, l, h])
                per_fold.append([np.mean(pred == y[va]), precision_score(y[va], pred, zero_division=0),
                                 recall_score(y[va], pred, zero_division=0), f1_score(y[va], pred, zero_division=0)])
            for name, value in zip(out, np.mean(per_fold, axis=0)):
                out[name][l, h] = value
            clf = LogisticRegression(**lr_kwargs).fit(X[:, l, h], y)
            weights[l, h], bias[l, h] = clf.coef_[0], clf.intercept_[0]
    return out, weights, bias


def test_exact_equals_sklearn_loop_on_same_folds(data, exact_result):
    X, y, _ = data
    X, expected = X[:, 3:], {name: values[3:] for name, values in exact_result.metrics.items()}  # both signal heads
    with warnings.catch_warnings(), threadpoolctl.threadpool_limits(1):   # one thread: no OpenMP spinning
        warnings.simplefilter("ignore")   # scikit-learn's convergence chatter at tight tolerance
        tight, w_tight, b_tight = sklearn_loop(X.astype(np.float64), y, exact_result.folds, tol=1e-8, max_iter=10_000)
        default, _, _ = sklearn_loop(X, y, exact_result.folds)
    for name, values in expected.items():
        np.testing.assert_allclose(values, tight[name], atol=1e-12, err_msg=name)
    np.testing.assert_allclose(exact_result.weights[3:], w_tight, atol=2e-4)
    np.testing.assert_allclose(exact_result.bias[3:], b_tight, atol=2e-4)
    # scikit-learn's defaults stop early (tol 1e-4): a borderline validation example can land on the other
    # side; here never more than one example per head
    diff = np.abs(expected["accuracy"] - default["accuracy"])
    assert diff.max() <= 1 / (len(y) // 5) / 5 + 1e-12


def test_exact_with_other_C_and_float16_input(data):
    X, y, groups = data
    r = train_probes(X[:, 2:4].astype(np.float16), y, groups, C=0.05, progress=False)
    Xh = X[:, 3, 1].astype(np.float16).astype(np.float32)
    with warnings.catch_warnings(), threadpoolctl.threadpool_limits(1):
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000).fit(Xh.astype(np.float64), y)
    np.testing.assert_allclose(r.weights[1, 1], clf.coef_[0], atol=2e-4)
    assert r.accuracy[1, 1] > 0.9


def test_published_update_is_torch_adamw():
    """The batched program's hand-written AdamW step equals torch.optim.AdamW on mean BCE-with-logits."""
    import torch
    from truthprobe_eval.probing.trainers import _adamw_run

    gen = torch.Generator().manual_seed(0)
    Xc = torch.randn(3, 40, 5, generator=gen)                     # 3 heads, 40 examples, head_dim 5
    y = (torch.rand(40, generator=gen) > 0.5).long()
    train = torch.ones(40, 1, dtype=torch.bool)
    W0, b0 = torch.randn(3, 1, 5, generator=gen), torch.randn(3, 1, generator=gen)
    W, b = W0.clone(), b0.clone()
    orders = torch.stack([torch.randperm(40, generator=gen) for _ in range(7)])
    _adamw_run(Xc, Xc.transpose(1, 2).contiguous(), y, train, orders, lr=1e-2, weight_decay=1e-3, batch_size=16, W=W, b=b)

    n_batches = 3                                                  # ceil(40 / 16): slices of 14, 13, 13
    with torch.enable_grad():       # importing vlmeval.vlm (an earlier test) turns grad off process-wide
        _reference_adamw(Xc, y, W0, b0, orders, n_batches, W, b)


def _reference_adamw(Xc, y, W0, b0, orders, n_batches, W, b):
    import torch

    for h in range(3):
        w = torch.nn.Parameter(W0[h, 0].clone())
        c = torch.nn.Parameter(b0[h, 0].clone())
        opt = torch.optim.AdamW([w, c], lr=1e-2, weight_decay=1e-3)
        for order in orders:
            for rows in torch.tensor_split(order, n_batches):
                opt.zero_grad()
                z = Xc[h, rows] @ w + c
                torch.nn.functional.binary_cross_entropy_with_logits(z, y[rows].float()).backward()
                opt.step()
        torch.testing.assert_close(W[h, 0], w.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b[h, 0], c.detach(), rtol=1e-5, atol=1e-6)


# ---- determinism, folds argument, score files ----------------------------------------------------------
@pytest.mark.parametrize("trainer", ["exact", "published"])
def test_same_seed_same_result(data, trainer):
    X, y, groups = data
    small = X[:, :2]
    a = train_probes(small, y, groups, trainer=trainer, seed=3, device="cpu", **FAST)
    b = train_probes(small, y, groups, trainer=trainer, seed=3, device="cpu", **FAST)
    c = train_probes(small, y, groups, trainer=trainer, seed=4, device="cpu", **FAST)
    for name in ("accuracy", "precision", "recall", "f1", "weights", "bias", "folds"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.folds, c.folds)
    if trainer == "published":
        assert not np.array_equal(a.weights, c.weights)   # other initialization and shuffles


def test_given_folds_are_used(data):
    X, y, groups = data
    folds = np.arange(len(y)) // 2 % 4                    # pairs together, 4 folds
    r = train_probes(X[:, :1], y, groups, n_folds=4, folds=folds, progress=False)
    np.testing.assert_array_equal(r.folds, folds)
    with pytest.warns(UserWarning, match="span several folds"):
        train_probes(X[:, :1], y, groups, n_folds=4, folds=np.arange(len(y)) % 4, progress=False)


def test_to_scores_round_trip(tmp_path, exact_result):
    scores = exact_result.to_scores({"model": "planted", "n_samples": 200})
    assert isinstance(scores, TruthScores)
    np.testing.assert_array_equal(scores.values, exact_result.accuracy)
    assert set(scores.metrics) == {"accuracy", "precision", "recall", "f1"}
    assert scores.meta["trainer"] == "exact" and scores.meta["folds"] == 5 and scores.meta["model"] == "planted"
    loaded = TruthScores.load(scores.save(tmp_path / "s.json"))
    np.testing.assert_allclose(loaded.values, exact_result.accuracy)
    np.testing.assert_allclose(loaded.probe_weights, exact_result.weights)
    np.testing.assert_allclose(loaded.probe_bias, exact_result.bias)
    assert {(l, h) for l, h, _ in loaded.top_k(2)} == SIGNAL_HEADS


def test_progress_bars_can_be_switched_off(data, capsys):
    X, y, groups = data
    train_probes(X[:, :1], y, groups, progress=False)
    assert capsys.readouterr().err == ""
    train_probes(X[:, :1], y, groups, trainer="published", epochs=3, device="cpu", progress=True)
    assert "published probes" in capsys.readouterr().err


# ---- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("3-D", "expected a 4-D array"),
    ("labels 0/1/2", "expected only 0 (hallucinated) and 1 (truthful), found 2"),
    ("length mismatch", "expected 200 labels"),
    ("one class", "expected both classes, found only label 1"),
    ("few groups", "needs at least 5 groups"),
    ("groups length", "groups: expected one group id per example"),
    ("trainer", "trainer: expected one of exact, paper, published"),
    ("folds", "n_folds: expected an integer >= 2"),
    ("nan", "expected finite values"),
    ("C", "C: expected a positive number"),
])
def test_bad_input_errors(data, case, message):
    X, y, groups = data
    kwargs = dict(progress=False)
    if case == "3-D":
        X = X[:, 0]
    elif case == "labels 0/1/2":
        y = y.copy()
        y[0] = 2
    elif case == "length mismatch":
        y = y[:-1]
    elif case == "one class":
        y = np.ones_like(y)
    elif case == "few groups":
        groups = np.arange(len(y)) % 3
    elif case == "groups length":
        groups = groups[:10]
    elif case == "trainer":
        kwargs["trainer"] = "sgd"
    elif case == "folds":
        kwargs["n_folds"] = 1
    elif case == "nan":
        X = X.copy()
        X[7, 2, 1, 0] = np.nan
    elif case == "C":
        kwargs["C"] = 0
    with pytest.raises(ProbeInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_probes(X, y, groups, **kwargs)


# ---- grouped stratified folds -------------------------------------------------------------------------
@st.composite
def labelled_groups(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=40))
    groups = np.repeat(draw(st.permutations(list(range(len(sizes))))), sizes)   # ids in any order
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=len(groups), max_size=len(groups))))
    n_folds = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    return y, groups, n_folds, seed


@settings(max_examples=200, deadline=None)
@given(labelled_groups())
def test_folds_keep_groups_together_and_are_stratified(case):
    y, groups, n_folds, seed = case
    try:
        folds = grouped_stratified_folds(y, groups, n_folds, seed)
    except FoldError as exc:   # only for data that cannot be split: too few groups, or a class missing somewhere
        n_groups = np.unique(groups).size
        assert n_groups < n_folds or np.unique(y).size < 2 or "training part" in str(exc)
        return
    assert folds.shape == y.shape and folds.min() == 0 and folds.max() == n_folds - 1
    assert np.bincount(folds, minlength=n_folds).min() > 0                          # no empty fold
    for g in np.unique(groups):
        assert np.unique(folds[groups == g]).size == 1                               # a group stays whole
    for label in (0, 1):
        counts = np.bincount(folds[y == label], minlength=n_folds)
        largest = np.bincount(groups[y == label]).max()
        assert counts.max() - counts.min() <= largest + 1                            # stratified
    for k in range(n_folds):
        assert np.unique(y[folds != k]).size == 2                                    # trainable everywhere
    np.testing.assert_array_equal(folds, grouped_stratified_folds(y, groups, n_folds, seed))   # deterministic
    order = np.random.default_rng(seed).permutation(len(y))                          # example order is irrelevant
    np.testing.assert_array_equal(folds[order], grouped_stratified_folds(y[order], groups[order], n_folds, seed))


@settings(max_examples=50, deadline=None)
@given(st.integers(5, 300), st.integers(2, 10), st.integers(0, 10**6))
def test_pair_folds_are_exactly_balanced(n_pairs, n_folds, seed):
    """Each question a (truthful, hallucinated) pair: every fold gets the same number of pairs, +-1."""
    if n_pairs < n_folds:
        with pytest.raises(FoldError, match=f"needs at least {n_folds} groups"):
            grouped_stratified_folds(np.tile([1, 0], n_pairs), np.repeat(np.arange(n_pairs), 2), n_folds, seed)
        return
    folds = grouped_stratified_folds(np.tile([1, 0], n_pairs), np.repeat(np.arange(n_pairs), 2), n_folds, seed)
    pairs = np.bincount(folds[::2], minlength=n_folds)
    assert pairs.max() - pairs.min() <= 1
    assert (folds[::2] == folds[1::2]).all()


def test_fold_errors_are_clear():
    with pytest.raises(FoldError, match="expected both classes, found only label 0"):
        grouped_stratified_folds(np.zeros(10, int), np.arange(10))
    with pytest.raises(FoldError, match="needs at least 5 groups .* found 3"):
        grouped_stratified_folds(np.tile([0, 1], 6), np.arange(12) % 3)
    with pytest.raises(FoldError, match="groups: expected a 1-D array with one group id per example"):
        grouped_stratified_folds(np.tile([0, 1], 6), np.arange(11))
    with pytest.raises(FoldError, match="n_folds: expected an integer >= 2"):
        grouped_stratified_folds(np.tile([0, 1], 6), np.arange(12), n_folds=1)
    with pytest.raises(FoldError, match="expected only 0 .* found 0.5"):
        grouped_stratified_folds(np.array([0, 1, 0.5, 1, 0, 1]), np.arange(6), n_folds=2)


@pytest.mark.parametrize("n_folds", [2, 4, 5])
def test_folds_balance_as_well_as_sklearns_stratified_group_kfold(n_folds, shared_dir):
    """On the real TruthfulQA groups (2 to 18 answers a question), our folds keep every group whole and balance label
    shares and fold sizes at least as well as scikit-learn's StratifiedGroupKFold (kept: see probing/folds.py)."""
    from sklearn.model_selection import StratifiedGroupKFold
    from truthprobe_eval.probing.data import labels_and_groups, truthfulqa_examples

    csv = shared_dir / "data/truthfulqa/TruthfulQA.csv"
    y, groups = labels_and_groups(truthfulqa_examples(csv, range(400)))

    def spread(folds):
        sizes = np.bincount(folds, minlength=n_folds)
        share = np.bincount(folds, weights=y, minlength=n_folds) / sizes
        return float(np.abs(share - y.mean()).max()), int(sizes.max() - sizes.min())

    for seed in (0, 1, 2):
        ours = grouped_stratified_folds(y, groups, n_folds=n_folds, seed=seed)
        assert all(len(set(ours[groups == g])) == 1 for g in np.unique(groups))
        theirs = np.empty_like(ours)
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            theirs[test] = k
        (our_share, our_sizes), (their_share, their_sizes) = spread(ours), spread(theirs)
        assert our_share <= max(their_share, 0.005) and our_sizes <= max(their_sizes, 2)
