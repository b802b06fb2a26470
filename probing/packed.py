"""One prompt at a time, several prompts per forward pass: the same activations, bit for bit, with fewer passes.

The published extraction runs each prompt alone (batch 1). A lone prompt of ~135 tokens reuses each weight matrix
only ~135 times, so the weights stream from memory for every prompt and the matrix multiplies run well below the
machine's rate. Here the prompts' tokens are laid end to end in one row (a *pack* of up to ``PACK_TOKENS``), each
prompt's positions restart at 0, and attention runs once per prompt on that prompt's own slice of queries, keys and
values, through transformers' own SDPA function with no mask (what a lone unpadded prompt gets). Every other layer
works token by token, so each prompt meets exactly the computation it meets alone; only the row count of the matrix
multiplies changes, and float32 BLAS kernels give each row the same result whatever the row count (from
``MIN_PROMPT_TOKENS`` rows on).

That last point belongs to the BLAS library, not to mathematics, so it is checked rather than assumed: the first
pack a model runs in a process is also run prompt by prompt, and packing is used only if every activation is equal
bit for bit; otherwise the extraction goes on one prompt at a time and ``packing_state(model)`` says why.
"""
from __future__ import annotations

import contextvars
import weakref
from typing import Any, Sequence

import torch
from torch import nn

PACK_TOKENS = 1024  # tokens per packed forward pass (more gained nothing on a 2-core CPU: 47.7-48.1 s for 292 prompts)
MIN_PROMPT_TOKENS = 16  # shorter prompts run alone: BLAS may take another kernel for a handful of rows
ATTENTION_NAME = "truthprobe_packed"

_segments: contextvars.ContextVar[Sequence[tuple[int, int]]] = contextvars.ContextVar("truthprobe_packed_segments")
_state: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
_registered = False


def _packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of each prompt over its own slice, as transformers' SDPA function computes a lone prompt's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _segments.get()
    if query.shape[0] != 1 or query.shape[2] != key.shape[2] or segments[-1][1] != query.shape[2]:
        raise RuntimeError(f"packed attention: expected one row of {segments[-1][1]} tokens and no KV cache, found "
                           f"queries {tuple(query.shape)} and keys {tuple(key.shape)}")
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
             for a, b in segments]
    return torch.cat(parts, dim=1), None  # (1, tokens, heads, head_dim), as sdpa_attention_forward returns


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface, AttentionMaskInterface

        AttentionInterface.register(ATTENTION_NAME, _packed_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, lambda *args, **kwargs: None)  # no mask: slices are causal
        _registered = True


def packing_support(model: nn.Module, encoder: Any) -> str | None:
    """None when ``model`` can extract ``encoder``'s prompts packed; else the reason it cannot."""
    config = getattr(model, "config", None)
    if getattr(encoder, "multimodal", False):
        return "a multimodal model (image features enter the prompt)"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention {getattr(config, '_attn_implementation', None)!r} (packing reproduces 'sdpa' only)"
    if not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return "a model whose attention cannot be swapped (it does not use transformers' AttentionInterface)"
    state = _state.get(model, "")
    return state if state.startswith("off") else None


def packing_state(model: nn.Module) -> str:
    """``unchecked``, ``on`` (checked equal to one prompt at a time) or ``off: <why>``."""
    return _state.get(model, "unchecked")


def plan_packs(lengths: Sequence[int], budget: int | None = None) -> list[list[int]]:
    """Indices into ``lengths``, in order, grouped into packs of at most ``budget`` tokens (default ``PACK_TOKENS``;
    a longer prompt, or one shorter than ``MIN_PROMPT_TOKENS``, is a pack of its own)."""
    budget = PACK_TOKENS if budget is None else budget
    packs: list[list[int]] = []
    total, open_pack = 0, False
    for i, n in enumerate(lengths):
        if n > budget or n < MIN_PROMPT_TOKENS:
            packs.append([i])
            open_pack = False
        elif open_pack and total + n <= budget:
            packs[-1].append(i)
            total += n
        else:
            packs.append([i])
            total, open_pack = n, True
    return packs


def packed_inputs(ids: Sequence[Sequence[int]], reads: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                                list[tuple[int, int]]]:
    """(model inputs of one row, the read token's index per prompt, each prompt's [start, stop) in the row)."""
    segments, start = [], 0
    for seq in ids:
        segments.append((start, start + len(seq)))
        start += len(seq)
    input_ids = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)[None]
    position_ids = torch.cat([torch.arange(len(seq)) for seq in ids])[None]
    last = torch.tensor([a + r for (a, _), r in zip(segments, reads)], dtype=torch.long)
    return {"input_ids": input_ids, "position_ids": position_ids}, last, segments


def run_packed(capture: Any, ids: Sequence[Sequence[int]], reads: Sequence[int]) -> torch.Tensor:
    """(P, L, H, D) activations of P prompts (token ids, read positions) in one forward pass of ``capture``'s model."""
    _register()
    model = capture.model
    batch, last, segments = packed_inputs(ids, reads)
    before = model.config._attn_implementation
    token = _segments.set(segments)
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        return capture.run(batch, last, rows=torch.zeros(len(ids), dtype=torch.long))
    finally:
        model.set_attn_implementation(before)
        _segments.reset(token)


def check_packing(model: nn.Module, packed: torch.Tensor, alone: torch.Tensor) -> bool:
    """Compare a pack's activations with its prompts run one at a time (both (P, L, H, D)); record and return whether
    packing may be used for ``model`` in this process."""
    if torch.equal(packed, alone):
        _state[model] = "on"
        return True
    diff = float((packed - alone).abs().max())
    _state[model] = (f"off: a packed prompt's activations differ from the prompt run alone (max {diff:.2g}) on this "
                     "machine's BLAS; one prompt at a time")
    return False


__all__ = ["MIN_PROMPT_TOKENS", "PACK_TOKENS", "check_packing", "packed_inputs", "packing_state", "packing_support",
           "plan_packs", "run_packed"]
