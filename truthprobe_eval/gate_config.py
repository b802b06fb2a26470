"""Gate settings and their validation; light to import (no torch), so CLIs and adapters check early."""
from __future__ import annotations

import math

from .errors import GateConfigError

NORMS = ("centered", "minmax", "raw")
DEFAULT_ALPHA, DEFAULT_NORM = 4.5, "centered"  # TruthProbe's defaults, written once (its Param and the functions)
KINDS = ("truthprobe", "random", "inverse", "shuffled", "paper_random", "paper_inverse", "none")
# the TruthProbe paper's ablations (its modified modeling_llama.py): alpha plays no part in them
PAPER_KINDS = ("paper_random", "paper_inverse")
REDRAWN_KINDS = ("paper_random",)  # drawn anew at every forward call: no fixed gate array, nothing to bake
# what each gate is, in every table and plot (the controls named for what they are)
GATE_NAMES = {"truthprobe": "TruthProbe", "inverse": "inverse gate (ours: 1 - alpha norm(s))",
              "random": "strength-matched random gate (ours: 1 + alpha U[-1,1], fixed)",
              "shuffled": "shuffled gate (ours: TruthProbe's gates permuted within each layer)",
              "paper_random": "paper's random gate (1 + U[-1,1], redrawn every call, alpha unused)",
              "paper_inverse": "paper's inverse gate (minmax 1/s per layer, alpha unused)"}

SITES = ("o_proj_output", "o_proj_input")


def check_gate_settings(alpha: float, norm: str = "centered", site: str = "o_proj_output", kind: str = "truthprobe") -> float:
    """Validate gate settings before anything heavy happens; returns alpha as a float."""
    try:
        alpha_f = float(alpha)
    except (TypeError, ValueError):
        raise GateConfigError(f"alpha: expected a finite number, found {alpha!r}") from None
    if not math.isfinite(alpha_f):
        raise GateConfigError(f"alpha: expected a finite number, found {alpha!r}")
    if norm not in NORMS:
        raise GateConfigError(f"norm: expected one of {', '.join(NORMS)}, found {norm!r}")
    if site not in SITES:
        raise GateConfigError(f"site: expected one of {', '.join(SITES)}, found {site!r}")
    if kind not in KINDS:
        raise GateConfigError(f"gate: expected one of {', '.join(KINDS)}, found {kind!r}")
    return alpha_f
