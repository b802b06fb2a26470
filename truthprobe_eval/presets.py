"""The two presets every fitted method offers (``--preset paper|ours``); light to import.

``paper`` reproduces the method's published code (trainer, data, splits, parsing) as read from that code; ``ours``
is this project's own default, better founded where the two differ (each method's preset says why). The presets
themselves live beside their method: ``probing/truthprobe_preset.py`` (Truth Scores and the HaluEval judge) and
``probing/iti.py`` (ITI directions).
"""
from __future__ import annotations

from .errors import TruthProbeError

PRESET_NAMES = ("paper", "ours")


class PresetError(TruthProbeError, ValueError):
    """A preset name that does not exist."""


def check_preset(name: str) -> str:
    if name not in PRESET_NAMES:
        raise PresetError(f"preset: expected one of {', '.join(PRESET_NAMES)}, found {name!r}")
    return name


def halueval_parse(name: str) -> str:
    """The HaluEval judge's reply rule under a preset (the TruthProbe paper's regex, or ours)."""
    from .probing.truthprobe_preset import truthprobe_preset

    return truthprobe_preset(check_preset(name)).parse


__all__ = ["PRESET_NAMES", "PresetError", "check_preset", "halueval_parse"]
