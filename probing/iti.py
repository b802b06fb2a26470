"""ITI directions from TruthfulQA: the probing stage reused (same extraction, cache and probe trainer).

Per head, at the o_proj input of the last token of ``Q: {question} A: {answer}``: the grouped k-fold probe
accuracy (a Truth Score; it ranks the heads), the mass-mean direction (or the probe's weight vector) and sigma,
all from the training questions only. ``question_halves`` gives the published 2-fold split over questions.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from torch import nn

from ..architectures import describe
from ..directions import ITIDirections, fit_directions
from .data import labels_and_groups, truthfulqa_examples
from .pipeline import extract_with_cache
from .prompts import PromptEncoder

HALVES = ("0", "1", "all")


def question_halves(n_questions: int, seed: int = 0, limit: int | None = None) -> tuple[list[int], list[int]]:
    """The published 2-fold split: a seeded permutation of the question indices cut in two halves.

    ``limit`` keeps the first ``limit`` questions of the permutation (a smaller, still random, subset)."""
    order = np.random.default_rng(seed).permutation(n_questions)
    if limit is not None:
        order = order[:limit]
    half = len(order) // 2
    return sorted(int(i) for i in order[:half]), sorted(int(i) for i in order[half:])


def fit_iti(model: nn.Module, tokenizer: Any, questions: Sequence[int], *, csv: "str | os.PathLike | None" = None,
            direction: str = "mass_mean", folds: int = 4, seed: int = 0, batch_size: int = 16,
            trainer: str = "exact", cache_dir: "str | os.PathLike | None" = None, progress: bool = True,
            meta: dict | None = None) -> ITIDirections:
    """Directions, sigmas and probe accuracies of every head, from the TruthfulQA ``questions`` given."""
    from .trainers import train_probes

    examples = truthfulqa_examples(csv, questions)
    encoder = PromptEncoder(tokenizer, "qa")
    X, _ = extract_with_cache(model, encoder, examples, batch_size=batch_size, cache_dir=cache_dir,
                              progress=progress)
    y, groups = labels_and_groups(examples)
    probes = train_probes(X, y, groups, n_folds=folds, seed=seed, trainer=trainer, progress=progress)
    info = describe(model)
    return fit_directions(X, y, probes.accuracy, probe_weights=probes.weights, direction=direction, seed=seed,
                          meta={**info, "data": "truthfulqa", "prompt_format": "qa", "site": "o_proj_input",
                                "questions": [int(q) for q in questions], "n_questions": len(questions),
                                "folds": folds, "trainer": trainer, **(meta or {})})


__all__ = ["HALVES", "fit_iti", "question_halves"]
