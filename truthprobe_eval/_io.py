"""File helpers: atomic writes (a reader never sees a half-written file, an interrupted write keeps the old
one) and a JSON Lines reader whose errors name the line."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-empty line of a ``.jsonl`` (or ``.jsonl.gz``) file; a line that is
    not JSON raises ``error`` naming the file and the line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}, line {number}: not valid JSON ({exc})") from None


def read_json_records(path: str | os.PathLike, error: type[Exception] = ValueError) -> list[Any]:
    """The records of a file that is one JSON list, or JSON lines (one value a line, blank lines allowed); invalid
    JSON raises ``error`` naming the file (and the line)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as exc:
            raise error(f"{path}: expected one JSON list (or JSON lines), found invalid JSON ({exc})") from None
    return [value for _, value in read_jsonl(path, error)]


def read_format_json(path: str | os.PathLike, fmt: str, required: Sequence[str], error: type[Exception],
                     what: str, setting: str) -> dict[str, Any]:
    """A JSON object file of our format ``fmt`` holding the keys ``required``; ``what`` names the file and
    ``setting`` the argument that gave it, for the not-found message."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{setting}: expected {what}, found no file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: expected JSON (corrupt or truncated file?), found {exc}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path}: expected format {fmt!r}, found {found!r}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{path}: expected arrays {', '.join(required)}, missing {', '.join(missing)}")
    return data
