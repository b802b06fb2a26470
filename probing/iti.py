"""ITI directions from TruthfulQA: the probing stage reused (same extraction, cache and probe trainer).

Per head, at the o_proj input of the last token of ``Q: {question} A: {answer}``: a probe accuracy (a Truth Score;
it ranks the heads), the mass-mean direction (or a probe's weight vector) over the training questions, and sigma,
the spread of activations along the direction. Two presets (``--preset paper|ours``), in ``ITI_PRESETS``:

``paper``, the published pipeline as read from likenneth/honest_llama (``validation/validate_2fold.py``,
``utils.py``, ``get_activations/get_activations.py``):

- halves: ``np.array_split(np.arange(n), 2)``, contiguous halves in the data's question order (no permutation);
- ranking: one split of the fold's training questions, ``np.random.seed(42)`` then ``np.random.choice(train,
  int(len(train) * 0.8), replace=False)`` (the rest, in order, validates); per head a scikit-learn
  ``LogisticRegression(random_state=42, max_iter=1000)`` fit on the 80 %, ranked by accuracy on the 20 %
  (``np.argsort(acc)[::-1]``, ties as numpy's argsort leaves them);
- directions: mass mean over all the fold's training questions (80 % + 20 %), as ``get_com_directions``;
  ``direction="probe"`` takes the 80 % fit's ``coef_`` (the legacy code's probe direction);
- sigma: the unbiased std (``torch.std``) of the projection on the unit direction of the ``tqa_gen_end_q``
  activations, ``Q: {question} A: {answer} Q: {random question}`` (hub generation answers: no period added),
  of every question, both labels; the random question is drawn per question (unseeded in the published script;
  here from the holdout seed).

Where ``paper`` still differs from the published run: the published halves are in the Hugging Face
multiple-choice order (817 questions, two rows patched by hand), ours in our CSV's (813 rows), so the rule is the
published one but not the questions; the published fold 1's 80/20 draw follows random draws made while evaluating
fold 0 (we reseed per fold); the published activations were taken in float16.

``ours``: a seeded permutation cut in two (``question_halves``), grouped k-fold probe accuracy with the exact
solver (``train_probes``), and sigma = std (ddof 0) of the training questions' own ``Q: A:`` activations.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from torch import nn

from ..architectures import describe
from ..directions import ITIDirections, fit_directions
from ..presets import PRESET_NAMES, check_preset
from .data import ProbeExample, example_record, labels_and_groups, truthfulqa_examples
from .pipeline import extract_with_cache
from .prompts import PromptEncoder

HALVES = ("0", "1", "all")
PRESETS = PRESET_NAMES  # ("paper", "ours"), the project-wide --preset choices
END_Q_PROMPT = "Q: {question} A: {answer} Q: {other_question}"


@dataclass(frozen=True)
class ITIPreset:
    name: str
    halves: str                 # "contiguous": np.array_split of the questions in order; "permuted": seeded permutation
    ranking: str                # "holdout_sklearn": one 80/20 question split, sklearn per head; "grouped_kfold"
    val_ratio: float | None     # holdout_sklearn: share of the training questions that validate (0.2)
    holdout_seed: int | None    # holdout_sklearn: np.random.seed of the 80/20 split (validate_2fold's --seed, 42)
    max_iter: int | None        # holdout_sklearn: LogisticRegression(max_iter=...)
    sigma: str                  # "gen_end_q_all": end-q prompts of every question; "train_qa": the training Q: A:
    sigma_ddof: int             # 1: torch.std (unbiased); 0: np.std
    tie_break: str              # top-K ties: "argsort_reversed" (np.argsort(acc)[::-1]) or "lower_first"
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


ITI_PRESETS = {
    "paper": ITIPreset("paper", halves="contiguous", ranking="holdout_sklearn", val_ratio=0.2, holdout_seed=42,
                       max_iter=1000, sigma="gen_end_q_all", sigma_ddof=1, tie_break="argsort_reversed",
                       why="the published pipeline (likenneth/honest_llama, validate_2fold.py): to compare with "
                           "the paper"),
    "ours": ITIPreset("ours", halves="permuted", ranking="grouped_kfold", val_ratio=None, holdout_seed=None,
                      max_iter=None, sigma="train_qa", sigma_ddof=0, tie_break="lower_first",
                      why="grouped folds (no question's twin answers on both sides of a split), every training "
                          "question ranks, and the exact solver's unique optimum"),
}


def iti_preset(name: "str | ITIPreset") -> ITIPreset:
    return name if isinstance(name, ITIPreset) else ITI_PRESETS[check_preset(name)]


def question_halves(n_questions: int, seed: int = 0, limit: int | None = None,
                    preset: "str | ITIPreset" = "ours") -> tuple[list[int], list[int]]:
    """Two halves of the question indices 0..n-1, sorted.

    ``ours``: a seeded permutation cut in two (first half ``len // 2``); ``limit`` keeps the first ``limit``
    questions of the permutation (a smaller, still random, subset). This is NOT the published split.
    ``paper``: the published ``np.array_split(np.arange(n), 2)``, contiguous halves in the data's order (first
    half the larger when n is odd); ``limit`` keeps the first ``limit`` questions in order; ``seed`` is unused."""
    if iti_preset(preset).halves == "contiguous":
        n = n_questions if limit is None else min(limit, n_questions)
        first, second = np.array_split(np.arange(n), 2)
        return [int(i) for i in first], [int(i) for i in second]
    order = np.random.default_rng(seed).permutation(n_questions)
    if limit is not None:
        order = order[:limit]
    half = len(order) // 2
    return sorted(int(i) for i in order[:half]), sorted(int(i) for i in order[half:])


def end_q_prompt(question: str, answer: str, other_question: str) -> str:
    """The published ``tqa_gen_end_q`` text (``format_truthfulqa_end_q``)."""
    return END_Q_PROMPT.format(question=question, answer=answer, other_question=other_question)


def end_q_examples(csv: "str | os.PathLike | None" = None, rows: Sequence[int] | None = None,
                   seed: int = 42) -> list[ProbeExample]:
    """The ``tqa_gen_end_q`` set: per question (``rows``, default all, in order) one other question drawn from the
    same rows (``RandomState(seed).randint``, possibly itself, as published), then each correct answer (label 1)
    and each incorrect one (label 0), as written in the CSV (no period added). Encoded with the ``qa`` format, the
    example's text is exactly ``end_q_prompt``: the answer field carries ``{answer} Q: {other_question}``."""
    from ..tasks.truthfulqa.utils import read_rows

    table = read_rows(csv)
    chosen = list(range(len(table))) if rows is None else [int(i) for i in rows]
    rng = np.random.RandomState(seed)
    examples = []
    for i in chosen:
        row = table[i]
        other = table[chosen[rng.randint(len(chosen))]]["question"]
        for answers, label in ((row["correct_answers"], 1), (row["incorrect_answers"], 0)):
            examples += [ProbeExample("", row["question"], f"{a} Q: {other}", label, i) for a in answers]
    return examples


def holdout_split(questions: Sequence[int], val_ratio: float = 0.2, seed: int = 42) -> tuple[list[int], list[int]]:
    """validate_2fold's split of a fold's training questions: ``np.random.seed(seed)``, then ``np.random.choice(
    questions, int(len * (1 - val_ratio)), replace=False)`` ranks (in the drawn order), the rest validates (in
    the given order). The published run draws fold 0's split first after seeding; fold 1's draw follows fold 0's
    evaluation on the same global generator, so only a first draw is reproducible: each call reseeds."""
    questions = np.asarray(list(questions), dtype=np.int64)
    drawn = np.random.RandomState(seed).choice(questions, size=int(len(questions) * (1 - val_ratio)), replace=False)
    taken = set(int(q) for q in drawn)
    return [int(q) for q in drawn], [int(q) for q in questions if int(q) not in taken]


def _rows_of(groups: np.ndarray, questions: Sequence[int]) -> np.ndarray:
    """Example rows of ``questions``, question by question in the given order (as validate_2fold concatenates)."""
    by_q: dict[int, list[int]] = {}
    for row, g in enumerate(groups.tolist()):
        by_q.setdefault(int(g), []).append(row)
    return np.asarray([r for q in questions for r in by_q.get(int(q), [])], dtype=np.int64)


def holdout_probes(X: np.ndarray, y: np.ndarray, groups: np.ndarray, train_questions: Sequence[int],
                   val_questions: Sequence[int], *, seed: int = 42, max_iter: int = 1000,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Per head, scikit-learn's ``LogisticRegression(random_state=seed, max_iter=max_iter)`` fit on the answers of
    ``train_questions`` and scored (accuracy) on those of ``val_questions``: validate_2fold's ``train_probes``.
    Returns ((L, H) accuracy, (L, H, D) coef_, heads that hit max_iter)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from tqdm.auto import tqdm

    X = np.asarray(X)
    y = np.asarray(y)
    tr, va = _rows_of(np.asarray(groups), train_questions), _rows_of(np.asarray(groups), val_questions)
    if len(tr) == 0 or len(va) == 0 or len(np.unique(y[tr])) < 2:
        raise ValueError(f"holdout ranking: expected answers of both labels among {len(train_questions)} ranking "
                         f"questions and some answers among {len(val_questions)} validation questions, found "
                         f"{len(tr)} and {len(va)} answers")
    L, H, D = X.shape[1:]
    acc = np.zeros((L, H))
    coef = np.zeros((L, H, D))
    not_converged = 0
    Xtr, Xva, ytr, yva = X[tr], X[va], y[tr], y[va]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for layer in tqdm(range(L), desc="holdout probes", disable=not progress, leave=False):
            for head in range(H):
                clf = LogisticRegression(random_state=seed, max_iter=max_iter).fit(Xtr[:, layer, head], ytr)
                acc[layer, head] = float(np.mean(clf.predict(Xva[:, layer, head]) == yva))
                coef[layer, head] = clf.coef_[0]
                not_converged += int(np.max(clf.n_iter_) >= max_iter)
    return acc, coef, not_converged


def fit_iti(model: nn.Module, tokenizer: Any, questions: Sequence[int], *, csv: "str | os.PathLike | None" = None,
            direction: str = "mass_mean", folds: int = 4, seed: int = 0, batch_size: int = 16,
            trainer: str = "exact", cache_dir: "str | os.PathLike | None" = None, progress: bool = True,
            meta: dict | None = None, preset: "str | ITIPreset" = "ours", holdout_seed: int | None = None,
            sigma_questions: Sequence[int] | None = None) -> ITIDirections:
    """Directions, sigmas and probe accuracies of every head, from the TruthfulQA ``questions`` given.

    ``preset="ours"``: grouped ``folds``-fold accuracy (``trainer``), sigma from the training activations (ddof 0).
    ``preset="paper"``: the 80/20 holdout ranking (``holdout_seed``, default the preset's 42; ``folds`` and
    ``trainer`` unused), sigma (ddof 1) from the end-q activations of ``sigma_questions`` (default: every CSV row).
    ``seed`` seeds the random-direction control (both presets) and ``ours``' folds."""
    p = iti_preset(preset)
    examples = truthfulqa_examples(csv, questions)
    encoder = PromptEncoder(tokenizer, "qa")
    X, _ = extract_with_cache(model, encoder, examples, batch_size=batch_size, cache_dir=cache_dir,
                              progress=progress)
    y, groups = labels_and_groups(examples)
    info = {**describe(model), "data": "truthfulqa", "prompt_format": "qa", "site": "o_proj_input",
            "questions": [int(q) for q in questions], "n_questions": len(questions),
            "examples": example_record(examples)}   # [CSV row, "right" (correct) | "hallucinated" (incorrect)]
    settings = {"preset": p.name, "halves": p.halves, "ranking": p.ranking, "sigma_source": p.sigma,
                "sigma_ddof": p.sigma_ddof, "tie_break": p.tie_break}
    if p.ranking == "grouped_kfold":
        from .trainers import train_probes

        probes = train_probes(X, y, groups, n_folds=folds, seed=seed, trainer=trainer, progress=progress)
        return fit_directions(X, y, probes.accuracy, probe_weights=probes.weights, direction=direction, seed=seed,
                              meta={**info, "folds": folds, "trainer": trainer, **settings, **(meta or {})})
    hseed = p.holdout_seed if holdout_seed is None else holdout_seed
    rank_q, val_q = holdout_split(questions, p.val_ratio, hseed)
    accuracy, coef, not_converged = holdout_probes(X, y, groups, rank_q, val_q, seed=hseed, max_iter=p.max_iter,
                                                   progress=progress)
    tuning = end_q_examples(csv, sigma_questions, seed=hseed)
    X_sigma, _ = extract_with_cache(model, encoder, tuning, batch_size=batch_size, cache_dir=cache_dir,
                                    progress=progress)
    import sklearn

    settings.update(
        holdout_seed=hseed, val_ratio=p.val_ratio, rank_questions=rank_q, val_questions=val_q,
        n_rank_questions=len(rank_q), n_val_questions=len(val_q), trainer="sklearn_logistic_regression",
        estimator=f"LogisticRegression(random_state={hseed}, max_iter={p.max_iter})",
        sklearn_version=sklearn.__version__, not_converged=not_converged,
        sigma_prompt=END_Q_PROMPT, end_q_seed=hseed, n_sigma_examples=len(tuning),
        sigma_questions="all" if sigma_questions is None else [int(q) for q in sigma_questions])
    return fit_directions(X, y, accuracy, probe_weights=coef, direction=direction, seed=seed, sigma_X=X_sigma,
                          sigma_ddof=p.sigma_ddof, meta={**info, **settings, **(meta or {})})


__all__ = ["END_Q_PROMPT", "HALVES", "ITIPreset", "ITI_PRESETS", "PRESETS", "end_q_examples", "end_q_prompt",
           "fit_iti", "holdout_probes", "holdout_split", "iti_preset", "question_halves"]
