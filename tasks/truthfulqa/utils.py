"""TruthfulQA from a local ``TruthfulQA.csv`` (the hub set is not always reachable), scored by lm-eval's own code.

The CSV (Type, Category, Question, Best Answer, Correct Answers, Incorrect Answers, Source; answers ``; ``-separated)
is turned into the hub set's fields: ``mc1_targets`` (the best answer, then the incorrect ones), ``mc2_targets``
(all correct answers, then the incorrect ones) and the generation fields. Answers get a final period, as in the
hub's multiple-choice set. Prompts are lm-eval's ``truthfulqa_*`` prompts; mc2 and generation are scored by the
functions of ``lm_eval.tasks.truthfulqa.utils`` (imported, not rewritten); mc1 by lm-eval's ``acc``.

The CSV path: ``truthfulqa_csv`` in ``dataset_kwargs`` or ``--metadata``, else ``$TRUTHPROBE_TRUTHFULQA_CSV``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lm_eval.tasks.truthfulqa.utils import process_docs_gen, process_results_gen, process_results_mc2  # noqa: F401

CSV_ENV = "TRUTHPROBE_TRUTHFULQA_CSV"
CSV_COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source")


class TruthfulQADataError(ValueError):
    """The TruthfulQA CSV is missing or not in the expected format."""


try:  # prefer the package's error base class when truthprobe_eval is importable
    from truthprobe_eval.errors import TruthProbeError

    class TruthfulQADataError(TruthProbeError, ValueError):  # type: ignore[no-redef]  # noqa: F811
        """The TruthfulQA CSV is missing or not in the expected format."""
except ImportError:  # pragma: no cover
    pass


def csv_path(truthfulqa_csv: "str | os.PathLike | None" = None) -> Path:
    """The CSV to read: the argument, else ``$TRUTHPROBE_TRUTHFULQA_CSV``; a clear error when neither names a file."""
    value = truthfulqa_csv or os.environ.get(CSV_ENV)
    if not value:
        raise TruthfulQADataError(
            f"TruthfulQA data: expected the path of a local TruthfulQA.csv, found none; set {CSV_ENV}=/path/TruthfulQA.csv "
            f"or pass --metadata '{{\"truthfulqa_csv\": \"/path/TruthfulQA.csv\"}}'"
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise TruthfulQADataError(f"TruthfulQA data: expected a CSV file at {path}, found no such file")
    return path


def split_answers(cell: str) -> list[str]:
    """``"a; b; c"`` -> ``["a", "b", "c"]`` (empty parts dropped)."""
    return [part.strip() for part in (cell or "").split(";") if part.strip()]


def with_period(answer: str) -> str:
    answer = answer.strip()
    return answer if answer.endswith(".") else answer + "."


def read_rows(path: "str | os.PathLike | None" = None) -> list[dict[str, Any]]:
    """The CSV as the hub's ``generation`` fields (lists of answers, no periods added)."""
    path = csv_path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise TruthfulQADataError(f"{path}: expected columns {', '.join(CSV_COLUMNS)}, found {', '.join(columns) or 'none'}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "") for k, v in raw.items() if k is not None}
            correct, incorrect = split_answers(row["Correct Answers"]), split_answers(row["Incorrect Answers"])
            if not row["Question"].strip() or not row["Best Answer"].strip() or not correct or not incorrect:
                raise TruthfulQADataError(f"{path}, line {line}: expected a question, a best answer and at least one "
                                          f"correct and one incorrect answer, found {row}")
            rows.append({"type": row["Type"], "category": row["Category"], "question": row["Question"].strip(),
                         "best_answer": row["Best Answer"].strip(), "correct_answers": correct,
                         "incorrect_answers": incorrect, "source": row["Source"]})
    if not rows:
        raise TruthfulQADataError(f"{path}: expected TruthfulQA rows, found none")
    return rows


def mc_doc(row: dict[str, Any]) -> dict[str, Any]:
    """The hub's ``multiple_choice`` fields: mc1 = best vs incorrect, mc2 = all correct vs incorrect (label 1 = true)."""
    best = with_period(row["best_answer"])
    correct = [with_period(a) for a in row["correct_answers"]]
    incorrect = [with_period(a) for a in row["incorrect_answers"]]
    return {
        "question": row["question"],
        "mc1_targets": {"choices": [best, *incorrect], "labels": [1] + [0] * len(incorrect)},
        "mc2_targets": {"choices": [*correct, *incorrect], "labels": [1] * len(correct) + [0] * len(incorrect)},
    }


def select_rows(rows: list[dict[str, Any]], truthfulqa_rows: Any = None) -> list[dict[str, Any]]:
    """The questions named by ``truthfulqa_rows`` (a list of CSV row indices, or ``"a-b"``), each with its ``row``."""
    indexed = [{**r, "row": i} for i, r in enumerate(rows)]
    if truthfulqa_rows is None or truthfulqa_rows == "":
        return indexed
    if isinstance(truthfulqa_rows, str):
        first, sep, last = truthfulqa_rows.partition("-")
        try:
            wanted = list(range(int(first), int(last) + 1)) if sep else [int(first)]
        except ValueError:
            raise TruthfulQADataError(f"truthfulqa_rows: expected a list of row indices or 'FIRST-LAST', found "
                                      f"{truthfulqa_rows!r}") from None
    else:
        wanted = [int(i) for i in truthfulqa_rows]
    bad = [i for i in wanted if not 0 <= i < len(rows)]
    if bad or not wanted:
        raise TruthfulQADataError(f"truthfulqa_rows: expected indices 0 to {len(rows) - 1}, found "
                                  f"{bad[:5] if bad else 'none'}")
    return [indexed[i] for i in wanted]


def load_mc(truthfulqa_csv: "str | None" = None, truthfulqa_rows: Any = None, **_lm_eval_metadata: Any):
    """lm-eval ``custom_dataset`` for mc1/mc2: a ``validation`` split, like the hub set (``truthfulqa_rows`` in
    ``--metadata``: only those questions, e.g. the held-out half of ITI's 2-fold protocol)."""
    import datasets

    docs = [{**mc_doc(r), "row": r["row"]} for r in select_rows(read_rows(truthfulqa_csv), truthfulqa_rows)]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})


def load_gen(truthfulqa_csv: "str | None" = None, **_lm_eval_metadata: Any):
    """lm-eval ``custom_dataset`` for generation: a ``validation`` split (lm-eval's process_docs_gen runs on it)."""
    import datasets

    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(read_rows(truthfulqa_csv))})
