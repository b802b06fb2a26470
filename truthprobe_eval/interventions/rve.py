"""RVE (relation-aware visual enhancement): boost the last query's attention to the evidence the ARS heads pick.

After "Mitigating Action-Relation Hallucinations in LVLMs via Relation-aware Visual Enhancement". In each of the
chosen ``layers``, on the last query position (the prompt's last token, then each generated one, also when a
generation recomputes without a KV cache), with S the pre-softmax scores over the span (image tokens, or a
context paragraph):

- S_sens = mean of S over the layer's top-``k`` ARS heads, S_non = over its bottom-``k``;
- m = floor(``alpha`` * N_span); M = top-m(S_sens) AND NOT top-m(S_non);
- every head: S~ = S + ``beta`` * |S| * M, then the softmax.

``method=rve``: ``ars`` (an ARS score file, ``truthprobe ars score``), ``layers`` ("14", "12-16" or "10,14"),
``k`` 5, ``beta`` 1.0, ``alpha`` 0.05, ``variant`` (``rve``; ``global``: M = the whole span in every head, the
PAI-style baseline, which needs no ARS file), ``span`` (``image``: the model's own image token id, from the
architecture table; ``context``: the text between ``span_start`` and ``span_end``, default the HaluEval
knowledge paragraph of the TruthProbe prompt), ``control`` (``random_heads``: the sensitive and non-sensitive
heads drawn at random per layer, ``seed``).

It runs through transformers' attention-function interface (``attention_edit``), so grouped-query attention, the
KV cache and left padding are the model's own; a shared-prefix cache is not used (``uses_prefix_cache``). The
method is defined for generation: in a log-likelihood pass (one call over prompt and continuation) only the
final position is edited.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import InterventionError
from .base import Intervention, Param, register

VARIANTS = ("rve", "global")
SPANS = ("image", "context")
CONTROLS = ("none", "random_heads")
KNOWLEDGE_START, KNOWLEDGE_END = "#Knowledge:", "#Question#:"


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


def span_mask(last_scores: torch.Tensor, sens: list[int], non: list[int], alpha: float, variant: str) -> torch.Tensor:
    """(N,) 0/1 mask M over one row's N span positions from its (H, N) last-query scores."""
    n = last_scores.shape[-1]
    if variant == "global":
        return torch.ones(n, dtype=last_scores.dtype, device=last_scores.device)
    m = int(math.floor(alpha * n))
    mask = torch.zeros(n, dtype=torch.bool, device=last_scores.device)
    if m == 0:
        return mask.to(last_scores.dtype)
    enh = last_scores[sens].mean(dim=0).topk(m).indices
    den = last_scores[non].mean(dim=0).topk(m).indices
    mask[enh] = True
    mask[den] = False
    return mask.to(last_scores.dtype)


class RowEdit:
    """The score edit of one layer: on the query rows the tracker names (the prompt's last position and each
    generated one), S + beta * |S| * M over the span, M from ``span_mask``."""

    def __init__(self, settings: dict[str, Any], tracker: Any, sens: list[int], non: list[int]) -> None:
        self.settings, self.tracker, self.sens, self.non = settings, tracker, sens, non

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
        for b in range(B):
            idx = span[b].nonzero().squeeze(-1)
            if idx.numel() == 0:
                continue
            for q in range(R):
                last = scores[b, :, q, idx]
                m = span_mask(last, self.sens, self.non, s["alpha"], s["variant"])
                scores[b, :, q, idx] = last + s["beta"] * last.abs() * m
        return scores


@register
class RVE(Intervention):
    name = "rve"
    controls = {"random_heads": {"control": "random_heads"}}
    uses_prefix_cache = False
    params = (
        Param("ars", "path", None, help="ARS score file (truthprobe ars score); not needed for variant=global"),
        Param("layers", str, "14", help="decoder layers edited: N, A-B or a comma list"),
        Param("k", int, 5, help="sensitive (top-k ARS) and non-sensitive (bottom-k) heads per layer"),
        Param("beta", float, 1.0, help="boost: S + beta * |S| on the masked span positions"),
        Param("alpha", float, 0.05, help="share of the span's positions in each top-m set, m = floor(alpha N)"),
        Param("variant", str, "rve", VARIANTS, help="rve, or global (every span position, every head)"),
        Param("span", str, "image", SPANS, help="image (the model's image tokens) or context (marked text)"),
        Param("span_start", str, KNOWLEDGE_START, help="span=context: the text right before the span"),
        Param("span_end", str, KNOWLEDGE_END, help="span=context: the text right after the span"),
        Param("control", str, "none", CONTROLS, help="none, or random_heads (heads drawn at random per layer)"),
        Param("seed", int, 0, help="seed of the random-heads control"),
    )

    def load(self) -> None:
        from ..scores import TruthScores

        s = self.settings
        self.layer_list = parse_layers(s["layers"])
        if not 0 <= s["alpha"] <= 1 or s["beta"] < 0 or s["k"] < 1:
            raise InterventionError(f"expected 0 <= alpha <= 1, beta >= 0 and k >= 1, found alpha={s['alpha']}, "
                                    f"beta={s['beta']}, k={s['k']}")
        self.scores = TruthScores.load(s["ars"]) if s["ars"] else None
        if s["variant"] == "rve" and s["control"] == "none":  # the ARS heads are needed
            if self.scores is None:
                raise InterventionError("ars: method 'rve' needs an ARS score file (truthprobe ars score writes one), "
                                        "found none; pass ars=PATH, or variant=global / control=random_heads")
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

    def heads(self, num_layers: int, num_heads: int) -> dict[int, tuple[list[int], list[int]]]:
        """Layer -> (sensitive heads, non-sensitive heads)."""
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
            out[layer] = ([int(h) for h in order[: s["k"]]], [int(h) for h in order[::-1][: s["k"]]])
        return out

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
        handle = tracker.hook(model)
        try:
            with edit_attention(model, {layer: RowEdit(self.settings, tracker, *heads.get(layer, ([], [])))
                                        for layer in self.layer_list}):
                yield
        finally:
            handle.remove()

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ars_model": self.scores.model if self.scores is not None else None}
        if self.scores is not None and self.settings["variant"] == "rve":
            out["heads"] = {str(layer): {"sensitive": sens, "non_sensitive": non}
                            for layer, (sens, non) in self.heads(*self.scores.shape).items()}
        return out

    @classmethod
    def row(cls, described: dict[str, Any]) -> tuple[str, str]:
        name = {"rve": "RVE", "global": "global attention boost"}[described.get("variant", "rve")]
        if described.get("control") == "random_heads":
            name += ", random heads"
        parts = [f"layers={described['layers']}", f"beta={described['beta']:g}"]
        if described.get("variant", "rve") == "rve":
            parts += [f"K={described['k']}", f"alpha={described['alpha']:g}"]
        return name, ", ".join(parts)

    def label(self) -> str:
        s = self.settings
        if s["variant"] == "global":
            return f"global boost (layers {s['layers']}, beta {s['beta']:g})"
        control = f", random heads seed {s['seed']}" if s["control"] == "random_heads" else ""
        return f"RVE (layers {s['layers']}, K {s['k']}, beta {s['beta']:g}, alpha {s['alpha']:g}{control})"


__all__ = ["CONTROLS", "RVE", "RowEdit", "SPANS", "VARIANTS", "parse_layers", "span_mask"]
