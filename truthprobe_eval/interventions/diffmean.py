"""DiffMean: difference-in-means residual steering (the CAA family; the strongest simple steering baseline in the
AxBench and SteeringControl comparisons), with its vector file and its fit, in this one module.

Fit (``truthprobe fit diffmean``, or in ``compare-methods`` on the other TruthfulQA half): for every decoder layer l,
``v_l = mean(residual after layer l at the last token | correct answer) - mean(... | incorrect answer)`` over the
TruthfulQA questions' answers in the ``Q: ... A: ...`` format ITI probes, and ``sigma_l``, the standard deviation of
those residuals along ``v_l / ||v_l||``.

Steering (``method=diffmean``): ``vectors`` (the file), ``layers`` (``middle``: the middle layer; or N, A-B, a comma
list), ``alpha`` (in units of sigma), ``positions`` (``all`` or ``answer``, as ITI's) add
``alpha * sigma_l * v_l / ||v_l||`` to the residual stream after each chosen layer (a forward hook on the decoder
layer). Controls: ``control=random`` (a seeded random direction per layer, the same norm) and
``control=other_layer`` (the direction of the layer half the model away, the same norm).

``apply=bake`` (``positions=all`` only): the shift becomes a bias on the layer's MLP output projection, the last
write into the residual stream in the layer; refused where a norm follows that projection (Gemma's
post-feedforward norm), because there the bias would be normalized away.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InterventionError
from ..artifacts import ArtifactFile
from .base import FitData, Intervention, Param, register

FORMAT = "truthprobe-diffmean"
POSITIONS = ("all", "answer")
CONTROLS = ("none", "random", "other_layer")


@dataclass
class DiffMeanVectors(ArtifactFile):
    """Per decoder layer: the mean difference ``vectors`` (L, hidden) and ``sigma`` (L,) along each."""

    vectors: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    FORMAT, ARRAYS, ERROR = FORMAT, ("vectors", "sigma"), InterventionError
    WHAT, SETTING = "a DiffMean vector file (truthprobe fit diffmean writes one)", "vectors"

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        if self.vectors.ndim != 2 or self.sigma.shape != (self.vectors.shape[0],):
            raise InterventionError(f"diffmean vectors: expected vectors (layers, hidden) and sigma (layers,), found "
                                    f"{self.vectors.shape} and {self.sigma.shape}")
        if not (np.isfinite(self.vectors).all() and np.isfinite(self.sigma).all()):
            raise InterventionError("diffmean vectors: expected finite numbers, found NaN or inf")

    @property
    def units(self) -> np.ndarray:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.where(norms > 0, norms, 1.0)

def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    from ..architectures import _get, locate_heads

    return list(_get(model, locate_heads(model).layers_path))


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def residuals_at_last_token(model: nn.Module, tokenizer: Any, examples: list, batch_size: int = 16,
                            progress: bool = False) -> np.ndarray:
    """(N, L, hidden) residual stream after every decoder layer at each prompt's last token (``qa`` prompts)."""
    from tqdm.auto import tqdm

    from ..probing.extract import last_token_index
    from ..probing.prompts import PromptEncoder

    encoder = PromptEncoder(tokenizer, "qa")
    layers = _decoder_layers(model)
    device = next(model.parameters()).device
    out = np.zeros((len(examples), len(layers), 0), dtype=np.float32)
    rows: list[np.ndarray] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="diffmean residuals", unit="batch", disable=not progress):
        batch = {k: v.to(device) for k, v in encoder.encode(examples[start:start + batch_size]).items()}
        last = last_token_index(batch["attention_mask"])
        taken: list[torch.Tensor] = []

        def keep(_module, _args, output):
            h = _hidden(output)
            taken.append(h[torch.arange(h.shape[0], device=h.device), last].float().cpu())

        handles = [layer.register_forward_hook(keep) for layer in layers]
        try:
            model(**batch, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        rows.append(torch.stack(taken, dim=1).numpy())
    return np.concatenate(rows, axis=0) if rows else out


def mean_difference(X: np.ndarray, y: np.ndarray) -> DiffMeanVectors:
    """v_l = mean(X[y == 1, l]) - mean(X[y == 0, l]); sigma_l = std of X[:, l] along v_l / ||v_l||."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise InterventionError("diffmean: expected both correct and incorrect answers to fit on, found one kind")
    vectors = X[y].mean(axis=0) - X[~y].mean(axis=0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    units = vectors / np.where(norms > 0, norms, 1.0)
    sigma = np.einsum("nlh,lh->nl", X.astype(np.float64), units).std(axis=0)
    return DiffMeanVectors(vectors, sigma)


@register
class DiffMean(Intervention):
    name = "diffmean"
    title = "DiffMean"
    rank = 50
    position_aware = True
    controls = {"random": {"control": "random"}, "other_layer": {"control": "other_layer"}}
    control_titles = {"random": "DiffMean, random direction (same norm)",
                      "other_layer": "DiffMean, another layer's vector (same norm)"}
    artifact, artifact_stem, fit_data = "vectors", "diffmean", "truthfulqa"
    fit_params = (Param("batch_size", int, 16, help="prompts per extraction batch"),)
    params = (
        Param("vectors", "path", None, help="DiffMean vector file (truthprobe fit diffmean)", objects=(DiffMeanVectors,)),
        Param("layers", str, "middle", help="decoder layers steered: middle, N, A-B or a comma list"),
        Param("alpha", float, 4.0, help="shift strength, in units of sigma along the vector"),
        Param("positions", str, "all", POSITIONS, help="all: every position; answer: from the answer on / new tokens"),
        Param("control", str, "none", CONTROLS, help="none, random (a random direction) or other_layer"),
        Param("seed", int, 0, help="seed of the random-direction control"),
    )

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Any, data: FitData, batch_size: int = 16) -> str:
        from ..architectures import describe
        from ..probing.data import example_record, truthfulqa_examples

        examples = truthfulqa_examples(data.truthfulqa_csv, data.truthfulqa_questions())
        if data.log:
            data.log(f"DiffMean: mean residual differences from {len({e.group for e in examples})} TruthfulQA "
                     f"questions ({len(examples)} answers)")
        X = residuals_at_last_token(model, tokenizer, examples, batch_size, data.progress)
        made = mean_difference(X, np.array([e.label for e in examples]))
        made.meta = {**describe(model), "data": "truthfulqa", "prompt_format": "qa", "site": "residual after layer",
                     "token": "last", "questions": sorted({int(e.group) for e in examples}),
                     "examples": example_record(examples), "model_source": data.model_name, **data.meta}
        return str(made.save(data.path(cls.artifact_stem)))

    def load(self) -> None:
        given = self.settings["vectors"]
        if not given:
            raise InterventionError("vectors: method 'diffmean' needs a vector file (truthprobe fit diffmean writes "
                                    "one), found none; pass vectors=PATH")
        self.data = given if isinstance(given, DiffMeanVectors) else DiffMeanVectors.load(given)
        self.layer_list = self._layers(self.data.vectors.shape[0])

    def _layers(self, num_layers: int) -> list[int]:
        from .rve import parse_layers

        text = self.settings["layers"]
        return [num_layers // 2] if text == "middle" else parse_layers(text, num_layers)

    @property
    def identity(self) -> bool:
        return self.settings["alpha"] == 0

    def check_fits(self, model: nn.Module) -> None:
        from ..architectures import locate_heads, model_name

        sites = locate_heads(model)
        L, hidden = self.data.vectors.shape
        if (L, hidden) != (sites.num_layers, sites.hidden_size):
            raise InterventionError(f"vectors: fit on a model with {L} layers of width {hidden}, but {model_name(model)} "
                                    f"has {sites.num_layers} of width {sites.hidden_size}")

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        if self.data.vectors.shape[0] != num_layers:
            raise InterventionError(f"vectors: fit on a model with {self.data.vectors.shape[0]} layers, but {name} has "
                                    f"{num_layers}")

    def shifts(self) -> dict[int, np.ndarray]:
        """Layer -> the vector added to the residual stream after it."""
        s = self.settings
        units, sigma = self.data.units, self.data.sigma
        L = units.shape[0]
        rng = np.random.default_rng(s["seed"])
        out = {}
        for layer in self.layer_list:
            if s["control"] == "random":
                d = rng.standard_normal(units.shape[1])
                d /= np.linalg.norm(d)
            elif s["control"] == "other_layer":
                d = units[(layer + L // 2) % L]
            else:
                d = units[layer]
            out[layer] = s["alpha"] * sigma[layer] * d
        return out

    def hooks(self, model: nn.Module) -> list:
        layers = _decoder_layers(model)
        handles = []
        for layer, shift in self.shifts().items():
            module = layers[layer]
            param = next(module.parameters())
            v = torch.as_tensor(shift, dtype=param.dtype, device=param.device)

            def add(_module, _args, output, v=v):
                h = _hidden(output)
                mask = self.position_mask(h)
                h = h + v if mask is None else h + mask * v
                return (h, *output[1:]) if isinstance(output, tuple) else h

            handles.append(module.register_forward_hook(add))
        return handles

    def bake(self, model: nn.Module) -> nn.Module:
        """The base class's bake, after the checks only DiffMean needs (positions, a norm after the MLP)."""
        if self.identity:
            return model
        if self.settings["positions"] != "all":
            raise InterventionError("apply=bake: diffmean bakes only with positions=all (a bias shifts every "
                                    "position); use apply=hook")
        layers = _decoder_layers(model)
        for layer in self.layer_list:
            if any("post_feedforward" in name for name, _ in layers[layer].named_children()):
                raise InterventionError(f"apply=bake: layer {layer} normalizes the MLP output before the residual add "
                                        "(a post-feedforward norm), so a bias there is not the residual shift; use "
                                        "apply=hook")
        return super().bake(model)

    def bake_weights(self, sites: Any) -> dict:
        for layer, shift in self.shifts().items():
            proj = sites.mlp_outs[layer]
            w = proj.weight
            v = torch.as_tensor(shift, dtype=w.dtype, device=w.device)
            if getattr(proj, "bias", None) is None:
                proj.bias = nn.Parameter(torch.zeros(v.shape[0], dtype=w.dtype, device=w.device))
            proj.bias.add_(v)
        return {"layers": self.layer_list}

    def provenance(self) -> dict[str, Any]:
        return {"vectors_model": self.data.meta.get("model"), "steered_layers": self.layer_list}

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        names = {"none": "DiffMean", "random": "DiffMean, random direction", "other_layer": "DiffMean, another layer's vector"}
        parts = [f"layers={described.get('layers')}", f"alpha={described.get('alpha'):g}"]
        if described.get("positions", "all") != "all":
            parts.append(f"positions={described['positions']}")
        return names[described.get("control", "none")], ", ".join(parts)

    def label(self) -> str:
        s = self.settings
        control = {"none": "", "random": f", random direction seed {s['seed']}",
                   "other_layer": ", another layer's vector"}[s["control"]]
        return f"DiffMean (layers {s['layers']}, alpha {s['alpha']:g}{control})"


__all__ = ["CONTROLS", "DiffMean", "DiffMeanVectors", "FORMAT", "POSITIONS", "mean_difference",
           "residuals_at_last_token"]
