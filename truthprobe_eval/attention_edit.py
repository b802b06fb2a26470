"""Editing the attention pattern through transformers' own extension point, the attention-function interface.

``edit_attention(model, edits)`` registers one attention function (``AttentionInterface.register``, with sdpa's
mask function through ``AttentionMaskInterface``) and switches the language model's config to it for the block.
In the layers named in ``edits`` it calls ``edits[layer](scores, module)`` on the pre-softmax scores (B, H, Tq,
Tk) (grouped-query keys already repeated, the mask already added) before the softmax; every other layer runs the
implementation the model had (sdpa with exactly its masks, or eager). An edit with a ``rows(q_len, k_len)``
method gets only those query rows: on an sdpa model the layer runs sdpa and recomputes just those rows eagerly
(RVE edits one row per step, so it costs little); otherwise the layer runs eagerly throughout. Nothing in the model files is
patched, the KV cache and padding masks are the model's own, and on exit the model is as before.

``SpanTracker`` keeps which key positions belong to a span (image tokens, a context paragraph) across the
calls of one generation: the prompt's call sees the full ids, each later call one new token.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .architectures import locate_heads, text_config
from .errors import InterventionError

ATTENTION = "truthprobe_edit"
ScoreEdit = Callable[[torch.Tensor, nn.Module], torch.Tensor]

_EDITS: "weakref.WeakKeyDictionary[nn.Module, ScoreEdit]" = weakref.WeakKeyDictionary()
_PREVIOUS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype, q_len: int, k_len: int,
              device: torch.device) -> torch.Tensor:
    """The (B or 1, 1, Tq, Tk) additive mask of an sdpa-style mask: None is causal (the queries are the last Tq
    positions), bool marks the allowed keys, a float mask is already additive."""
    if mask is not None and mask.dtype != torch.bool:
        return mask[:, :, :, :k_len]
    low = torch.finfo(dtype).min
    if mask is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)[None, None]
    else:
        allowed = mask[:, :, :, :k_len]
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), torch.full((), low, dtype=dtype, device=device))


def _edited_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    edit = _EDITS.get(module)
    previous = _PREVIOUS.get(module, "eager")
    rows_of = getattr(edit, "rows", None)
    if previous == "sdpa" and (edit is None or rows_of is not None):
        # untouched layers, and the rows an edit leaves alone: the model's own sdpa with its own masks
        out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                                 dropout=dropout, **kwargs)
        if edit is None:
            return out, None
        rows = rows_of(query.shape[2], key.shape[2])
        if len(rows):
            out = out.clone()
            out[:, rows.start:rows.stop] = _eager(module, query, key, value, attention_mask, scaling, dropout, edit,
                                                  rows)[0]
        return out, None
    rows = rows_of(query.shape[2], key.shape[2]) if rows_of is not None else None
    return _eager(module, query, key, value, attention_mask, scaling, dropout, edit, rows, full=True)


def _eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, scaling: float | None, dropout: float, edit: "ScoreEdit | None",
           rows: range | None, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention, the edit applied to the query ``rows`` (None: all). ``full``: every query row is computed
    and returned (with the weights); otherwise only ``rows``."""
    q_len, k_len = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = _additive(attention_mask, query.dtype, q_len, k_len, query.device)
    if not full:
        query, mask = query[:, :, rows.start:rows.stop], mask[:, :, rows.start:rows.stop]
    scores = torch.matmul(query, k.transpose(2, 3)) * scale + mask
    if edit is not None:
        if rows is None or not full:
            scores = edit(scores, module)
        elif len(rows):
            scores = scores.clone()
            scores[:, :, rows.start:rows.stop] = edit(scores[:, :, rows.start:rows.stop], module)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTENTION, _edited_attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the untouched layers get exactly sdpa's masks


@contextmanager
def edit_attention(model: nn.Module, edits: dict[int, ScoreEdit]) -> Iterator[None]:
    """Within the block, ``edits[layer]`` edits the pre-softmax scores of that decoder layer's attention."""
    _register()
    sites = locate_heads(model)
    attentions = sites.modules("attention")
    config = text_config(model.config)
    previous = config._attn_implementation
    if previous not in ("sdpa", "eager", ATTENTION, None):
        raise InterventionError(f"attention edits: expected a model with sdpa or eager attention, found "
                                f"{previous!r}; load it with attn_implementation='sdpa' or 'eager'")
    bad = [layer for layer in edits if not 0 <= layer < sites.num_layers]
    if bad:
        raise InterventionError(f"layers: expected 0 to {sites.num_layers - 1}, found {bad}")
    owners = [m for m in attentions if getattr(m, "config", config) is not config]
    targets = {id(config): config, **{id(m.config): m.config for m in owners}}
    for attn in attentions:
        _PREVIOUS[attn] = previous or "eager"
    for layer, fn in edits.items():
        _EDITS[attentions[layer]] = fn
    saved = {key: cfg._attn_implementation for key, cfg in targets.items()}
    try:
        for cfg in targets.values():
            cfg._attn_implementation = ATTENTION
        yield
    finally:
        for key, cfg in targets.items():
            cfg._attn_implementation = saved[key]
        for attn in attentions:
            _EDITS.pop(attn, None)
            _PREVIOUS.pop(attn, None)


class SpanTracker:
    """Which key positions belong to the span, and which query positions to edit, across one generation's calls.

    ``find(input_ids) -> (B, T) bool`` marks the span in the ids of one call. A forward pre-hook on the model
    keeps the marks of every position seen: a call with a cache appends its columns (one per new token); a call
    without one starts over, unless it is the previous call's ids plus one token (generation without a KV cache).
    The edited queries are the prompt's last position and every position generated after it, so that generating
    with and without the cache edits the same positions. A call continuing a cache this tracker did not see (a
    prefix cached elsewhere) fails: the span of those positions is unknown.
    """

    def __init__(self, find: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.find = find
        self.mask: torch.Tensor | None = None  # (B or 1, T) span marks of the positions seen
        self.ids: torch.Tensor | None = None
        self.first_query = 0  # absolute position of the first edited query: the prompt's last one

    def hook(self, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
        def before(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise InterventionError("span: expected input_ids in the model call (the span is found from token ids), "
                                        "found inputs_embeds only")
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
            self.observe(ids, past)

        return model.register_forward_pre_hook(before, with_kwargs=True)

    def observe(self, ids: torch.Tensor, past: int = 0) -> None:
        marks = self.find(ids).to(torch.bool)
        if past == 0:
            prev = self.ids
            regrown = (prev is not None and prev.shape[0] == ids.shape[0] and ids.shape[1] == prev.shape[1] + 1
                       and torch.equal(ids[:, :-1], prev.to(ids.device)))
            if not regrown:
                self.first_query = ids.shape[1] - 1
            self.mask, self.ids = marks, ids
            return
        if self.mask is None:
            raise InterventionError(f"span: a call continues a cache of {past} positions this intervention did not "
                                    "see; run without a shared-prefix cache")
        if self.mask.shape[1] != past:
            raise InterventionError(f"span: expected a cache of {self.mask.shape[1]} positions (the ones seen), "
                                    f"found {past}")
        def expand(t: torch.Tensor) -> torch.Tensor:
            return t.expand(ids.shape[0], -1) if t.shape[0] == 1 else t

        self.mask = torch.cat([expand(self.mask), marks], dim=1)
        self.ids = torch.cat([expand(self.ids).to(ids.device), ids], dim=1)

    def keys(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """(B, Tk) span marks over the keys of the current call."""
        if self.mask is None:
            return torch.zeros(batch, length, dtype=torch.bool, device=device)
        mask = self.mask.to(device)
        if mask.shape[1] < length:
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], length - mask.shape[1])], dim=1)
        return mask[:, :length].expand(batch, -1)

    def queries(self, q_len: int, k_len: int) -> range:
        """The query rows of the current call to edit (rows of absolute position >= the prompt's last)."""
        start = k_len - q_len  # absolute position of the first query row
        return range(max(0, self.first_query - start), q_len)


__all__ = ["ATTENTION", "SpanTracker", "edit_attention"]
