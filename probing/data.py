"""Probing data: labelled (context, question, answer) examples, grouped by question.

Two sources:
- ``halueval`` (the embedded default): each HaluEval QA row gives a truthful example (knowledge, question,
  right answer; label 1) and a hallucinated one (same knowledge and question, hallucinated answer; label 0),
  both with the row index as group, so cross-validation keeps a question's two answers on one side.
- a generic JSONL file, one object a line::

      {"context": "...", "question": "...", "answer": "...", "label": 1, "image": "cat.jpg", "group": "q17"}

  ``image`` (a path, relative to the image folder) and ``group`` (any string or integer; default: the line
  number, i.e. each row its own group) are optional. ``label`` is 1 (truthful / grounded) or 0 (hallucinated);
  ``true``/``false`` are accepted too. ``context`` may be empty when the row has an image.

``n`` takes the first n rows after skipping ``offset`` rows (a HaluEval row is one question, two examples).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .._io import read_jsonl
from ..datasets import HALUEVAL_FIELDS, load_halueval
from ..errors import TruthProbeError

GENERIC_FIELDS = ("context", "question", "answer", "label")
OPTIONAL_FIELDS = ("image", "group")
ANSWER_SETS = ("both", "drawn")


class ProbeDataError(TruthProbeError, ValueError):
    """Probing data that cannot be used: missing fields, bad labels, empty or one-class sets."""


@dataclass(frozen=True)
class ProbeExample:
    """One labelled answer to probe. ``group`` ties the answers to one question together."""

    context: str
    question: str
    answer: str
    label: int  # 1 truthful, 0 hallucinated
    group: int
    image: str | None = None


def halueval_examples(path: "str | os.PathLike | None" = None, offset: int = 0, n: int | None = None, *,
                      answers: str = "both", answer_seed: int = 0, strip: bool = False) -> list[ProbeExample]:
    """HaluEval QA rows as probing examples, grouped by row index.

    ``answers="both"`` (ours): two examples per row, right answer first. ``answers="drawn"`` (the published
    probing set): one per row, the hallucinated answer where ``draw_hallucinated(answer_seed, row)`` says so, else
    the right one. ``strip``: strip context, question and answer (as the published extraction does)."""
    from ..datasets import draw_hallucinated

    if answers not in ANSWER_SETS:
        raise ProbeDataError(f"answers: expected one of {', '.join(ANSWER_SETS)}, found {answers!r}")
    rows = load_halueval(path, offset=offset, n=n)
    drawn = draw_hallucinated(answer_seed, np.arange(offset, offset + len(rows)))
    tidy = (lambda t: t.strip()) if strip else (lambda t: t)
    examples = []
    for i, row in enumerate(rows):
        group = offset + i
        pairs = ((row["right_answer"], 1), (row["hallucinated_answer"], 0))
        if answers == "drawn":
            pairs = (pairs[1],) if drawn[i] else (pairs[0],)
        for answer, label in pairs:
            examples.append(ProbeExample(tidy(row["knowledge"]), tidy(row["question"]), tidy(answer), label, group))
    return examples


def example_record(examples: Sequence[ProbeExample]) -> list[list]:
    """``[[row, "right" | "hallucinated"], ...]`` in order: which answer of which row each probing example was
    (for generic JSONL data, the row's group code and its label's name)."""
    return [[int(e.group), "right" if e.label == 1 else "hallucinated"] for e in examples]


def truthfulqa_examples(csv: "str | os.PathLike | None" = None, rows: Sequence[int] | None = None) -> list[ProbeExample]:
    """ITI's probing data: one example per (TruthfulQA question, answer), label 1 for each correct answer and 0 for
    each incorrect one (answers with a final period, as in the multiple-choice set), grouped by question (the CSV
    row index). ``rows``: which questions (default all); ``csv``: the file, else ``$TRUTHPROBE_TRUTHFULQA_CSV``."""
    from ..tasks.truthfulqa.utils import read_rows, with_period

    table = read_rows(csv)
    chosen = range(len(table)) if rows is None else rows
    examples = []
    for i in chosen:
        if not 0 <= int(i) < len(table):
            raise ProbeDataError(f"TruthfulQA rows: expected indices 0 to {len(table) - 1}, found {i}")
        row = table[int(i)]
        for answers, label in ((row["correct_answers"], 1), (row["incorrect_answers"], 0)):
            examples += [ProbeExample("", row["question"], with_period(a), label, int(i)) for a in answers]
    check_examples(examples, source="TruthfulQA")
    return examples


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _label(value, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return int(value.strip().lower() in ("1", "true"))
    raise ProbeDataError(f"{where}: expected label 0 or 1 (or true/false), found {value!r}")


def _generic_example(row: dict, where: str, line_no: int) -> tuple[ProbeExample, object]:
    if not isinstance(row, dict):
        raise ProbeDataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    missing = [f for f in GENERIC_FIELDS if f not in row]
    if missing:
        raise ProbeDataError(f"{where}: missing field(s) {', '.join(missing)}; expected {', '.join(GENERIC_FIELDS)} "
                             f"(optional: {', '.join(OPTIONAL_FIELDS)}), found keys {sorted(row)}")
    for f in ("context", "question", "answer"):
        if not isinstance(row[f], str):
            raise ProbeDataError(f"{where}: expected {f!r} to be a string, found {type(row[f]).__name__}")
    image = row.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise ProbeDataError(f"{where}: expected 'image' to be a non-empty path string, found {image!r}")
    if not row["answer"].strip():
        raise ProbeDataError(f"{where}: expected a non-empty 'answer'")
    if not row["context"].strip() and image is None:
        raise ProbeDataError(f"{where}: expected a non-empty 'context' (it may be empty only when the row has an 'image')")
    group = row.get("group", f"line {line_no}")
    if not isinstance(group, (str, int)) or isinstance(group, bool):
        raise ProbeDataError(f"{where}: expected 'group' to be a string or an integer, found {group!r}")
    example = ProbeExample(row["context"], row["question"], row["answer"], _label(row["label"], where), 0, image)
    return example, group


def jsonl_examples(path: "str | os.PathLike", offset: int = 0, n: int | None = None) -> list[ProbeExample]:
    """Rows ``offset .. offset + n`` of a generic probing JSONL file (``.jsonl`` or ``.jsonl.gz``).

    Every row read is validated; an error names the file and line. Groups become integer codes in order
    of first appearance.
    """
    path = Path(path)
    if not path.is_file():
        raise ProbeDataError(f"probing data not found: expected a .jsonl file at {path}")
    _check_range(offset, n)
    examples, groups = [], []
    row_index = 0
    for line_no, row in read_jsonl(path, ProbeDataError):  # lazily: reading stops after the n rows wanted
        if row_index < offset:
            row_index += 1
            continue
        if n is not None and len(examples) >= n:
            break
        example, group = _generic_example(row, f"{path}, line {line_no}", line_no)
        examples.append(example)
        groups.append(group)
        row_index += 1
    codes: dict[object, int] = {}
    return [ProbeExample(e.context, e.question, e.answer, e.label, codes.setdefault(g, len(codes)), e.image)
            for e, g in zip(examples, groups)]


def _check_range(offset: int, n: int | None) -> None:
    if offset < 0 or (n is not None and n < 1):
        raise ProbeDataError(f"expected offset >= 0 and n >= 1 rows, found offset={offset}, n={n}")


def _looks_like_halueval(path: Path) -> bool:
    with _open_text(path) as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(row, dict) and all(f in row for f in HALUEVAL_FIELDS)
    return False


def is_halueval_source(data: "str | os.PathLike") -> bool:
    """``halueval`` or a file in HaluEval's format (one row = one question = two examples)."""
    return str(data) == "halueval" or (Path(data).is_file() and _looks_like_halueval(Path(data)))


def load_examples(data: "str | os.PathLike" = "halueval", n: int | None = None, offset: int = 0,
                  **halueval: object) -> list[ProbeExample]:
    """Probing examples from ``"halueval"`` (embedded), a HaluEval-format file, or a generic JSONL file.

    ``halueval``: ``answers``, ``answer_seed``, ``strip`` for HaluEval sources (see ``halueval_examples``).
    The result is checked with ``check_examples`` (non-empty, both labels present).
    """
    _check_range(offset, n)
    if str(data) == "halueval":
        examples = halueval_examples(None, offset, n, **halueval)
    else:
        path = Path(data)
        if not path.is_file():
            raise ProbeDataError(f"--data: expected 'halueval' or a .jsonl file, found no file at {path}")
        examples = (halueval_examples(path, offset, n, **halueval) if _looks_like_halueval(path)
                    else jsonl_examples(path, offset, n))
    check_examples(examples, source=str(data), offset=offset)
    return examples


def check_examples(examples: Sequence[ProbeExample], source: str = "the data", offset: int = 0) -> None:
    """Fail early on data a probe cannot learn from: no rows, or only one label."""
    if not examples:
        raise ProbeDataError(f"{source}: expected at least one row after skipping {offset}, found none")
    labels = {e.label for e in examples}
    if labels != {0, 1}:
        only = "truthful (1)" if labels == {1} else "hallucinated (0)"
        raise ProbeDataError(f"{source}: expected both labels (truthful 1 and hallucinated 0), found only {only} "
                             f"in {len(examples)} example(s)")


def labels_and_groups(examples: Sequence[ProbeExample]) -> tuple[np.ndarray, np.ndarray]:
    """``(y, groups)`` as int64 arrays, aligned with ``examples``."""
    y = np.fromiter((e.label for e in examples), dtype=np.int64, count=len(examples))
    groups = np.fromiter((e.group for e in examples), dtype=np.int64, count=len(examples))
    return y, groups


def fingerprint(examples: Iterable[ProbeExample]) -> str:
    """A content hash of the examples (for the activation cache key)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(asdict(e), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


__all__ = ["ANSWER_SETS", "ProbeDataError", "ProbeExample", "check_examples", "example_record", "fingerprint", "halueval_examples", "is_halueval_source", "jsonl_examples",
           "labels_and_groups", "load_examples", "truthfulqa_examples"]
