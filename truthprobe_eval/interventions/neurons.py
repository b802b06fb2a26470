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

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InterventionError
from ..neuron_scores import NeuronScores
from .base import FitData, Intervention, Param, register

CONTROLS = ("none", "random")


@register
class NeuronSuppression(Intervention):
    name = "neurons"
    title = "truth neurons"
    rank = 30
    controls = {"random": {"control": "random"}}
    control_titles = {"random": "random neurons"}
    artifact, artifact_stem, fit_data = "neurons", "neurons", "truthfulqa"
    fit_params = (Param("steps", int, 20, help="integrated-gradients steps"),
                  Param("p_threshold", float, 0.05, help="t-test level of the selection"),
                  Param("top_n", int, None, help="keep at most N neurons, by mean attribution (default: all that pass)"))
    params = (
        Param("neurons", "path", None, help="neuron score file (truthprobe neurons find)", objects=(NeuronScores,)),
        Param("factor", float, 0.0, help="activation multiplier of the selected neurons (0 suppresses)"),
        Param("control", str, "none", CONTROLS, help="none, or random: as many random neurons per layer"),
        Param("seed", int, 0, help="seed of the random-neurons control"),
    )

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Any, data: FitData, steps: int = 20, p_threshold: float = 0.05,
            top_n: int | None = None) -> str:
        """Truth neurons from the TruthfulQA questions ``data.questions`` (integrated gradients, t-test selection),
        with a map of where they sit (``.png`` beside the file)."""
        from ..neuron_scores import selection
        from ..plots import plot_neuron_map
        from ..probing.neurons import find_neurons

        selection(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), p_threshold, top_n)  # bad settings fail first
        questions = data.truthfulqa_questions()
        if data.log:
            data.log(f"truth neurons: attributing {len(questions)} TruthfulQA questions")
        made = find_neurons(model, tokenizer, questions, csv=data.truthfulqa_csv, seed=data.split_seed,
                            progress=data.progress, steps=steps, p_threshold=p_threshold, top_n=top_n,
                            meta={"model_source": data.model_name, "split_seed": data.split_seed, **data.meta})
        path = made.save(data.path(cls.artifact_stem))
        if data.log:
            data.log(f"      {made.count} neurons selected (p < {made.meta['p_threshold']}; chance alone passes "
                     f"{made.meta['expected_by_chance']:.0f}, Benjamini-Hochberg keeps {made.meta['n_bh']})")
        plot_neuron_map(made, path.with_suffix(".png"))
        return str(path)

    @classmethod
    def comparison_notes(cls, fitted: dict[str, list[str]], out: Any) -> list[dict[str, Any]]:
        """Where the truth neurons sit against the top Truth-Score heads, by layer, per neuron file (with
        TruthProbe's scores in the comparison); the neuron maps redrawn with the heads beside them."""
        from ..neuron_scores import layer_overlap
        from ..plots import plot_neuron_map
        from ..scores import TruthScores

        score_files = fitted.get("truthprobe") or []
        if not score_files:
            return []
        scores = TruthScores.load(score_files[0])
        found = []
        for i, path in enumerate(dict.fromkeys(fitted.get(cls.name) or [])):
            neurons = NeuronScores.load(path)
            plot_neuron_map(neurons, Path(path).with_suffix(".png"), head_scores=scores)
            if neurons.shape[0] == scores.num_layers and neurons.count:
                o = {"neurons": path, **layer_overlap(neurons, scores)}
                o["text"] = (f"Truth neurons (file {i}: {sum(o['neuron_layer_counts'])} neurons) against the "
                             f"top-{o['top_heads']} Truth-Score heads, by layer: the {o['top_layers']} layers with most "
                             f"neurons {o['neuron_top_layers']}, with most top heads {o['head_top_layers']}; shared "
                             f"{o['shared_layers']} (Jaccard {o['jaccard']:.2f}, chance of at least that overlap "
                             f"p={o['p_overlap_at_least']:.2g}); Spearman rho of the per-layer counts "
                             f"{o['spearman_rho']:.2f} (p={o['spearman_p']:.2g}).")
                found.append(o)
        return found

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
