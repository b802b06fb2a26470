"""Truth-neuron suppression (Li et al. 2025): scale the selected MLP neurons' activations.

``method=neurons``: ``neurons`` (a neuron score file from ``truthprobe neurons find``), ``factor`` (0: suppress,
the paper's edit; between 0 and 1 dampens, above 1 amplifies), ``control`` and ``seed``. The activations are
scaled at the input of every layer's MLP output projection (``mlp_activation``), on every position.

``control=random``: as many neurons per layer as the file selects there, drawn with ``seed`` from that layer's
unselected neurons (from all of them where too few are left).

``apply=bake`` scales the matching input columns of the output projection (rows of GPT-2's Conv1D weight):
``down_proj(x * s) = (W * s) x``, equal to the hook up to float rounding (tested).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InterventionError
from ..neuron_scores import NeuronScores
from .base import Intervention, Param, register

CONTROLS = ("none", "random")


@register
class NeuronSuppression(Intervention):
    name = "neurons"
    controls = {"random": {"control": "random"}}
    params = (
        Param("neurons", "path", None, help="neuron score file (truthprobe neurons find)", objects=(NeuronScores,)),
        Param("factor", float, 0.0, help="activation multiplier of the selected neurons (0 suppresses)"),
        Param("control", str, "none", CONTROLS, help="none, or random: as many random neurons per layer"),
        Param("seed", int, 0, help="seed of the random-neurons control"),
    )

    def load(self) -> None:
        given = self.settings["neurons"]
        if given is None:
            raise InterventionError("neurons: method 'neurons' needs a neuron score file (truthprobe neurons find "
                                    "writes one), found none; pass neurons=PATH")
        self.data = given if isinstance(given, NeuronScores) else NeuronScores.load(given)
        if self.settings["factor"] < 0:
            raise InterventionError(f"factor: expected a multiplier >= 0, found {self.settings['factor']}")

    @property
    def identity(self) -> bool:
        return self.settings["factor"] == 1 or self.data.count == 0

    def chosen(self) -> dict[int, np.ndarray]:
        """Layer -> the neuron indices scaled (the file's selection, or the random control's)."""
        picked = self.data.indices()
        if self.settings["control"] != "random":
            return picked
        rng = np.random.default_rng(self.settings["seed"])
        out = {}
        for layer, idx in picked.items():
            pool = np.flatnonzero(~self.data.selected[layer])
            if len(pool) < len(idx):
                pool = np.arange(self.data.shape[1])
            out[layer] = np.sort(rng.choice(pool, size=len(idx), replace=False))
        return out

    def check_fits(self, model: nn.Module) -> None:
        from ..architectures import locate_heads, model_name

        sites = locate_heads(model)
        sites.modules("mlp_activation")
        self.data.check_fits(sites.num_layers, sites.mlp_width, model_name(model))

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        if self.data.shape[0] != num_layers:
            self.data.check_fits(num_layers, self.data.shape[1], name)

    def _scales(self, width: int, dtype: torch.dtype, device: torch.device) -> dict[int, torch.Tensor]:
        out = {}
        for layer, idx in self.chosen().items():
            s = torch.ones(width, dtype=dtype, device=device)
            s[torch.as_tensor(idx, device=device)] = self.settings["factor"]
            out[layer] = s
        return out

    def hooks(self, model: nn.Module) -> list:
        from ..architectures import locate_heads

        sites = locate_heads(model)
        projs = sites.modules("mlp_activation")
        w = projs[0].weight
        handles = []
        for layer, s in self._scales(sites.mlp_width, w.dtype, w.device).items():
            def scale(_module, args, s=s):
                return (args[0] * s, *args[1:])

            handles.append(projs[layer].register_forward_pre_hook(scale))
        return handles

    def bake_weights(self, sites: Any) -> None:
        projs = sites.modules("mlp_activation")
        w = projs[0].weight
        for layer, s in self._scales(sites.mlp_width, w.dtype, w.device).items():
            weight = projs[layer].weight
            weight.mul_(s[:, None] if sites.layout.conv1d else s[None, :])

    def provenance(self) -> dict[str, Any]:
        counts = {str(layer): int(len(idx)) for layer, idx in self.chosen().items()}
        return {"neurons_model": self.data.model, "n_neurons": int(sum(counts.values())), "layer_counts": counts,
                "p_threshold": self.data.meta.get("p_threshold"), "top_n": self.data.meta.get("top_n")}

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        name = "truth neurons, random" if described.get("control") == "random" else "truth neurons"
        parts = [f"n={described.get('n_neurons')}", f"factor={described['factor']:g}"]
        if described.get("control") == "random":
            parts.append(f"seed={described['seed']}")
        return name, ", ".join(parts)

    def label(self) -> str:
        s = self.settings
        what = "random neurons" if s["control"] == "random" else "truth neurons"
        verb = "suppressed" if s["factor"] == 0 else f"x{s['factor']:g}"
        seed = f", seed {s['seed']}" if s["control"] == "random" else ""
        return f"{self.data.count} {what} {verb}{seed}"


__all__ = ["CONTROLS", "NeuronSuppression"]
