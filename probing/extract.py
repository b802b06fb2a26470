"""Per-head activations at the final answer token, for every layer in one forward pass.

What a probe reads is the per-head output of attention: the INPUT of the attention output projection
(``o_proj``, ``c_proj``, ...), which is the concatenation of the H heads' D-dimensional outputs. A forward
pre-hook on every layer's projection gathers the one row per sequence at the last non-padding token (so no
full-sequence copy is made) into a preallocated (B, L, H*D) buffer; the forward stops right after the last
layer's projection has been read, so the final MLP and the LM head never run.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..architectures import HeadSites, locate_heads
from ..errors import TruthProbeError


class _StopForward(Exception):
    """Raised from the last hook: everything after the last projection's input is not needed."""


def last_token_index(attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                     eos_token_id: "int | Sequence[int] | None" = None, drop_eos: bool = False) -> torch.Tensor:
    """Index of each row's last non-padding token (works for left and right padding alike).

    With ``drop_eos``, a row whose last real token is an EOS token points at the token before it.
    """
    mask = attention_mask.to(torch.long)
    if mask.ndim != 2:
        raise TruthProbeError(f"expected a 2-D attention mask (batch, tokens), found shape {tuple(mask.shape)}")
    width = mask.shape[1]
    positions = torch.arange(width, device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
    if bool((last < 0).any()):
        raise TruthProbeError("expected every row to have at least one non-padding token, found an all-padding row")
    if drop_eos and eos_token_id is not None and input_ids is not None:
        eos = torch.as_tensor(list(eos_token_id) if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id],
                              device=input_ids.device)
        at_last = input_ids.gather(1, last[:, None])[:, 0]
        first = torch.where(mask.bool(), positions, torch.full_like(positions, width)).min(dim=1).values
        drop = torch.isin(at_last, eos) & (last > first)
        last = last - drop.to(last.dtype)
    return last


class HeadCapture:
    """Forward pre-hooks on every output projection; ``run(batch, last)`` returns (B, L, H, D) on the CPU.

    Use as a context manager so the hooks are removed even when a forward fails.
    """

    def __init__(self, model: nn.Module, sites: HeadSites | None = None, stop_early: bool = True) -> None:
        self.model = model
        self.sites = sites or locate_heads(model)
        self.stop_early = stop_early
        self._handles: list[Any] = []
        self._rows: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None

    def __enter__(self) -> "HeadCapture":
        last_layer = self.sites.num_layers - 1
        for layer, proj in enumerate(self.sites.out_projs):
            self._handles.append(proj.register_forward_pre_hook(self._hook(layer, layer == last_layer)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int, is_last: bool) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self._buffer is None:  # a forward outside ``run``: leave it alone
                return
            x = args[0]
            if x.ndim != 3 or x.shape[0] != self._buffer.shape[0]:
                raise TruthProbeError(
                    f"layer {layer}: expected the output projection's input as (batch={self._buffer.shape[0]}, "
                    f"tokens, {self._buffer.shape[2]}), found {tuple(x.shape)}"
                )
            self._buffer[:, layer] = x[self._rows, self._last]  # one token per row: no full-sequence copy
            if is_last and self.stop_early:
                raise _StopForward

        return hook

    @torch.no_grad()
    def run(self, batch: dict[str, torch.Tensor], last: torch.Tensor) -> torch.Tensor:
        """Forward ``batch``; return the (B, L, H, D) projection inputs at positions ``last`` (B,)."""
        if not self._handles:
            raise TruthProbeError("HeadCapture.run: use it inside `with HeadCapture(model) as capture:`")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        size = int(last.shape[0])
        s = self.sites
        dtype = next(p for p in s.out_projs[0].parameters()).dtype
        self._buffer = torch.empty((size, s.num_layers, s.in_features), dtype=dtype, device=device)
        self._rows = torch.arange(size, device=device)
        self._last = last.to(device)
        try:
            self.model(**batch, use_cache=False)
        except _StopForward:
            pass
        else:
            if self.stop_early:
                raise TruthProbeError("the forward pass finished without reaching the last layer's output projection")
        finally:
            out, self._buffer = self._buffer, None
        return out.view(size, s.num_layers, s.num_heads, s.head_dim).cpu()


def _accepts(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def extract_activations(model: nn.Module, encoder: Any, examples: Sequence, *, batch_size: int = 8,
                        drop_eos: bool = True, float16: bool = False, sort_by_length: bool = True,
                        progress: "bool | Any" = True, desc: str = "extracting") -> np.ndarray:
    """(N, L, H, D) head activations at each example's final answer token.

    ``encoder`` is a ``prompts.PromptEncoder``. Examples are batched in order of prompt length (less padding)
    and returned in their original order. ``float16`` stores the result as float16. ``progress`` is a bool
    or an open tqdm bar to advance.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise TruthProbeError(f"batch size: expected an integer >= 1, found {batch_size}")
    sites = locate_heads(model)
    n = len(examples)
    out = np.empty((n, sites.num_layers, sites.num_heads, sites.head_dim), dtype=np.float16 if float16 else np.float32)
    if n == 0:
        return out
    order = np.arange(n)
    if sort_by_length and n > batch_size:
        lengths = np.array([len(encoder.token_ids(e)) for e in examples])
        order = np.argsort(-lengths, kind="stable")  # longest first: a memory problem shows up at once
    eos = getattr(encoder.tokenizer, "eos_token_id", None)
    keep_positions = _accepts(model, "position_ids") and not encoder.multimodal
    dtype = next(model.parameters()).dtype
    own_bar = isinstance(progress, bool)
    bar = tqdm(total=n, desc=desc, unit="ex", disable=not progress, leave=False) if own_bar else progress
    try:
        with HeadCapture(model, sites) as capture:
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch = encoder.encode([examples[i] for i in idx])
                if not keep_positions:
                    batch.pop("position_ids", None)
                batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
                last = last_token_index(batch["attention_mask"], batch["input_ids"], eos, drop_eos)
                acts = capture.run(batch, last)
                out[idx] = acts.to(torch.float16 if float16 else torch.float32).numpy()
                bar.update(len(idx))
    finally:
        if own_bar:
            bar.close()
    return out


__all__ = ["HeadCapture", "extract_activations", "last_token_index"]
