"""Soft head gating: ``g[l, h] = 1 + alpha * norm(s)[l, h]``, applied by hooks (``gate``) or baked into W_o.

Sites:
- ``o_proj_output`` (default, the published code): the attention block's output after the output
  projection, split into H equal chunks, chunk h scaled by g[l, h]. Baking scales W_o's output rows and bias.
- ``o_proj_input``: the true per-head outputs before the output projection (what the probes read).
  Baking scales W_o's input columns.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Union

import numpy as np
import torch
from torch import nn

from .architectures import HeadSites, locate_heads, model_name
from .errors import GateConfigError
from .gate_config import DEFAULT_ALPHA, DEFAULT_NORM, KINDS, NORMS, REDRAWN_KINDS, SITES, check_gate_settings  # noqa: E402,F401
from .scores import TruthScores, load_scores

ScoresLike = Union[TruthScores, np.ndarray, str, os.PathLike]  # a score object, an array or a score file


def normalize(scores: np.ndarray, norm: str = "centered") -> np.ndarray:
    """Per-layer normalization of a (layers, heads) array: ``centered``, ``minmax`` or ``raw``."""
    s = np.asarray(scores, dtype=np.float64)
    if norm == "centered":
        return s - s.mean(axis=1, keepdims=True)
    if norm == "minmax":
        lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
        return (s - lo) / (hi - lo + 1e-6)
    if norm == "raw":
        return s.copy()
    raise GateConfigError(f"norm: expected one of {', '.join(NORMS)}, found {norm!r}")


def gate_values(
    scores: ScoresLike,
    alpha: float,
    norm: str = "centered",
    kind: str = "truthprobe",
    seed: int = 0,
    warn_negative: bool = True,
) -> np.ndarray:
    """The (layers, heads) gate array.

    ``truthprobe``: 1 + alpha * norm(s). ``inverse``: 1 - alpha * norm(s) (boosts the heads TruthProbe damps).
    ``random``: 1 + alpha * u with u uniform in [-1, 1] from ``seed`` (same shape, scores ignored).
    ``shuffled``: the ``truthprobe`` gate values permuted among the heads of each layer (from ``seed``): the same
    amount of boost per layer on other heads, which separates "which heads" from "how much".
    ``paper_inverse``: the paper's inverse ablation, ``minmax(1 / (s + 1e-6))`` per layer (no "1 +", alpha unused).
    ``paper_random``: the paper's random ablation, ``1 + u``, u uniform in [-1, 1], alpha unused; it is drawn anew
    at every forward call (``register_gate_hooks``), so this array is only the first draw of a ``seed`` generator.
    ``none``: all ones.
    """
    alpha = check_gate_settings(alpha, norm, "o_proj_output", kind)
    s = load_scores(scores).values
    if kind == "none":
        g = np.ones_like(s)
    elif kind == "random":
        g = 1.0 + alpha * np.random.default_rng(seed).uniform(-1.0, 1.0, size=s.shape)
    elif kind == "paper_inverse":
        g = normalize(1.0 / (s + 1e-6), "minmax")
    elif kind == "paper_random":
        generator = torch.Generator().manual_seed(int(seed))
        g = np.stack([1.0 + paper_random_draw(s.shape[1], generator).numpy() for _ in range(s.shape[0])])
    else:
        sign = -1.0 if kind == "inverse" else 1.0
        g = 1.0 + sign * alpha * normalize(s, norm)
        if kind == "shuffled":
            g = np.random.default_rng(seed).permuted(g, axis=1)
    negative = int((g < 0).sum())
    if negative and warn_negative:
        warnings.warn(
            f"{negative} of {g.size} gates are negative (alpha={alpha}, norm={norm!r}, gate={kind!r}): "
            "those heads' outputs are sign-flipped, not just damped",
            stacklevel=2,
        )
    return g


def resolve_gates(model: nn.Module, scores: ScoresLike, alpha: float, norm: str, site: str, kind: str,
                  seed: int) -> tuple[HeadSites, np.ndarray]:
    """The model's head sites and the gate array, after every setting and the scores' shape are checked."""
    alpha = check_gate_settings(alpha, norm, site, kind)
    sites = locate_heads(model)
    s = load_scores(scores)
    s.check_fits(sites.num_layers, sites.num_heads, model_name(model))
    return sites, gate_values(s, alpha, norm, kind, seed, warn_negative=False)  # reports count them instead


def paper_random_draw(num_heads: int, generator: torch.Generator) -> torch.Tensor:
    """One layer call's ``u``: ``torch.rand(H) * 2 - 1`` from ``generator`` (float64 on the CPU)."""
    return torch.rand(num_heads, generator=generator, dtype=torch.float64) * 2 - 1


def _feature_scale(gates_row: np.ndarray, width: int, like: torch.Tensor) -> torch.Tensor:
    """Per-feature multipliers: each head's gate repeated over its chunk of ``width / H`` features."""
    chunk = width // len(gates_row)
    return torch.as_tensor(np.repeat(gates_row, chunk), dtype=like.dtype, device=like.device)


def _redrawn_hook(site: str, width: int, num_heads: int, generator: torch.Generator):
    """A hook that scales head chunks by ``1 + u``, u drawn anew from ``generator`` at every call."""
    def scale(like: torch.Tensor) -> torch.Tensor:
        row = 1.0 + paper_random_draw(num_heads, generator)
        return torch.repeat_interleave(row, width // num_heads).to(dtype=like.dtype, device=like.device)

    if site == "o_proj_output":
        return lambda _m, _a, out: out * scale(out)
    return lambda _m, args: (args[0] * scale(args[0]), *args[1:])


def redrawn_generator(kind: str, seed: int) -> "torch.Generator | None":
    """A fresh generator seeded with ``seed`` for a gate redrawn at every call (``paper_random``), else None."""
    return torch.Generator().manual_seed(int(seed)) if kind in REDRAWN_KINDS else None


def register_gate_hooks(sites: HeadSites, gates: "np.ndarray | torch.Generator", site: str) -> list:
    """One hook per output projection scaling each head's chunk by its gate; returns the handles (remove to restore).

    ``gates``: a (layers, heads) array, or a seeded ``torch.Generator`` for the paper's random gate, redrawn at every
    call of every layer in call order (one generator for the model, so a run is reproducible for a seed)."""
    if isinstance(gates, torch.Generator):
        width = sites.hidden_size if site == "o_proj_output" else sites.in_features
        handles = []
        for proj in sites.out_projs:
            hook = _redrawn_hook(site, width, sites.num_heads, gates)
            handles.append(proj.register_forward_hook(hook) if site == "o_proj_output"
                           else proj.register_forward_pre_hook(hook))
        return handles
    handles = []
    try:
        for layer, proj in enumerate(sites.out_projs):
            if site == "o_proj_output":
                scale = _feature_scale(gates[layer], sites.hidden_size, proj.weight)
                handles.append(proj.register_forward_hook(lambda _m, _a, out, s=scale: out * s))
            else:
                scale = _feature_scale(gates[layer], sites.in_features, proj.weight)
                handles.append(proj.register_forward_pre_hook(lambda _m, args, s=scale: (args[0] * s, *args[1:])))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


@contextmanager
def gate(model: nn.Module, scores: ScoresLike, alpha: float = DEFAULT_ALPHA, norm: str = DEFAULT_NORM, site: str = "o_proj_output",
         kind: str = "truthprobe", seed: int = 0) -> Iterator[np.ndarray]:
    """Gate every head of ``model`` while the block runs; yields the gate array. Hooks are removed on exit."""
    sites, gates = resolve_gates(model, scores, alpha, norm, site, kind, seed)
    handles = register_gate_hooks(sites, redrawn_generator(kind, seed) or gates, site)
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def fold_gates(model: nn.Module, scores: ScoresLike, alpha: float = DEFAULT_ALPHA, norm: str = DEFAULT_NORM,
               site: str = "o_proj_output", kind: str = "truthprobe", seed: int = 0) -> np.ndarray:
    """Fold the gates into the output-projection weights in place (zero run-time cost); returns the (L, H) gates.

    ``bake`` (``truthprobe_eval.bake``, the method's) calls this and records what it did in the model's config.
    """
    if kind in REDRAWN_KINDS:
        raise GateConfigError(f"gate={kind!r} is drawn anew at every forward call: it has no fixed values to fold into "
                              "the weights; run it with hooks (apply=hooks)")
    sites, gates = resolve_gates(model, scores, alpha, norm, site, kind, seed)
    in_dim, out_dim = (0, 1) if sites.layout.conv1d else (1, 0)
    for layer, proj in enumerate(sites.out_projs):
        w = proj.weight
        if site == "o_proj_output":
            scale = _feature_scale(gates[layer], sites.hidden_size, w)
            w.mul_(scale.unsqueeze(1) if out_dim == 0 else scale.unsqueeze(0))
            if getattr(proj, "bias", None) is not None:
                proj.bias.mul_(scale)
        else:
            scale = _feature_scale(gates[layer], sites.in_features, w)
            w.mul_(scale.unsqueeze(1) if in_dim == 0 else scale.unsqueeze(0))
    return gates
