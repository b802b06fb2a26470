"""ITI's two presets: ``paper`` (the published honest_llama pipeline: contiguous halves, an 80/20 holdout ranking
with scikit-learn per head, sigma = unbiased std over the end-q prompts of every question) and ``ours`` (unchanged:
seeded permutation halves, grouped k-fold ranking, sigma = np.std of the training activations)."""
from __future__ import annotations

import csv as csvlib

import numpy as np
import pytest
import torch
from tiny_models import tiny_tokenizer

from truthprobe_eval.directions import ITIDirections, fit_directions
from truthprobe_eval.presets import PRESET_NAMES, PresetError
from truthprobe_eval.probing.iti import (
    ITI_PRESETS,
    PRESETS,
    end_q_examples,
    end_q_prompt,
    fit_iti,
    holdout_probes,
    holdout_split,
    question_halves,
)
from truthprobe_eval.probing.pipeline import extract_with_cache
from truthprobe_eval.probing.prompts import PromptEncoder


# ---- halves ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 10, 813])
def test_paper_halves_are_numpy_array_split(n):
    want = [list(map(int, part)) for part in np.array_split(np.arange(n), 2)]
    assert list(question_halves(n, preset="paper")) == want
    assert question_halves(n, seed=5, preset="paper") == question_halves(n, seed=0, preset="paper")  # no seed
    first, second = question_halves(n, preset="paper")
    assert first + second == list(range(n))  # contiguous, in the data's order


def test_paper_limit_takes_the_first_questions_in_order():
    assert list(question_halves(813, limit=11, preset="paper")) == [list(range(6)), list(range(6, 11))]
    assert question_halves(5, limit=50, preset="paper") == question_halves(5, preset="paper")


@pytest.mark.parametrize("n,seed,limit", [(813, 0, None), (813, 0, 16), (100, 3, None), (9, 1, 7)])
def test_ours_halves_unchanged(n, seed, limit):
    order = np.random.default_rng(seed).permutation(n)
    if limit is not None:
        order = order[:limit]
    cut = len(order) // 2
    want = (sorted(order[:cut].tolist()), sorted(order[cut:].tolist()))
    assert question_halves(n, seed, limit) == want
    assert question_halves(n, seed, limit, preset="ours") == want


def test_presets_object():
    assert PRESETS == PRESET_NAMES == ("paper", "ours") and set(ITI_PRESETS) == set(PRESETS)
    paper, ours = ITI_PRESETS["paper"], ITI_PRESETS["ours"]
    assert (paper.halves, paper.ranking, paper.sigma, paper.sigma_ddof) == ("contiguous", "holdout_sklearn",
                                                                             "gen_end_q_all", 1)
    assert (ours.halves, ours.ranking, ours.sigma, ours.sigma_ddof) == ("permuted", "grouped_kfold", "train_qa", 0)
    assert (paper.val_ratio, paper.holdout_seed, paper.max_iter) == (0.2, 42, 1000) and ours.why
    with pytest.raises(PresetError):
        question_halves(10, preset="published")


# ---- sigma -----------------------------------------------------------------------------------------------
def test_sigma_from_another_set_is_the_unbiased_std():
    # training: one true answer at (2, 0), one false at (0, 0): the mass-mean direction is (1, 0)
    X = np.array([[2.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 1, 2)
    y = np.array([1, 0])
    other = np.array([[1.0, 5.0], [3.0, -2.0], [5.0, 7.0]]).reshape(3, 1, 1, 2)  # projections 1, 3, 5
    made = fit_directions(X, y, np.zeros((1, 1)), sigma_X=other, sigma_ddof=1)
    assert np.allclose(made.directions[0, 0], [1.0, 0.0])
    assert made.sigma[0, 0] == pytest.approx(2.0)  # sqrt(((1-3)^2 + 0 + (5-3)^2) / (3 - 1))
    assert float(torch.std(torch.tensor([1.0, 3.0, 5.0]))) == pytest.approx(2.0)  # torch.std: the same
    r = made.random_directions[0, 0]
    assert made.random_sigma[0, 0] == pytest.approx(np.std(other.reshape(3, 2) @ r, ddof=1))
    plain = fit_directions(X, y, np.zeros((1, 1)))  # default: the training activations, ddof 0
    assert plain.sigma[0, 0] == pytest.approx(1.0)  # projections 2 and 0
    assert np.array_equal(plain.random_directions, made.random_directions)


# ---- the end-q prompt ------------------------------------------------------------------------------------
def _small_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csvlib.writer(fh)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        w.writerows(rows)
    return str(path)


WORDS = ["the image", "a photo", "the picture", "a large dog", "two cats", "a red car", "the white table",
         "a small boat", "three birds", "the green apple", "a blue chair", "the black cat"]


@pytest.fixture
def small_csv(tmp_path):
    """Twelve questions in the tiny tokenizer's vocabulary; three correct and three incorrect answers each."""
    rows = []
    for i, w in enumerate(WORDS):
        correct = "; ".join(f"yes {w} is {c}" for c in ("left", "top", "near"))
        incorrect = "; ".join(f"no {w} is {c}" for c in ("right", "bottom", "behind"))
        rows.append(["Adversarial", "Misc", f"Is {w} in the picture ?", f"yes {w} is left", correct, incorrect, "x"])
    return _small_csv(tmp_path / "tqa.csv", rows)


def test_end_q_prompt_text(small_csv):
    assert end_q_prompt("Why is the sky blue?", "Rayleigh scattering", "Who wrote Hamlet?") == \
        "Q: Why is the sky blue? A: Rayleigh scattering Q: Who wrote Hamlet?"
    examples = end_q_examples(small_csv, seed=42)
    assert len(examples) == 12 * 6 and [e.label for e in examples[:6]] == [1, 1, 1, 0, 0, 0]
    others = np.random.RandomState(42).randint(12, size=12)  # one draw per question, in order
    encoder = PromptEncoder(tiny_tokenizer(), "qa")
    first = examples[0]
    assert encoder.prompt(first) == (f"Q: Is {WORDS[0]} in the picture ? A: yes {WORDS[0]} is left "
                                     f"Q: Is {WORDS[others[0]]} in the picture ?")  # no period added
    for e in examples:
        assert encoder.prompt(e).endswith(f"Q: Is {WORDS[others[e.group]]} in the picture ?")
    subset = end_q_examples(small_csv, rows=[3, 5], seed=0)
    assert {e.group for e in subset} == {3, 5} and all(e.answer.endswith(("Q: Is " + WORDS[3] + " in the picture ?",
                                                                         "Q: Is " + WORDS[5] + " in the picture ?"))
                                                       for e in subset)


# ---- the holdout ranking ---------------------------------------------------------------------------------
def test_holdout_split_is_the_published_draw():
    questions = list(range(20, 60))
    state = np.random.get_state()
    try:
        np.random.seed(42)
        drawn = np.random.choice(np.array(questions), size=int(len(questions) * (1 - 0.2)), replace=False)
    finally:
        np.random.set_state(state)
    rank, val = holdout_split(questions, 0.2, 42)
    assert rank == drawn.tolist() and val == [q for q in questions if q not in set(rank)]
    assert len(rank) == 32 and len(val) == 8


def test_holdout_ranking_is_sklearns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n_q, per, L, H, D = 30, 4, 2, 3, 5
    groups = np.repeat(np.arange(n_q), per)
    y = np.tile([1, 1, 0, 0], n_q)
    X = rng.standard_normal((n_q * per, L, H, D))
    X[y == 1, 1, 2, 0] += 1.5  # one head that separates
    rank, val = holdout_split(range(n_q), 0.2, 7)
    acc, coef, not_converged = holdout_probes(X, y, groups, rank, val, seed=7, max_iter=1000)
    tr = np.concatenate([np.flatnonzero(groups == q) for q in rank])
    va = np.concatenate([np.flatnonzero(groups == q) for q in val])
    for layer in range(L):
        for head in range(H):
            clf = LogisticRegression(random_state=7, max_iter=1000).fit(X[tr, layer, head], y[tr])
            assert acc[layer, head] == np.mean(clf.predict(X[va, layer, head]) == y[va])
            assert np.allclose(coef[layer, head], clf.coef_[0])
    assert not_converged == 0 and np.unravel_index(acc.argmax(), acc.shape) == (1, 2)


def test_paper_tie_break_is_numpys_reversed_argsort():
    acc = np.array([[0.5, 0.7, 0.7], [0.7, 0.6, 0.5]])
    d = np.zeros((2, 3, 2))
    d[..., 0] = 1
    made = ITIDirections(d, np.ones((2, 3)), acc, d, np.ones((2, 3)), meta={"tie_break": "argsort_reversed"})
    want = [(int(i) // 3, int(i) % 3) for i in np.argsort(acc.reshape(-1))[::-1][:3]]
    assert made.top_heads(3) == want
    assert ITIDirections(d, np.ones((2, 3)), acc, d, np.ones((2, 3))).top_heads(3) == [(0, 1), (0, 2), (1, 0)]


# ---- end to end on a tiny llama --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return LlamaForCausalLM(config).eval(), tok


def test_fit_iti_paper_end_to_end(tiny, small_csv, tmp_path):
    model, tok = tiny
    fit_on, _ = question_halves(12, preset="paper")
    assert fit_on == list(range(6))
    made = fit_iti(model, tok, fit_on, csv=small_csv, preset="paper", batch_size=8, progress=False,
                   cache_dir=tmp_path / "cache")
    m = made.meta
    assert (m["preset"], m["halves"], m["ranking"], m["sigma_source"], m["sigma_ddof"]) == \
        ("paper", "contiguous", "holdout_sklearn", "gen_end_q_all", 1)
    assert m["holdout_seed"] == 42 and m["rank_questions"] == holdout_split(fit_on, 0.2, 42)[0]
    assert sorted(m["rank_questions"] + m["val_questions"]) == fit_on and len(m["val_questions"]) == 2
    assert m["sigma_questions"] == "all" and m["n_sigma_examples"] == 72 and m["n_examples"] == 36
    assert m["sigma_prompt"] == "Q: {question} A: {answer} Q: {other_question}"
    # the pieces, recomputed by hand
    encoder = PromptEncoder(tok, "qa")
    from truthprobe_eval.probing.data import labels_and_groups, truthfulqa_examples

    train = truthfulqa_examples(small_csv, fit_on)
    assert m["examples"] == [[e.group, "right" if e.label else "hallucinated"] for e in train]  # in order
    X, _ = extract_with_cache(model, encoder, train, batch_size=8, progress=False)
    y, groups = labels_and_groups(train)
    acc, _, _ = holdout_probes(X, y, groups, m["rank_questions"], m["val_questions"], seed=42)
    assert np.array_equal(made.accuracy, acc)
    mean_dir = X[y == 1].astype(np.float64).mean(0) - X[y == 0].astype(np.float64).mean(0)  # all 6 questions
    assert np.allclose(made.directions, mean_dir / np.linalg.norm(mean_dir, axis=-1, keepdims=True))
    Xs, _ = extract_with_cache(model, encoder, end_q_examples(small_csv, seed=42), batch_size=8, progress=False)
    proj = torch.einsum("nlhd,lhd->nlh", torch.tensor(Xs, dtype=torch.float64), torch.tensor(made.directions))
    assert np.allclose(made.sigma, torch.std(proj, dim=0).numpy(), rtol=1e-6)
    # the file keeps the preset, and the top heads follow the published tie rule
    loaded = ITIDirections.load(made.save(tmp_path / "paper.json"))
    assert loaded.meta["preset"] == "paper" and loaded.meta["tie_break"] == "argsort_reversed"
    assert loaded.top_heads(3) == [(int(i) // 4, int(i) % 4) for i in np.argsort(acc.reshape(-1))[::-1][:3]]


def test_fit_iti_ours_is_unchanged_and_says_so(tiny, small_csv):
    from truthprobe_eval.probing.data import labels_and_groups, truthfulqa_examples
    from truthprobe_eval.probing.trainers import train_probes

    model, tok = tiny
    fit_on = question_halves(12, 0)[0]
    made = fit_iti(model, tok, fit_on, csv=small_csv, folds=2, batch_size=8, progress=False)
    assert (made.meta["preset"], made.meta["ranking"], made.meta["sigma_source"]) == ("ours", "grouped_kfold",
                                                                                      "train_qa")
    examples = truthfulqa_examples(small_csv, fit_on)
    X, _ = extract_with_cache(model, PromptEncoder(tok, "qa"), examples, batch_size=8, progress=False)
    y, groups = labels_and_groups(examples)
    probes = train_probes(X, y, groups, n_folds=2, seed=0, trainer="exact", progress=False)
    before = fit_directions(X, y, probes.accuracy, probe_weights=probes.weights)
    for name in ("directions", "sigma", "accuracy", "random_directions", "random_sigma"):
        assert np.array_equal(getattr(made, name), getattr(before, name)), name


def test_command_preset_paper(tiny, small_csv, tmp_path, monkeypatch):
    from truthprobe_eval.cli import main

    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    monkeypatch.setenv("TRUTHPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "d.json"
    assert main(["iti", "fit", "--model", str(tmp_path / "m"), "--truthfulqa-csv", small_csv, "--preset", "paper",
                 "--questions", "10", "--half", "1", "--batch-size", "8", "--out", str(out), "--quiet"]) == 0
    made = ITIDirections.load(out)
    assert made.meta["preset"] == "paper" and made.meta["questions"] == [5, 6, 7, 8, 9]
    assert made.meta["sigma_questions"] == list(range(10)) and made.meta["n_sigma_examples"] == 60

