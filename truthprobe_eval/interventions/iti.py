"""ITI (inference-time intervention, Li et al. 2023): shift the top-K heads along their truthful direction.

For each of the K heads of highest probe accuracy, ``alpha * sigma * direction`` is added to that head's slice
of the attention output projection's input (``o_proj_input``, the site the probes read). Settings
(``method=iti``): ``directions`` (a file from ``truthprobe iti fit``), ``k`` (48), ``alpha`` (15, the published
defaults), ``positions`` and ``control``.

``positions``:
- ``answer`` (default, the published code's choice): in log-likelihood scoring, every position from the answer's
  first token on; in generation, the prompt's last position and then each newly generated token;
- ``all``: every position of every forward call.

Outside a harness (plain ``with iti.attach(model): model(...)``) every position is shifted unless the caller
says otherwise with ``edit_positions``.

``control``: ``random_heads`` (K heads drawn at random, from ``seed``, with their own directions) or
``random_directions`` (the same top-K heads, shifted along the file's seeded random unit vectors, by the
activations' own spread along those vectors).

``apply=bake`` adds the shift to the output projection's bias (created where there is none): W_o @ shift.
This equals the hook with ``positions=all`` (tested) and is not position-equivalent to ``answer``: it shifts
the prompt too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..directions import ITIDirections
from ..errors import InterventionError
from .base import FitData, Intervention, Param, register

POSITIONS = ("answer", "all")
CONTROLS = ("none", "random_heads", "random_directions")


@register
class ITI(Intervention):
    name = "iti"
    title = "ITI"
    rank = 20
    position_aware = True
    controls = {"random_heads": {"control": "random_heads"}, "random_directions": {"control": "random_directions"}}
    control_titles = {"random_heads": "ITI, random heads", "random_directions": "ITI, random directions"}
    artifact, artifact_stem, fit_data = "directions", "iti", "truthfulqa"
    fit_params = (Param("folds", int, 4, help="folds of the probe accuracies that rank the heads (preset ours)"),
                  Param("batch_size", int, 16, help="prompts per extraction batch"))
    params = (
        Param("directions", "path", None, help="ITI direction file (truthprobe iti fit)"),
        Param("k", int, 48, help="number of heads shifted (top-K by probe accuracy)"),
        Param("alpha", float, 15.0, help="shift strength, in units of sigma"),
        Param("positions", str, "answer", POSITIONS, help="answer: from the answer on / new tokens; all"),
        Param("control", str, "none", CONTROLS, help="none, random_heads or random_directions"),
        Param("seed", int, 0, help="seed of the random-heads control"),
    )

    @classmethod
    def check_fit(cls, fit: dict[str, Any], questions_per_half: int | None) -> None:
        if questions_per_half is not None and questions_per_half < fit["folds"]:
            raise InterventionError(f"questions: halves of {questions_per_half}, fewer than the {fit['folds']} folds "
                                    "ITI's probes are cross-validated with; give more questions or fewer folds "
                                    "(iti.folds)")

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Any, data: FitData, folds: int = 4, batch_size: int = 16) -> str:
        """Directions, sigmas and probe accuracies of every head from the TruthfulQA questions ``data.questions``."""
        from ..probing.cache import default_cache_root
        from ..probing.iti import fit_iti

        questions = data.truthfulqa_questions()
        if data.log:
            data.log(f"ITI: fitting directions on {len(questions)} TruthfulQA questions")
        made = fit_iti(model, tokenizer, questions, csv=data.truthfulqa_csv, folds=folds, seed=data.split_seed,
                       cache_dir=default_cache_root(), progress=data.progress, batch_size=batch_size,
                       preset=data.preset, sigma_questions=data.compared_questions,
                       meta={"model_source": data.model_name, "split_seed": data.split_seed, **data.meta})
        return str(made.save(data.path(cls.artifact_stem)))

    def load(self) -> None:
        if not self.settings["directions"]:
            raise InterventionError("directions: method 'iti' needs a direction file (truthprobe iti fit writes one), "
                                    "found none; pass directions=PATH")
        self.data = ITIDirections.load(self.settings["directions"])
        L, H, _ = self.data.shape
        if not 0 <= self.settings["k"] <= L * H:
            raise InterventionError(f"k: expected 0 to {L * H} heads ({L} layers x {H}), found {self.settings['k']}")

    @property
    def identity(self) -> bool:
        return self.settings["k"] == 0 or self.settings["alpha"] == 0

    def heads(self) -> list[tuple[int, int]]:
        s = self.settings
        if s["control"] == "random_heads":
            L, H, _ = self.data.shape
            picked = np.random.default_rng(s["seed"]).choice(L * H, size=s["k"], replace=False)
            return sorted((int(i) // H, int(i) % H) for i in picked)
        return sorted(self.data.top_heads(s["k"]))

    def shifts(self) -> np.ndarray:
        """(L, H, D) the vector added to each head's output (zero for heads not chosen)."""
        s = self.settings
        random_dirs = s["control"] == "random_directions"
        d = self.data.random_directions if random_dirs else self.data.directions
        sigma = self.data.random_sigma if random_dirs else self.data.sigma
        out = np.zeros(self.data.shape)
        for layer, head in self.heads():
            out[layer, head] = s["alpha"] * sigma[layer, head] * d[layer, head]
        return out

    def check_fits(self, model: nn.Module) -> None:
        from ..architectures import locate_heads, model_name

        sites = locate_heads(model)
        self.data.check_fits(sites.num_layers, sites.num_heads, sites.head_dim, model_name(model))

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        L, H, _ = self.data.shape
        if (L, H) != (num_layers, num_heads):
            self.data.check_fits(num_layers, num_heads, self.data.shape[2], name)

    def hooks(self, model: nn.Module) -> list:
        from ..architectures import locate_heads

        sites = locate_heads(model)
        shifts = self.shifts()
        handles = []
        for layer, proj in enumerate(sites.out_projs):
            if not shifts[layer].any():
                continue
            v = torch.as_tensor(shifts[layer].reshape(-1), dtype=proj.weight.dtype, device=proj.weight.device)

            def add(_module, args, v=v):
                x = args[0]
                mask = self.position_mask(x)
                return (x + v if mask is None else x + mask * v, *args[1:])

            handles.append(proj.register_forward_pre_hook(add))
        return handles

    def bake_weights(self, sites: Any) -> dict:
        shifts = self.shifts()
        for layer, proj in enumerate(sites.out_projs):
            if not shifts[layer].any():
                continue
            w = proj.weight
            v = torch.as_tensor(shifts[layer].reshape(-1), dtype=torch.float64, device=w.device)
            delta = (v @ w.double()) if sites.layout.conv1d else (w.double() @ v)
            if getattr(proj, "bias", None) is None:
                proj.bias = nn.Parameter(torch.zeros(delta.shape[0], dtype=w.dtype, device=w.device))
            proj.bias.add_(delta.to(w.dtype))
        return {"heads": [list(h) for h in self.heads()]}

    def provenance(self) -> dict[str, Any]:
        return {"directions_model": self.data.model, "direction": self.data.meta.get("direction"),
                "directions_preset": self.data.meta.get("preset", "ours"),
                "heads": [list(h) for h in self.heads()]}

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        control = described.get("control", "none")
        parts = [f"K={described['k']}", f"alpha={described['alpha']:g}"]
        if described.get("positions", "answer") != "answer":
            parts.append(f"positions={described['positions']}")
        if control == "random_heads":
            parts.append(f"seed={described['seed']}")
        names = {"none": "ITI", "random_heads": "ITI random heads", "random_directions": "ITI random directions"}
        return names[control], ", ".join(parts)

    def label(self) -> str:
        s = self.settings
        control = {"none": "", "random_heads": f", random heads seed {s['seed']}",
                   "random_directions": ", random directions"}[s["control"]]
        return f"ITI (K {s['k']}, alpha {s['alpha']:g}{control})"


__all__ = ["CONTROLS", "ITI", "POSITIONS"]
