"""The file every fitted artifact is (ITI directions, truth neurons, DiffMean vectors, ...): one JSON object,
``{"format", "version", "meta", <array>: nested lists, ...}``, written atomically, read back with its format
checked and every missing array named. A format is a subclass naming its ``FORMAT``, ``ARRAYS``, ``ERROR`` and
how a missing file is described (``WHAT``, ``SETTING``); save and load are written once, here.

Truth Scores (``scores.py``) read more than their own format (the published ``.npy`` and CSV) and keep their own
loader; they write the same kind of file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ._io import atomic_write_text, read_format_json
from .errors import TruthProbeError


class ArtifactFile:
    """Mixin for dataclasses whose fields are ``ARRAYS`` and ``meta``."""

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    ARRAYS: ClassVar[Sequence[str]] = ()
    ERROR: ClassVar[type[Exception]] = TruthProbeError
    WHAT: ClassVar[str] = "a file written by truthprobe-eval"  # "an ITI direction file (truthprobe iti fit writes one)"
    SETTING: ClassVar[str] = "file"  # the argument that names the file, for the not-found message
    ALLOW_NAN: ClassVar[bool] = False

    meta: dict[str, Any]

    def arrays(self) -> dict[str, Any]:
        """Each array as JSON lists (formats round or convert here)."""
        return {name: np.asarray(getattr(self, name)).tolist() for name in self.ARRAYS}

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "version": self.VERSION, "meta": self.meta, **self.arrays()}

    def before_save(self) -> None:
        """Fill in metadata that describes the arrays (counts, shapes) right before writing."""

    def save(self, path: "str | os.PathLike") -> Path:
        self.before_save()
        return atomic_write_text(path, json.dumps(self.to_dict(), allow_nan=self.ALLOW_NAN) + "\n")

    @classmethod
    def load(cls, path: "str | os.PathLike"):
        path = Path(path)
        data = read_format_json(path, cls.FORMAT, list(cls.ARRAYS), cls.ERROR, cls.WHAT, cls.SETTING)
        try:
            return cls(**{k: data[k] for k in cls.ARRAYS}, meta={**(data.get("meta") or {}), "source_file": str(path)})
        except (cls.ERROR, ValueError, TypeError) as exc:
            raise cls.ERROR(f"{path}: {exc}") from None


__all__ = ["ArtifactFile"]
