"""The ``paper`` preset of TruthProbe, each published detail pinned (written from the descriptions of the published
code in issue 19 and probing/truthprobe_preset.py, not from its code): the trainer (zero init, in-order batches of
512, one loss mean over batch, layers and heads), KFold(5, shuffle, 42) over the samples, one drawn answer per row,
the reply regex, and the paper's random and inverse gates."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from tiny_models import tiny_model
from truthprobe_eval.datasets import draw_hallucinated, load_halueval
from truthprobe_eval.errors import GateConfigError
from truthprobe_eval import bake
from truthprobe_eval.gating import gate, gate_values
from truthprobe_eval.probing.data import example_record, halueval_examples
from truthprobe_eval.probing.folds import published_kfold
from truthprobe_eval.probing.trainers import train_probes
from truthprobe_eval.probing.truthprobe_preset import PRESETS, truthprobe_preset
from truthprobe_eval.tasks.halueval.truthprobe_protocol import parse_reply


def _reference_paper_probe(X: np.ndarray, y: np.ndarray, train: np.ndarray, epochs: int, batch: int,
                           per_head_mean: bool = False):
    """The trainer as the issue describes it, written plainly: W (L, H, D) and B (L, H) at zero, AdamW(lr 1e-2,
    wd 1e-3), batches of ``batch`` taken in order from ``train``, BCE-with-logits averaged over (batch, L, H)."""
    N, L, H, D = X.shape
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    W = torch.zeros(L, H, D, requires_grad=True)
    B = torch.zeros(L, H, requires_grad=True)
    opt = torch.optim.AdamW([W, B], lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        for start in range(0, len(train), batch):
            idx = torch.as_tensor(train[start:start + batch])
            logits = (Xt[idx] * W).sum(-1) + B                     # (b, L, H)
            target = yt[idx][:, None, None].expand_as(logits)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            if per_head_mean:   # a mean per head, summed over heads: what a per-head trainer would optimize
                loss = loss * L * H
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach().numpy(), B.detach().numpy()


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(3)
    N, L, H, D = 40, 2, 3, 4
    y = rng.integers(0, 2, N)
    X = rng.normal(size=(N, L, H, D)) + (y - 0.5)[:, None, None, None] * rng.uniform(0, 2, size=(L, H, D))
    return X.astype(np.float32), y


def test_paper_trainer_equals_the_described_trainer(planted):
    X, y = planted
    folds = published_kfold(y, 5, 42)
    got = train_probes(X, y, trainer="paper", fold_rule="kfold", seed=42, epochs=30, progress=False)
    np.testing.assert_array_equal(got.folds, folds)
    accs = []
    for k in range(5):
        train, val = np.flatnonzero(folds != k), np.flatnonzero(folds == k)   # KFold's indices, increasing
        W, B = _reference_paper_probe(X, y, train, epochs=30, batch=512)
        pred = ((X[val] * W).sum(-1) + B) > 0                                  # sigmoid > 0.5
        accs.append((pred == y[val][:, None, None]).mean(0))
    np.testing.assert_allclose(got.accuracy, np.mean(accs, 0), atol=1e-12)
    W, B = _reference_paper_probe(X, y, np.arange(len(y)), epochs=30, batch=512)
    np.testing.assert_allclose(got.weights, W, atol=2e-5)
    np.testing.assert_allclose(got.bias, B, atol=2e-5)
    assert got.info["init"] == "zeros" and got.info["batches"] == "in order"


def test_paper_trainer_batches_in_order_across_several_batches(planted):
    """With batches smaller than the training set, the batches are consecutive slices in index order."""
    X, y = planted
    folds = published_kfold(y, 5, 42)
    got = train_probes(X, y, trainer="paper", folds=folds, epochs=5, batch_size=7, progress=False)
    W, B = _reference_paper_probe(X, y, np.arange(len(y)), epochs=5, batch=7)
    np.testing.assert_allclose(got.weights, W, atol=2e-5)
    shuffled = _reference_paper_probe(X, y, np.random.default_rng(0).permutation(len(y)), epochs=5, batch=7)[0]
    assert not np.allclose(got.weights, shuffled, atol=1e-4)  # the order matters, and ours is the in-order one


def test_joint_loss_mean_is_not_a_per_head_mean(planted):
    """The published loss averages over layers and heads too: each head's gradient is 1/(L*H) of a per-head mean's,
    which AdamW's eps (1e-8) makes visible once gradients are small; the trainer follows the joint mean."""
    X, y = planted
    X = X * 1e-4   # tiny gradients, where eps matters
    got = train_probes(X, y, trainer="paper", fold_rule="kfold", seed=42, epochs=3, progress=False)
    W, _ = _reference_paper_probe(X, y, np.arange(len(y)), epochs=3, batch=512)
    np.testing.assert_allclose(got.weights, W, rtol=1e-4, atol=1e-9)
    per_head, _ = _reference_paper_probe(X, y, np.arange(len(y)), epochs=3, batch=512, per_head_mean=True)
    assert np.abs(per_head - W).max() > 100 * np.abs(got.weights - W).max()


@pytest.mark.parametrize("n", [292, 37])
def test_kfold_indices_equal_scikit_learn(n):
    y = np.arange(n) % 2
    folds = published_kfold(y, 5, 42)
    for k, (train, val) in enumerate(KFold(n_splits=5, shuffle=True, random_state=42).split(np.zeros(n))):
        np.testing.assert_array_equal(np.flatnonzero(folds == k), val)
        np.testing.assert_array_equal(np.flatnonzero(folds != k), train)


def test_paper_probing_set_is_one_drawn_answer_per_row_stripped():
    examples = halueval_examples(None, 0, 292, answers="drawn", answer_seed=42, strip=True)
    rows = load_halueval(None, 0, 292)
    hallucinated = draw_hallucinated(42, np.arange(292))
    assert len(examples) == 292 and [e.group for e in examples] == list(range(292))
    for e, row, h in zip(examples, rows, hallucinated):
        assert e.label == (0 if h else 1)
        assert e.answer == (row["hallucinated_answer"] if h else row["right_answer"]).strip()
        assert e.context == row["knowledge"].strip() and e.question == row["question"].strip()
    record = example_record(examples)
    assert record[:3] == [[i, "hallucinated" if hallucinated[i] else "right"] for i in range(3)]
    assert 0.4 < hallucinated.mean() < 0.6
    both = halueval_examples(None, 0, 3)
    assert example_record(both) == [[0, "right"], [0, "hallucinated"], [1, "right"], [1, "hallucinated"],
                                    [2, "right"], [2, "hallucinated"]]


def test_presets_say_what_they_are():
    paper, ours = truthprobe_preset("paper"), truthprobe_preset("ours")
    assert (paper.trainer, paper.fold_rule, paper.fold_seed, paper.answers, paper.batch_size, paper.parse) == \
        ("paper", "kfold", 42, "drawn", 1, "paper")
    assert (ours.trainer, ours.fold_rule, ours.answers, ours.parse) == ("exact", "grouped", "both", "ours")
    assert set(PRESETS) == {"paper", "ours"}
    with pytest.raises(ValueError, match="preset: expected one of paper, ours, found 'published'"):
        truthprobe_preset("published")


@pytest.mark.parametrize("reply, paper, ours", [
    ("Yes", "yes", "yes"), ("No.", "no", "no"), (" no, because", "no", "no"), ("YES", "yes", "yes"),
    ("Yes!", "yes", None), ("No;", "no", None), ("yes-ish", "yes", None), ("No:", "no", None),
    ("Yesterday", None, None), ("Nope", None, None), ("The answer is yes", None, None), ("", None, None),
    ("\n yes\n", "yes", "yes"),
])
def test_reply_parse_rules(reply, paper, ours):
    assert parse_reply(reply, "paper") == paper
    assert parse_reply(reply, "ours") == ours


def test_paper_inverse_gate_by_hand():
    s = np.array([[0.5, 0.8, 1.0], [0.6, 0.6, 0.9]])
    inv = 1 / (s + 1e-6)
    lo, hi = inv.min(1, keepdims=True), inv.max(1, keepdims=True)
    want = (inv - lo) / (hi - lo + 1e-6)
    for alpha in (0.0, 4.5):   # alpha plays no part
        np.testing.assert_allclose(gate_values(s, alpha, "centered", "paper_inverse"), want)
    assert gate_values(s, 1.0, kind="paper_inverse")[0].tolist()[0] == pytest.approx(1.0, abs=1e-5)


def test_paper_random_gate_is_redrawn_every_call_seeded_and_ignores_alpha():
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    scores = np.zeros((model.config.num_hidden_layers, model.config.num_attention_heads))
    with torch.no_grad():
        with gate(model, scores, alpha=4.5, kind="paper_random", seed=3):
            a1, a2 = model(ids).logits, model(ids).logits
        with gate(model, scores, alpha=0.1, kind="paper_random", seed=3):
            b1 = model(ids).logits
        with gate(model, scores, alpha=4.5, kind="paper_random", seed=4):
            c1 = model(ids).logits
        plain = model(ids).logits
    assert not torch.allclose(a1, a2)          # a new draw at the next call
    torch.testing.assert_close(a1, b1)         # same seed, same draws; alpha unused
    assert not torch.allclose(a1, c1)          # another seed, other draws
    assert not torch.allclose(a1, plain)


def test_paper_random_gate_scales_each_head_chunk_by_one_plus_uniform():
    """Layer 0's o_proj output, read before and after the gate's hook: each head's chunk is scaled by 1 + u, u the
    seeded generator's first ``torch.rand(H) * 2 - 1``; the next call's layer-0 scale is another draw."""
    model = tiny_model("llama", dtype=torch.float64)
    H = model.config.num_attention_heads
    proj = model.model.layers[0].self_attn.o_proj
    before, after = [], []
    handles = [proj.register_forward_hook(lambda _m, _a, out: before.append(out.detach().clone()))]
    scores = np.zeros((model.config.num_hidden_layers, H))
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad(), gate(model, scores, alpha=9.0, kind="paper_random", seed=0):
        handles.append(proj.register_forward_hook(lambda _m, _a, out: after.append(out.detach().clone())))
        model(ids)
        model(ids)
    for h in handles:
        h.remove()
    ratio = [(a / b).reshape(*a.shape[:-1], H, -1) for a, b in zip(after, before)]
    generator = torch.Generator().manual_seed(0)
    first = 1 + (torch.rand(H, generator=generator, dtype=torch.float64) * 2 - 1)
    torch.testing.assert_close(ratio[0], first[:, None].expand_as(ratio[0][0, 0])[None, None].expand_as(ratio[0]))
    assert torch.all((ratio[1] >= 0) & (ratio[1] <= 2))
    assert not torch.allclose(ratio[0], ratio[1])


def test_paper_random_gate_cannot_be_baked():
    model = tiny_model("llama")
    scores = np.zeros((model.config.num_hidden_layers, model.config.num_attention_heads))
    with pytest.raises(GateConfigError, match="drawn anew at every forward call"):
        bake(model, scores, kind="paper_random")
