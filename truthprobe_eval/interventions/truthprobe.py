"""TruthProbe: soft-gate every attention head, ``g[l, h] = 1 + alpha * norm(s)[l, h]`` (the maths: ``gating``).

Settings (``method=truthprobe``, the default): ``scores`` (a Truth Score file: ours, a published ``.npy`` or
``cv5_head_metrics.csv``; required for ``gate`` truthprobe / inverse / shuffled), ``alpha`` (4.5), ``norm``
(centered, minmax, raw), ``site`` (o_proj_output, the published site, or o_proj_input), ``gate`` (truthprobe,
inverse, random, shuffled, none) and ``seed`` (of the random and shuffled gates). ``apply=bake`` scales W_o.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
from torch import nn

from ..errors import GateConfigError, ScoreFileError
from ..gate_config import DEFAULT_ALPHA, DEFAULT_NORM, GATE_NAMES, KINDS, NORMS, PAPER_KINDS, SITES
from ..scores import TruthScores
from .base import FitData, Intervention, Param, register

NEEDS_SCORES = ("truthprobe", "inverse", "shuffled", "paper_inverse")
OWN_SCORES, BASE_SCORES = "TruthProbe (own scores)", "TruthProbe (base-LLM scores)"  # leaderboard rows
SEEDED = ("random", "shuffled", "paper_random")


@register
class TruthProbeGate(Intervention):
    name = "truthprobe"
    title = "TruthProbe"
    rank = 10
    error = GateConfigError
    controls = {"random": {"gate": "random"}, "shuffled": {"gate": "shuffled"},
                "paper_random": {"gate": "paper_random"}, "paper_inverse": {"gate": "paper_inverse"}}
    control_titles = {"random": "strength-matched random gate (ours)", "shuffled": "shuffled gate (ours)",
                      "paper_random": "paper's random gate (1 + U[-1,1], redrawn per call)",
                      "paper_inverse": "paper's inverse gate (minmax 1/s)"}
    artifact, artifact_stem, fit_data = "scores", "scores", "halueval"
    selection_grid = tuple({"norm": norm, "alpha": alpha} for norm, alpha in (  # the paper's published grid
        ("centered", 2.5), ("centered", 4.5), ("centered", 6.0), ("centered", 7.5),
        ("minmax", 0.1), ("minmax", 0.2), ("minmax", 0.3)))
    fit_params = (Param("rows", int, 292, help="HaluEval rows 0..rows-1 probed (the paper's 292)"),)
    params = (
        Param("scores", "path", None, help="Truth Score file (.json, published .npy or cv5_head_metrics.csv)",
              objects=(TruthScores, np.ndarray)),
        Param("alpha", float, DEFAULT_ALPHA, help="gate strength"),
        Param("norm", str, DEFAULT_NORM, NORMS, help="per-layer normalization of the scores"),
        Param("site", str, "o_proj_output", SITES, help="where the gate multiplies"),
        Param("gate", str, "truthprobe", KINDS, help="truthprobe, or a control: ours (random: strength-matched, "
              "shuffled, inverse) or the paper's ablations (paper_random, paper_inverse), or none"),
        Param("seed", int, 0, help="seed of the random, shuffled and paper_random gates"),
    )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "TruthProbeGate":
        if "gate" in kwargs and kwargs["gate"] is None:  # lm-eval's parser turns the string "none" into None
            kwargs = {**kwargs, "gate": "none"}
        given = kwargs.get("scores")
        if given is not None and not isinstance(given, (str, os.PathLike, TruthScores, np.ndarray)):
            raise ScoreFileError(f"scores: expected a path to a .json, .npy or .csv score file, found {given!r}")
        return super().from_kwargs(**kwargs)

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Any, data: FitData, rows: int = 292) -> str:
        """Truth Scores of every head from HaluEval rows [0, rows), probed as ``data.preset`` says."""
        from ..probing.cache import default_cache_root
        from ..probing.data import halueval_examples
        from ..probing.pipeline import probe_model
        from ..probing.truthprobe_preset import truthprobe_preset

        p = truthprobe_preset(data.preset)
        if data.log:
            data.log(f"TruthProbe: probing HaluEval rows 0-{rows - 1} ({p.name} preset)")
        examples = halueval_examples(None, offset=0, n=rows, **p.data_options())
        scores = probe_model(model, tokenizer, examples, cache_dir=default_cache_root(), progress=data.progress,
                             seed=p.fold_seed, trainer=p.trainer, fold_rule=p.fold_rule, batch_size=p.batch_size,
                             meta={"model_source": data.model_name, "data": "halueval", "offset": 0, "n_rows": rows,
                                   **p.meta(), **data.meta})
        return str(scores.save(data.path(cls.artifact_stem)))

    def load(self) -> None:
        from ..scores import load_scores

        given = self.settings["scores"]
        self.scores: TruthScores | None = None
        self.source: str | None = None
        if isinstance(given, (TruthScores, np.ndarray)):
            self.scores = load_scores(given)
            self.source = str(self.scores.meta.get("source_file") or "<in memory>")
        elif given:
            self.scores, self.source = TruthScores.load(given), str(given)
        elif self.kind in NEEDS_SCORES:
            raise GateConfigError(
                f"scores: gate={self.kind!r} needs Truth Scores, found none; pass scores=PATH (a truthprobe .json, a "
                "published .npy or cv5_head_metrics.csv), or use gate=none / gate=random")

    @property
    def kind(self) -> str:
        return self.settings["gate"]

    @property
    def identity(self) -> bool:
        return self.kind == "none"

    def scores_for(self, model: nn.Module) -> TruthScores:
        """The scores checked against ``model`` (zeros of its shape for the random gate, which ignores them)."""
        from ..architectures import locate_heads, model_name

        sites = locate_heads(model)
        if self.scores is None:
            return TruthScores(np.zeros(sites.shape), meta={"model": model_name(model)})
        self.scores.check_fits(sites.num_layers, sites.num_heads, model_name(model))
        return self.scores

    def check_fits(self, model: nn.Module) -> None:
        self.scores_for(model)

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        """Shape check from a config alone (before weights load)."""
        if self.scores is not None:
            self.scores.check_fits(num_layers, num_heads, name)

    def gates(self, model: nn.Module) -> np.ndarray:
        from ..gating import gate_values

        s = self.settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gate_values(self.scores_for(model), s["alpha"], s["norm"], s["gate"], s["seed"])

    def hooks(self, model: nn.Module) -> list:
        from ..gating import redrawn_generator, register_gate_hooks, resolve_gates

        s = self.settings
        sites, gates = resolve_gates(model, self.scores_for(model), s["alpha"], s["norm"], s["site"], s["gate"], s["seed"])
        return register_gate_hooks(sites, redrawn_generator(s["gate"], s["seed"]) or gates, s["site"])

    def bake(self, model: nn.Module) -> nn.Module:
        """Gates folded into the output projections (``gating.fold_gates``), recorded with their values."""
        from ..gating import fold_gates

        if self.identity:
            return model
        s = self.settings
        gates = fold_gates(model, self.scores_for(model), s["alpha"], s["norm"], s["site"], s["gate"], s["seed"])
        self.record_bake(model, {"gates": gates.tolist()})
        return model

    def provenance(self) -> dict[str, Any]:
        return {"scores": self.source, "scores_model": None if self.scores is None else self.scores.model,
                "negative_gates": self.negative_gates()}

    def negative_gates(self) -> int | None:
        """How many gates are negative (those heads' outputs sign-flipped, not damped): reported, not warned."""
        from ..gating import gate_values

        if self.scores is None or self.identity or self.kind == "paper_random":
            return None
        s = self.settings
        return int((gate_values(self.scores, s["alpha"], s["norm"], s["gate"], s["seed"], warn_negative=False) < 0).sum())

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        gate = described.get("gate", "truthprobe")
        parts = [] if gate in PAPER_KINDS else [f"alpha={described['alpha']:g}", f"norm={described['norm']}"]
        if described.get("site", "o_proj_output") != "o_proj_output":
            parts.append(f"site={described['site']}")
        if gate in SEEDED:
            parts.append(f"seed={described['seed']}")
        return GATE_NAMES[gate], ", ".join(parts)

    @classmethod
    def lineage_row(cls, name: str, described: dict[str, Any], model: str) -> str:
        """TruthProbe rows say whose scores they used: the evaluated model's own, or another model's of its lineage
        (the base LLM's, on a fine-tuned or multimodal descendant)."""
        from ..models import canonical_model_name

        scores_model = described.get("scores_model")
        if name != cls.title or not scores_model or scores_model == "unknown model":
            return name
        return OWN_SCORES if canonical_model_name(scores_model) == canonical_model_name(model) else BASE_SCORES

    def label(self) -> str:
        s = self.settings
        if self.identity:
            return "baseline"
        what = GATE_NAMES[s["gate"]]
        seed = f"seed {s['seed']}" if s["gate"] in SEEDED else ""
        if s["gate"] in PAPER_KINDS:
            return f"{what}" + (f", {seed}" if seed else "")
        return f"{what} ({s['norm']}, alpha {s['alpha']:g}" + (f", {seed})" if seed else ")")


def bake(model: nn.Module, scores: Any, alpha: float = DEFAULT_ALPHA, norm: str = DEFAULT_NORM, site: str = "o_proj_output",
         kind: str = "truthprobe", seed: int = 0) -> nn.Module:
    """Fold TruthProbe's gates into the weights in place (zero run-time cost); recorded in
    ``model.config.truthprobe_interventions`` (its ``describe()`` and the gate values). Returns ``model``."""
    from ..gating import REDRAWN_KINDS

    if kind in REDRAWN_KINDS:  # said before the settings are parsed: the reason is the gate kind, not the files
        raise GateConfigError(f"gate={kind!r} is drawn anew at every forward call: it has no fixed values to fold "
                              "into the weights; run it with hooks (apply=hooks)")
    made = TruthProbeGate.from_kwargs(scores=scores, alpha=alpha, norm=norm, site=site, gate=kind, seed=seed,
                                      apply="bake")
    return made.bake(model)


__all__ = ["BASE_SCORES", "NEEDS_SCORES", "OWN_SCORES", "TruthProbeGate", "bake"]
