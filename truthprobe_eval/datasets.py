"""The embedded default data: HaluEval QA (10,000 rows, MIT license, see ``data/HALUEVAL_LICENSE``)."""
from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ._io import read_jsonl
from .errors import TruthProbeError

HALUEVAL_FIELDS = ("knowledge", "question", "right_answer", "hallucinated_answer")


def halueval_path() -> Path:
    """Path of the packaged, gzip-compressed HaluEval QA JSONL file."""
    return Path(str(resources.files("truthprobe_eval") / "data" / "halueval_qa.jsonl.gz"))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_halueval(path: "str | os.PathLike | None" = None) -> Iterator[dict]:
    """Rows of HaluEval QA (the embedded copy by default, or a local ``.jsonl`` / ``.jsonl.gz``)."""
    path = Path(path) if path is not None else halueval_path()
    if not path.is_file():
        raise TruthProbeError(f"HaluEval data not found: expected a .jsonl or .jsonl.gz file at {path}")
    for line_no, row in read_jsonl(path, TruthProbeError):
        missing = [f for f in HALUEVAL_FIELDS if not isinstance(row.get(f), str)]
        if missing:
            raise TruthProbeError(f"{path}, line {line_no}: expected string fields {', '.join(missing)}, found keys {sorted(row)}")
        yield row


def load_halueval(path: "str | os.PathLike | None" = None, offset: int = 0, n: int | None = None) -> list[dict]:
    """Rows ``offset .. offset + n`` of HaluEval QA."""
    if offset < 0 or (n is not None and n < 0):
        raise TruthProbeError(f"expected offset >= 0 and n >= 0, found offset={offset}, n={n}")
    rows = []
    for i, row in enumerate(iter_halueval(path)):
        if i < offset:
            continue
        if n is not None and len(rows) >= n:
            break
        rows.append(row)
    return rows


def draw_hallucinated(seed: int, rows: Sequence[int]) -> np.ndarray:
    """For each row index, whether it shows its hallucinated answer under ``seed``.

    Row i takes the i-th number of the seed's stream (``default_rng(seed).random()``), so a row's draw does not
    depend on which slice of the data is evaluated.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    return np.random.default_rng(int(seed)).random(int(rows.max()) + 1)[rows] < 0.5
