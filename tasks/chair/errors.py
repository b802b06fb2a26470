"""Errors of the CHAIR metric; each says what was expected and what was found."""
from __future__ import annotations

from truthprobe_eval.errors import TruthProbeError


class CHAIRInputError(TruthProbeError, ValueError):
    """A caption file or caption entry is not what CHAIR scores."""


class COCOAnnotationError(TruthProbeError, ValueError):
    """The COCO annotation folder or one of its files is missing or malformed."""


class NLTKDataMissingError(TruthProbeError, LookupError):
    """NLTK data packages that CHAIR needs (tokenizer, tagger, WordNet) are not installed."""

    def __str__(self) -> str:  # LookupError is fine with a plain message; keep it unquoted
        return str(self.args[0]) if self.args else ""
