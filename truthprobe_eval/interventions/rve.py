"""RVE (relation-aware visual enhancement): boost the last query's attention to the evidence the ARS heads pick.

After "Mitigating Action-Relation Hallucinations in LVLMs via Relation-aware Visual Enhancement". In each of the
chosen ``layers``, on the last query position (the prompt's last token, then each generated one, also when a
generation recomputes without a KV cache), with S the pre-softmax scores over the span (image tokens, or a
context paragraph):

- S_sens = mean of S over the layer's top-``k`` ARS heads, S_non = over its bottom-``k``;
- m = floor(``alpha`` * N_span); M_enh = top-m(S_sens), M_den = top-m(S_non); M = M_enh AND NOT M_den;
- every head of the layer: S~ = S + ``beta`` * |S| * M, then the softmax.

Which is the paper's and which is ours:

- **The paper's RVE is the default** (``variant=rve``, ``heads=all``, ``denoise=true``): the mask applied to all
  heads of the selected layer. The paper's ablation table calls this configuration "Global" (the mask in every
  head of the layer, as opposed to its "Sensitive-only" ablation); it is *not* our ``whole_span`` baseline below.
- The paper's ablations: ``heads=sensitive`` ("Sensitive-only"): the same M, but the edit applied only to the
  layer's top half of the heads by ARS, ceil(H / 2) of its H heads (ceil, so that an odd head count keeps the
  middle head and a one-head layer is still edited; SmolLM2's 9 heads give 5); ``denoise=false`` ("no
  denoising"): M = M_enh, without removing M_den. The head-knockout check of ARS (zeroing the top-K ARS heads
  against K random ones) is ``truthprobe_eval.analysis.knockout`` (``truthprobe ars knockout``).
- Ours, not the paper's: ``variant=whole_span``: M = the whole span in every head, with no ARS at all, the
  PAI-style attention boost, a baseline for how much of RVE is the choice of positions. ``variant=global`` is the
  deprecated name of this baseline (it named it after a word the paper uses for something else): it is still
  accepted, so that old settings and result files rebuild, and maps to ``whole_span`` (a ``DeprecationWarning``;
  ``describe()`` records ``whole_span``).

``method=rve``: ``ars`` (an ARS score file, ``truthprobe ars score``), ``layers`` ("14", "12-16" or "10,14"),
``k`` 5, ``beta`` 1.0, ``alpha`` 0.05, ``heads`` (``all``, or ``sensitive``), ``denoise`` (true, or false),
``variant`` (``rve``, or ``whole_span``, which needs no ARS file), ``span`` (``image``: the model's own image token
id, from the architecture table; ``context``: the text between ``span_start`` and ``span_end``, default the
HaluEval knowledge paragraph of the TruthProbe prompt), ``control`` (``random_heads``: the heads ranked at random
per layer instead of by ARS, ``seed``: the sensitive, non-sensitive and, with ``heads=sensitive``, edited heads
alike).

It runs through transformers' attention-function interface (``attention_edit``), so grouped-query attention, the
KV cache and left padding are the model's own; a shared-prefix cache is not used (``uses_prefix_cache``). The
method is defined for generation: in a log-likelihood pass (one call over prompt and continuation) only the
final position is edited.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import InterventionError
from .base import FitData, Intervention, Param, register

VARIANTS = ("rve", "whole_span")
#: old variant names -> the current ones (still accepted, with a DeprecationWarning)
DEPRECATED_VARIANTS = {"global": "whole_span"}
HEAD_SETS = ("all", "sensitive")
SPANS = ("image", "context")
CONTROLS = ("none", "random_heads")
KNOWLEDGE_START, KNOWLEDGE_END = "#Knowledge:", "#Question#:"
WHOLE_SPAN_NAME = "whole-span attention boost (PAI-style baseline, no ARS)"
SENSITIVE_ONLY = "sensitive heads only"
NO_DENOISING = "no denoising"


def parse_layers(text: str, num_layers: int | None = None) -> list[int]:
    """``"14"``, ``"12-16"`` (inclusive) or ``"10,14,18"`` -> sorted layer indices."""
    out: set[int] = set()
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise InterventionError(f"layers: expected N, A-B or a comma list, found {text!r}") from None
    if not out:
        raise InterventionError(f"layers: expected at least one layer, found {text!r}")
    if num_layers is not None and not all(0 <= layer < num_layers for layer in out):
        raise InterventionError(f"layers: expected 0 to {num_layers - 1}, found {text!r}")
    return sorted(out)


def canonical_variant(variant: Any) -> Any:
    """The current name of a variant (``global`` -> ``whole_span``); other values unchanged."""
    return DEPRECATED_VARIANTS.get(variant, variant)


def sensitive_count(num_heads: int) -> int:
    """How many heads ``heads=sensitive`` edits: the top half by ARS, ceil(H / 2)."""
    return int(math.ceil(num_heads / 2))


def _flag(value: Any, default: bool = True) -> bool:
    """A recorded boolean (JSON true/false, or lm-eval's string) as a bool; absent: ``default``."""
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no")
    return bool(value)


def span_mask(last_scores: torch.Tensor, sens: list[int], non: list[int], alpha: float, variant: str = "rve",
              denoise: bool = True) -> torch.Tensor:
    """(N,) 0/1 mask M over one row's N span positions from its (H, N) last-query scores.

    ``rve``: M_enh = top-m(mean over ``sens``), M_den = top-m(mean over ``non``), m = floor(alpha N); M = M_enh AND
    NOT M_den, or M_enh alone with ``denoise=False``. ``whole_span`` (old name ``global``): every position.
    """
    n = last_scores.shape[-1]
    if canonical_variant(variant) == "whole_span":
        return torch.ones(n, dtype=last_scores.dtype, device=last_scores.device)
    m = int(math.floor(alpha * n))
    mask = torch.zeros(n, dtype=torch.bool, device=last_scores.device)
    if m == 0:
        return mask.to(last_scores.dtype)
    enh = last_scores[sens].mean(dim=0).topk(m).indices
    mask[enh] = True
    if denoise:
        den = last_scores[non].mean(dim=0).topk(m).indices
        mask[den] = False
    return mask.to(last_scores.dtype)


class RowEdit:
    """The score edit of one layer: on the query rows the tracker names (the prompt's last position and each
    generated one), S + beta * |S| * M over the span, M from ``span_mask``, in the heads ``edited`` (None: every
    head of the layer, the paper's RVE)."""

    def __init__(self, settings: dict[str, Any], tracker: Any, sens: list[int], non: list[int],
                 edited: list[int] | None = None) -> None:
        self.settings, self.tracker, self.sens, self.non, self.edited = settings, tracker, sens, non, edited

    def rows(self, q_len: int, k_len: int) -> range:
        return self.tracker.queries(q_len, k_len)

    def __call__(self, scores: torch.Tensor, _module: nn.Module) -> torch.Tensor:
        """``scores``: (B, H, R, Tk), the rows to edit."""
        s = self.settings
        B, _, R, Tk = scores.shape
        span = self.tracker.keys(B, Tk, scores.device)
        if not span.any():
            return scores
        scores = scores.clone()
        edited = None if self.edited is None else torch.as_tensor(self.edited, dtype=torch.long, device=scores.device)
        for b in range(B):
            idx = span[b].nonzero().squeeze(-1)
            if idx.numel() == 0:
                continue
            for q in range(R):
                last = scores[b, :, q, idx]  # (H, N)
                m = span_mask(last, self.sens, self.non, s["alpha"], s["variant"], _flag(s.get("denoise")))
                boosted = last + s["beta"] * last.abs() * m
                if edited is not None:  # heads=sensitive: the other heads keep their scores
                    boosted = last.index_copy(0, edited, boosted.index_select(0, edited))
                scores[b, :, q, idx] = boosted
        return scores


@register
class RVE(Intervention):
    name = "rve"
    title = "RVE"
    rank = 40
    controls = {"random_heads": {"control": "random_heads"}}
    control_titles = {"random_heads": "RVE, random heads"}
    # the paper's two ablations, and our PAI-style baseline (not the paper's "Global")
    ablations = {"sensitive": ("RVE, sensitive heads only (paper's ablation)", {"heads": "sensitive"}),
                 "no_denoise": ("RVE, no denoising (paper's ablation)", {"denoise": False}),
                 "global": ("whole-span context boost (PAI-style baseline, ours)",
                            {"variant": "whole_span", "ars": "", "heads": "all", "denoise": True})}
    artifact, artifact_stem, fit_data = "ars", "ars", "halueval"
    fit_params = (Param("rows", int, 200, help="HaluEval rows 0..rows-1 whose text pairs give ARS"),)
    bake_refusal = "its edit depends on each input's attention pattern"
    uses_prefix_cache = False
    params = (
        Param("ars", "path", None, help="ARS score file (truthprobe ars score); not needed for variant=whole_span"),
        Param("layers", str, "14", help="decoder layers edited: N, A-B or a comma list"),
        Param("k", int, 5, help="sensitive (top-k ARS) and non-sensitive (bottom-k) heads per layer"),
        Param("beta", float, 1.0, help="boost: S + beta * |S| on the masked span positions"),
        Param("alpha", float, 0.05, help="share of the span's positions in each top-m set, m = floor(alpha N)"),
        Param("heads", str, "all", HEAD_SETS,
              help="heads the edit is applied to: all (the paper's RVE, its 'Global'), or sensitive (the paper's "
                   "'Sensitive-only' ablation: the layer's top ceil(H/2) heads by ARS)"),
        Param("denoise", bool, True, help="true: M = M_enh minus M_den (the paper); false: M = M_enh (its ablation)"),
        Param("variant", str, "rve", VARIANTS,
              help="rve, or whole_span (ours: every span position, every head, no ARS: the PAI-style baseline; "
                   "'global' is its deprecated name)"),
        Param("span", str, "image", SPANS, help="image (the model's image tokens) or context (marked text)"),
        Param("span_start", str, KNOWLEDGE_START, help="span=context: the text right before the span"),
        Param("span_end", str, KNOWLEDGE_END, help="span=context: the text right after the span"),
        Param("control", str, "none", CONTROLS, help="none, or random_heads (heads ranked at random per layer)"),
        Param("seed", int, 0, help="seed of the random-heads control"),
    )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "RVE":
        """As every method's, plus compatibility paths: ``variant=global`` (deprecated) is read as ``whole_span``; a
        recorded ``describe()`` of versions before the ``heads`` setting, whose ``heads`` was the ARS heads per layer
        (now ``ars_heads``), is read as ``heads=all`` (what those versions did); an integer ``layers`` (lm-eval's
        parser turns ``layers=14`` into 14) is read as its text."""
        kwargs = dict(kwargs)
        layers = kwargs.get("layers")
        if isinstance(layers, int) and not isinstance(layers, bool):  # lm-eval's parser reads layers=14 as 14
            kwargs["layers"] = str(layers)
        if isinstance(kwargs.get("heads"), dict):
            kwargs.pop("heads")
        variant = kwargs.get("variant")
        if isinstance(variant, str) and variant in DEPRECATED_VARIANTS:
            warnings.warn(f"rve: variant={variant!r} is deprecated, read as variant={DEPRECATED_VARIANTS[variant]!r} "
                          "(the whole span boosted in every head, the PAI-style baseline; the RVE paper's 'Global' "
                          "is the default heads=all)", DeprecationWarning, stacklevel=2)
            kwargs["variant"] = DEPRECATED_VARIANTS[variant]
        return super().from_kwargs(**kwargs)

    @classmethod
    def settings_for(cls, model: nn.Module) -> dict[str, Any]:
        """The middle five layers; the knowledge paragraph as the span on a text-only model (the image otherwise);
        K = min(5, H // 4), so that the sensitive and non-sensitive sets take at most half the heads."""
        from ..architectures import locate_heads
        from ..models import is_multimodal_model

        sites = locate_heads(model)
        middle = sites.num_layers // 2
        return {"layers": f"{max(middle - 2, 0)}-{min(middle + 2, sites.num_layers - 1)}",
                "span": "image" if is_multimodal_model(model) else "context", "k": max(1, min(5, sites.num_heads // 4))}

    @classmethod
    def fit(cls, model: nn.Module, tokenizer: Any, data: FitData, rows: int = 200) -> str:
        """ARS of every head from HaluEval text pairs (right / hallucinated answer, the same knowledge paragraph as
        the span), rows [0, rows)."""
        from ..probing.ars import ars_scores, halueval_pairs
        from ..probing.data import load_halueval
        from ..spans import context_span

        if data.log:
            data.log(f"RVE: ARS of every head from HaluEval rows 0-{rows - 1} (span: the knowledge paragraph)")
        find = context_span(tokenizer, KNOWLEDGE_START, KNOWLEDGE_END)
        device = next(model.parameters()).device

        def encode(pair, text):
            return tokenizer(text, return_tensors="pt").to(device)

        made = ars_scores(model, encode, halueval_pairs(load_halueval(None, 0, rows)), find, progress=data.progress,
                          meta={"model_source": data.model_name, "span": "context", "halueval_rows": rows, **data.meta})
        return str(made.save(data.path(cls.artifact_stem)))

    def load(self) -> None:
        from ..scores import TruthScores

        s = self.settings
        self.layer_list = parse_layers(s["layers"])
        if not 0 <= s["alpha"] <= 1 or s["beta"] < 0 or s["k"] < 1:
            raise InterventionError(f"expected 0 <= alpha <= 1, beta >= 0 and k >= 1, found alpha={s['alpha']}, "
                                    f"beta={s['beta']}, k={s['k']}")
        if s["variant"] == "whole_span" and s["heads"] != "all":
            raise InterventionError("heads=sensitive: variant=whole_span boosts every head without ARS; the "
                                    "sensitive-heads ablation is of variant=rve")
        if s["variant"] == "whole_span" and not s["denoise"]:
            raise InterventionError("denoise=false: variant=whole_span has no denoising mask to drop (M is the whole "
                                    "span); the no-denoising ablation is of variant=rve")
        self.scores = TruthScores.load(s["ars"]) if s["ars"] else None
        if s["variant"] == "rve" and s["control"] == "none":  # the ARS heads are needed
            if self.scores is None:
                raise InterventionError("ars: method 'rve' needs an ARS score file (truthprobe ars score writes one), "
                                        "found none; pass ars=PATH, or variant=whole_span / control=random_heads")
            kind = self.scores.meta.get("kind")
            if kind != "ars":
                raise InterventionError(f"ars: expected a score file with meta.kind 'ars', found {kind!r} in {s['ars']}")
        if self.scores is not None:
            self._check_layers(self.scores.num_layers, self.scores.num_heads)
        self._tokenizer = None

    def _check_layers(self, num_layers: int, num_heads: int) -> None:
        parse_layers(self.settings["layers"], num_layers)
        if self.settings["variant"] == "rve" and 2 * self.settings["k"] > num_heads:
            raise InterventionError(f"k: expected at most {num_heads // 2} (top-k and bottom-k of {num_heads} heads), "
                                    f"found {self.settings['k']}")

    @property
    def identity(self) -> bool:
        return self.settings["beta"] == 0 or (self.settings["variant"] == "rve" and self.settings["alpha"] == 0)

    def bind_tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def ranking(self, num_layers: int, num_heads: int) -> dict[int, list[int]]:
        """Layer -> its heads, most ARS-sensitive first (ties: lower head first); ``control=random_heads``: a random
        order per layer, drawn from ``seed`` layer by layer. Empty without ARS scores (``variant=whole_span``)."""
        s = self.settings
        out = {}
        rng = np.random.default_rng(s["seed"])
        for layer in self.layer_list:
            if s["control"] == "random_heads":
                order = rng.permutation(num_heads)
            else:
                if self.scores is None:
                    return {}
                order = np.lexsort((np.arange(num_heads), -self.scores.values[layer]))
            out[layer] = [int(h) for h in order]
        return out

    def heads(self, num_layers: int, num_heads: int) -> dict[int, tuple[list[int], list[int]]]:
        """Layer -> (sensitive heads, non-sensitive heads): the top-k and the bottom-k of ``ranking``."""
        k = self.settings["k"]
        return {layer: (order[:k], order[::-1][:k]) for layer, order in self.ranking(num_layers, num_heads).items()}

    def edited_heads(self, num_layers: int, num_heads: int) -> dict[int, list[int] | None]:
        """Layer -> the heads the edit is applied to: None (all of them, ``heads=all``), or with ``heads=sensitive``
        the top ceil(H / 2) of ``ranking``, sorted."""
        if self.settings["heads"] == "all":
            return {layer: None for layer in self.layer_list}
        top = sensitive_count(num_heads)
        return {layer: sorted(order[:top]) for layer, order in self.ranking(num_layers, num_heads).items()}

    def check_fits(self, model: nn.Module) -> None:
        from ..architectures import locate_heads, model_name

        sites = locate_heads(model)
        self.check_shape(sites.num_layers, sites.num_heads, model_name(model))

    def check_shape(self, num_layers: int, num_heads: int, name: str) -> None:
        if self.scores is not None:
            self.scores.check_fits(num_layers, num_heads, name)
        self._check_layers(num_layers, num_heads)

    def _finder(self, model: nn.Module):
        from ..spans import context_span, image_span

        if self.settings["span"] == "image":
            return image_span(model)
        if self._tokenizer is None:
            raise InterventionError("span=context: the intervention needs the tokenizer to find the marked text; "
                                    "the harnesses pass it (bind_tokenizer)")
        return context_span(self._tokenizer, self.settings["span_start"], self.settings["span_end"])

    @contextmanager
    def edits(self, model: nn.Module) -> Iterator[None]:
        """The score edits of every chosen layer, with the span tracker's hook (attention, not activations)."""
        from ..architectures import locate_heads
        from ..attention_edit import SpanTracker, edit_attention

        sites = locate_heads(model)
        tracker = SpanTracker(self._finder(model))
        heads = self.heads(sites.num_layers, sites.num_heads)
        edited = self.edited_heads(sites.num_layers, sites.num_heads)
        handle = tracker.hook(model)
        try:
            with edit_attention(model, {layer: RowEdit(self.settings, tracker, *heads.get(layer, ([], [])),
                                                       edited.get(layer))
                                        for layer in self.layer_list}):
                yield
        finally:
            handle.remove()

    def provenance(self) -> dict[str, Any]:
        """The ARS file's model and, with ARS heads, ``ars_heads``: per layer the sensitive and non-sensitive heads
        (and with ``heads=sensitive`` the ``edited`` ones). Versions before the ``heads`` setting recorded these
        under ``heads``."""
        out: dict[str, Any] = {"ars_model": self.scores.model if self.scores is not None else None}
        if self.scores is not None and self.settings["variant"] == "rve":
            shape = self.scores.shape
            edited = self.edited_heads(*shape)
            out["ars_heads"] = {str(layer): {"sensitive": sens, "non_sensitive": non,
                                             **({"edited": edited[layer]} if edited.get(layer) is not None else {})}
                                for layer, (sens, non) in self.heads(*shape).items()}
        return out

    @staticmethod
    def _ablations(described: dict[str, Any]) -> list[str]:
        """The paper's ablations a (recorded) setting names, e.g. ["sensitive heads only", "no denoising"]."""
        out = []
        if described.get("heads") == "sensitive":  # recorded dicts (older versions' ARS heads) are heads=all
            out.append(SENSITIVE_ONLY)
        if not _flag(described.get("denoise")):
            out.append(NO_DENOISING)
        return out

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        """"RVE", "RVE, sensitive heads only", "RVE, no denoising", "RVE, random heads", or the whole-span baseline
        (also for results recorded as ``variant=global``)."""
        variant = canonical_variant(described.get("variant", "rve"))
        if variant == "whole_span":
            return WHOLE_SPAN_NAME, f"layers={described['layers']}, beta={described['beta']:g}"
        name = ", ".join(["RVE", *cls._ablations(described)])
        if described.get("control") == "random_heads":
            name += ", random heads"
        parts = [f"layers={described['layers']}", f"beta={described['beta']:g}", f"K={described['k']}",
                 f"alpha={described['alpha']:g}"]
        return name, ", ".join(parts)

    def label(self) -> str:
        s = self.settings
        if s["variant"] == "whole_span":
            return f"{WHOLE_SPAN_NAME[:-1]}; layers {s['layers']}, beta {s['beta']:g})"
        name = ", ".join(["RVE", *self._ablations(s)])
        control = f", random heads seed {s['seed']}" if s["control"] == "random_heads" else ""
        return f"{name} (layers {s['layers']}, K {s['k']}, beta {s['beta']:g}, alpha {s['alpha']:g}{control})"


__all__ = ["CONTROLS", "DEPRECATED_VARIANTS", "HEAD_SETS", "NO_DENOISING", "RVE", "RowEdit", "SENSITIVE_ONLY", "SPANS",
           "VARIANTS", "WHOLE_SPAN_NAME", "canonical_variant", "parse_layers", "sensitive_count", "span_mask"]
