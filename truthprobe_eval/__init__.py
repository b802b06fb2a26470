"""truthprobe-eval: head-level Truth Scores and soft head gating for LLMs and MLLMs."""
from __future__ import annotations

__version__ = "0.1.0"

from .architectures import ARCHITECTURES, HeadLayout, describe, locate_heads  # noqa: E402
from .errors import (  # noqa: E402
    GateConfigError,
    ScoreFileError,
    ShapeMismatchError,
    TruthProbeError,
    UnsupportedArchitectureError,
)
from .gating import bake, gate, gate_values, normalize  # noqa: E402
from .models import DEFAULT_MODEL, load_model, resolve_model_path  # noqa: E402
from .scores import TruthScores, load_scores  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MODEL",
    "GateConfigError",
    "HeadLayout",
    "ScoreFileError",
    "ShapeMismatchError",
    "TruthProbeError",
    "TruthScores",
    "UnsupportedArchitectureError",
    "bake",
    "describe",
    "gate",
    "gate_values",
    "load_model",
    "load_scores",
    "locate_heads",
    "normalize",
    "resolve_model_path",
]
