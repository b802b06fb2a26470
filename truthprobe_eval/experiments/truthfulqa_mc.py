"""TruthfulQA MC1 / MC2 through lm-eval on one loaded model, one intervention per call, per-question scores kept.

The tasks are the local ``truthfulqa_local_mc1`` / ``_mc2`` (lm-eval's prompts and scoring on the CSV); a call
evaluates the questions it is given (``truthfulqa_rows``: ITI's 2-fold protocol evaluates each half with the
directions fit on the other) and writes lm-eval's result and per-sample files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import TruthProbeError

TASKS = ("truthfulqa_local_mc1", "truthfulqa_local_mc2")


@dataclass
class MCResult:
    name: str
    intervention: dict[str, Any]
    rows: list[int]  # CSV row of each question, in order
    mc1: np.ndarray  # per question: 1 if the best answer has the highest log-likelihood
    mc2: np.ndarray  # per question: normalized probability mass on the true answers
    seconds: float
    result_file: str
    samples_file: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "intervention": self.intervention, "rows": self.rows,
                "mc1": float(self.mc1.mean()), "mc2": float(self.mc2.mean()), "mc1_per_question": self.mc1.tolist(),
                "mc2_per_question": self.mc2.tolist(), "seconds": self.seconds, "result_file": self.result_file,
                "samples_file": self.samples_file}


def concatenate(name: str, parts: Sequence[MCResult]) -> MCResult:
    """Several question sets (the two halves) as one result, in row order."""
    rows = [r for p in parts for r in p.rows]
    order = np.argsort(rows, kind="stable")
    return MCResult(name, parts[0].intervention if len(parts) == 1 else {"halves": [p.intervention for p in parts],
                                                                          **parts[0].intervention},
                    [rows[i] for i in order], np.concatenate([p.mc1 for p in parts])[order],
                    np.concatenate([p.mc2 for p in parts])[order], sum(p.seconds for p in parts),
                    "; ".join(p.result_file for p in parts), "; ".join(p.samples_file for p in parts))


class TruthfulQAEvaluator:
    """Evaluates TruthfulQA questions with a ``TruthGatedLM`` that is shared with other evaluators."""

    def __init__(self, lm: Any, csv: "str | Path", out: "str | Path") -> None:
        from ..tasks.truthfulqa.utils import csv_path

        self.lm, self.csv, self.out = lm, str(csv_path(csv)), Path(out)

    def __call__(self, name: str, rows: Sequence[int], intervention: Any) -> MCResult:
        from lm_eval.tasks import TaskManager

        from ..tasks import LM_EVAL_INCLUDE_PATH
        from .halueval_judge import simple_evaluate_here, write_lm_eval_outputs

        self.lm.set_intervention(intervention)
        manager = TaskManager(include_path=LM_EVAL_INCLUDE_PATH, include_defaults=False,
                              metadata={"truthfulqa_csv": self.csv, "truthfulqa_rows": [int(r) for r in rows]})
        start = time.perf_counter()
        results = simple_evaluate_here(model=self.lm, tasks=list(TASKS), task_manager=manager, log_samples=True,
                                       bootstrap_iters=0)
        seconds = time.perf_counter() - start
        per_task = {}
        for task in TASKS:
            samples = sorted(results["samples"][task], key=lambda s: s["doc"]["row"])
            per_task[task] = ([s["doc"]["row"] for s in samples], np.array([float(s["acc"]) for s in samples]))
        if per_task[TASKS[0]][0] != per_task[TASKS[1]][0]:
            raise TruthProbeError("TruthfulQA: mc1 and mc2 evaluated different questions")
        result_file, samples_file = write_lm_eval_outputs(self.out / "lm_eval", name, results)
        return MCResult(name, self.lm.intervention.describe(), per_task[TASKS[0]][0], per_task[TASKS[0]][1],
                        per_task[TASKS[1]][1], round(seconds, 2), str(result_file), str(samples_file))


__all__ = ["MCResult", "TASKS", "TruthfulQAEvaluator", "concatenate"]
