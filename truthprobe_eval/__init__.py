"""truthprobe-eval: head-level Truth Scores and soft head gating for LLMs and MLLMs.

Names are imported lazily (PEP 562), so that ``truthprobe chair`` or ``truthprobe scores show`` start
without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ARCHITECTURES": "architectures",
    "HeadLayout": "architectures",
    "describe": "architectures",
    "locate_heads": "architectures",
    "GateConfigError": "errors",
    "ScoreFileError": "errors",
    "ShapeMismatchError": "errors",
    "TruthProbeError": "errors",
    "UnsupportedArchitectureError": "errors",
    "bake": "interventions.truthprobe",
    "gate": "gating",
    "gate_values": "gating",
    "normalize": "gating",
    "DEFAULT_MODEL": "models",
    "load_model": "models",
    "resolve_model_path": "models",
    "NeuronScores": "neuron_scores",
    "TruthScores": "scores",
    "load_scores": "scores",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'truthprobe_eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
