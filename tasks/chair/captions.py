"""Reading and checking caption records ``{"image_id": int, "caption": str}``."""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from truthprobe_eval._io import read_json_records

from .errors import CHAIRInputError


def read_captions(path: str | os.PathLike) -> list[dict]:
    """Caption records from a JSON list or a JSONL file (one JSON object a line; blank lines allowed)."""
    path = Path(path)
    if not path.is_file():
        raise CHAIRInputError(f"expected a caption file (JSON list or JSONL) at {path}, found no file")
    records = read_json_records(path, CHAIRInputError)
    if not records and not path.read_text("utf-8").strip():
        raise CHAIRInputError(f"expected caption records in {path}, found an empty file")
    return records


@dataclass(frozen=True)
class CaptionRecord:
    index: int  # position in the input list
    image_id: int
    caption: str


def _image_id(value: Any, index: int) -> int:
    if isinstance(value, bool):
        pass
    elif isinstance(value, numbers.Integral):
        return int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        return int(value)
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise CHAIRInputError(f"expected entry {index} to have an integer image_id, found {value!r}")


def check_records(captions: Iterable[Any]) -> list[CaptionRecord]:
    """Validated records; a record without image_id or caption, or of the wrong type, is an error naming its index."""
    if isinstance(captions, (str, bytes, dict)):
        raise CHAIRInputError(
            f"expected a list of {{'image_id': int, 'caption': str}} records, found a {type(captions).__name__}"
        )
    records = []
    for index, entry in enumerate(captions):
        if not isinstance(entry, dict):
            raise CHAIRInputError(
                f"expected entry {index} to be an object with image_id and caption, found {type(entry).__name__} {entry!r:.80}"
            )
        missing = [k for k in ("image_id", "caption") if k not in entry or entry[k] is None]
        if missing:
            raise CHAIRInputError(
                f"expected entry {index} to have image_id and caption, found it without {' and '.join(missing)} "
                f"(keys: {', '.join(map(str, entry)) or 'none'})"
            )
        caption = entry["caption"]
        if not isinstance(caption, str):
            raise CHAIRInputError(
                f"expected entry {index} to have a string caption, found {type(caption).__name__} {caption!r:.80}"
            )
        records.append(CaptionRecord(index, _image_id(entry["image_id"], index), caption))
    if not records:
        raise CHAIRInputError("expected at least one caption record, found none")
    return records
