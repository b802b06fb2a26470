"""POPE's published question files, read for any harness: one JSON object a line (``question_id``, ``image``, the
COCO file name inside the image folder, ``text``, the question, ``label``, yes/no), one file per split:
``<prefix>_pope_{random,popular,adversarial}.json``.
"""
from __future__ import annotations

from pathlib import Path

from truthprobe_eval._io import read_json_records

from ..vlmeval_local import LocalDatasetError


def read_question_file(path: Path) -> list[dict]:
    """Records of a POPE question file (JSON lines, or one JSON list), checked for the needed keys."""
    records = read_json_records(path, LocalDatasetError)
    for i, rec in enumerate(records):
        missing = [k for k in ("image", "text", "label") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise LocalDatasetError(f"{path}: entry {i}: expected keys image, text, label; missing {', '.join(missing)}")
    if not records:
        raise LocalDatasetError(f"{path}: expected POPE questions, found an empty file")
    return records


def find_question_file(folder: Path, prefix: str, split: str) -> Path:
    """``<prefix>_pope_<split>.json`` (or the one ``<prefix>_pope_*<split>.json``, e.g. ``aokvqa_pope_seem_random``)."""
    exact = folder / f"{prefix}_pope_{split}.json"
    if exact.is_file():
        return exact
    found = sorted(p for p in folder.glob(f"{prefix}_pope_*{split}.json*") if p.is_file())
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in sorted(folder.glob("*.json*"))[:8]) or "no .json files"
    what = "several matches" if found else "none"
    raise LocalDatasetError(f"POPE {split}: expected {exact.name} (or one {prefix}_pope_*{split}.json) in {folder}, found {what}; there: {listing}")


__all__ = ["find_question_file", "read_question_file"]
