"""Spans of token positions an attention edit targets: the image tokens of an MLLM, or a marked context.

Each finder maps a (B, T) tensor of input ids to a (B, T) bool mask.

- ``image_span(model)``: positions holding the model's own image token id (the config attribute named in the
  architecture table's ``image_token``: LLaVA, LLaVA-NeXT, Qwen2-VL / 2.5-VL, Idefics3 expand each image into
  that many copies of one id);
- ``context_span(tokenizer, start, end)``: the tokens of the text between the first ``start`` and the next
  ``end`` (e.g. the knowledge paragraph of the HaluEval prompt), found from each token's decoded text.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import InterventionError

SpanFinder = Callable[[torch.Tensor], torch.Tensor]


def image_token_id(model: nn.Module) -> int:
    """The image placeholder id of an MLLM, from the config attribute its architecture entry names."""
    from .architectures import ARCHITECTURES

    config = model.config
    layout = ARCHITECTURES.get(getattr(config, "model_type", ""))
    names = layout.image_token if layout is not None else ()
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise InterventionError(f"span=image: expected an MLLM whose config names its image token ({', '.join(names) or 'no '}"
                            f"attribute declared for model_type {getattr(config, 'model_type', None)!r}), found none; "
                            "for a language model use span=context")


def image_span(model: nn.Module) -> SpanFinder:
    token = image_token_id(model)
    return lambda ids: ids == token


def context_span(tokenizer: Any, start: str, end: str) -> SpanFinder:
    """The tokens whose text lies after ``start`` and before the following ``end`` (rows without both: none)."""
    if not start or not end:
        raise InterventionError(f"span=context: expected span_start and span_end texts, found {start!r} and {end!r}")

    def find(ids: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        for b, row in enumerate(ids.tolist()):
            pieces = [tokenizer.decode([t]) for t in row]
            text, ends = "", []
            for piece in pieces:
                text += piece
                ends.append(len(text))
            i = text.find(start)
            if i < 0:
                continue
            j = text.find(end, i + len(start))
            if j < 0:
                continue
            lo, hi = i + len(start), j
            begin = 0
            for t, stop in enumerate(ends):
                if begin >= lo and stop <= hi and stop > begin:
                    mask[b, t] = True
                begin = stop
        return mask

    return find


__all__ = ["SpanFinder", "context_span", "image_span", "image_token_id"]
