"""Shared writers for analysis outputs: Markdown tables, CSV files and PNG figures, all written atomically."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .._io import atomic_write, atomic_write_text


def fmt(value: Any, digits: int = 4) -> str:
    """One table cell: floats rounded, NaN/None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def fmt_p(p: "float | None") -> str:
    """A p-value: two significant digits, small ones in scientific notation."""
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    return f"{float(p):.2g}" if p >= 1e-4 else f"{float(p):.1e}"


def _md_cell(value: Any, digits: int) -> str:
    return fmt(value, digits).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_md_cell(h, digits) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def matrix_table(labels: Sequence[str], matrix: np.ndarray, digits: int = 3, corner: str = "") -> str:
    """A square labelled matrix as a Markdown table."""
    return markdown_table([corner, *labels], ([lab, *row] for lab, row in zip(labels, np.asarray(matrix))), digits)


def csv_text(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if v is None else (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for v in row])
    return buf.getvalue()


def write_csv(path: "str | os.PathLike", headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file atomically (full float precision; NaN written as ``nan``)."""
    return atomic_write_text(path, csv_text(headers, rows))


def write_matrix_csv(path: "str | os.PathLike", labels: Sequence[str], matrix: np.ndarray, corner: str = "") -> Path:
    return write_csv(path, [corner, *labels], ([lab, *map(float, row)] for lab, row in zip(labels, np.asarray(matrix))))


def write_text(path: "str | os.PathLike", text: str) -> Path:
    return atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: "str | os.PathLike", dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def unique_labels(names: Sequence[str]) -> list[str]:
    """Make labels unique by appending ``#2``, ``#3`` ... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out

