"""Per-head activations at the final answer token, for every layer in one forward pass.

What a probe reads is the per-head output of attention: the INPUT of the attention output projection
(``o_proj``, ``c_proj``, ...), which is the concatenation of the H heads' D-dimensional outputs. A forward
pre-hook on every layer's projection gathers the one row per sequence at the last non-padding token (so no
full-sequence copy is made) into a preallocated (B, L, H*D) buffer; the forward stops right after the last
layer's projection has been read, so the final MLP and the LM head never run.

Shared prefix (``shared_prefix=True``; LLM prompts in the ``text`` and ``qa`` formats). The answers to one question
share everything before the answer (HaluEval: context and question, about 90% of the tokens). The prefix, the
prompt up to ``Answer:``, is tokenized as the plain path tokenizes a prompt (BOS included); an example whose own
token ids start with the prefix's ids (BPE did not merge across the boundary) and whose read token lies after it
joins its group: the group's prefix runs once into a KV cache (stopped after the last layer's projection, which
is after the last layer's keys and values are cached), the cache is copied for each answer, and only the answers'
tokens run on top of it, with the same absolute positions and the same token read as the plain path. Examples
whose ids do not start with the prefix's, and groups of one answer (nothing to share), take the plain path. The
activations equal the plain path's up to float rounding (the summation order of a shorter attention differs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..architectures import HeadSites, locate_heads
from ..errors import TruthProbeError
from . import packed


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
        self._width = 0  # the batch's rows
        self._last: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None
        self._prefilling = False

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
            if self._buffer is None:  # a forward outside ``run``: leave it alone (``prefill`` stops after the last)
                if self._prefilling and is_last and self.stop_early:
                    raise _StopForward
                return
            x = args[0]
            if x.ndim != 3 or x.shape[0] != self._width:
                raise TruthProbeError(
                    f"layer {layer}: expected the output projection's input as (batch={self._width}, "
                    f"tokens, {self._buffer.shape[2]}), found {tuple(x.shape)}"
                )
            self._buffer[:, layer] = x[self._rows, self._last]  # one token per row: no full-sequence copy
            if is_last and self.stop_early:
                raise _StopForward

        return hook

    @torch.no_grad()
    def prefill(self, batch: dict[str, torch.Tensor]) -> Any:
        """Forward ``batch`` into a new KV cache (returned) without capturing anything; the forward stops after the
        last layer's projection input, when every layer's keys and values are in the cache."""
        if not self._handles:
            raise TruthProbeError("HeadCapture.prefill: use it inside `with HeadCapture(model) as capture:`")
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        cache = DynamicCache(config=self.model.config)
        self._prefilling = True
        try:
            self.model(**batch, **{_cache_kwarg(self.model): cache}, use_cache=True)
        except _StopForward:
            pass
        finally:
            self._prefilling = False
        return cache

    @torch.no_grad()
    def run(self, batch: dict[str, torch.Tensor], last: torch.Tensor, cache: Any = None,
            rows: torch.Tensor | None = None) -> torch.Tensor:
        """Forward ``batch`` (on top of the KV ``cache`` of its prefix when given; ``batch["attention_mask"]`` then
        spans prefix and batch); return the (B, L, H, D) projection inputs at positions ``last`` (B,) of the batch's
        rows ``rows`` (default: row i for ``last[i]``; a packed batch reads several positions of one row)."""
        if not self._handles:
            raise TruthProbeError("HeadCapture.run: use it inside `with HeadCapture(model) as capture:`")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        cache_args = {"use_cache": False} if cache is None else {_cache_kwarg(self.model): cache, "use_cache": True}
        size = int(last.shape[0])
        s = self.sites
        dtype = next(p for p in s.out_projs[0].parameters()).dtype
        self._buffer = torch.empty((size, s.num_layers, s.in_features), dtype=dtype, device=device)
        self._rows = (torch.arange(size) if rows is None else rows).to(device)
        self._width = int(batch["input_ids"].shape[0])
        self._last = last.to(device)
        try:
            self.model(**batch, **cache_args)
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


def _cache_kwarg(model: nn.Module) -> str | None:
    """The forward's KV-cache argument: ``cache`` (transformers >= 5.x) or ``past_key_values``; None if neither."""
    for name in ("cache", "past_key_values"):
        if _accepts(model, name):
            return name
    return None


SHARED_PREFIX_FORMATS = ("text", "qa")
SHARED_PREFIX_VERSION = "shared_prefix/1"  # recorded in the activation cache's settings: a new version never reuses


def shared_prefix_support(model: nn.Module, encoder: Any) -> str | None:
    """None when the shared-prefix path can extract ``encoder``'s prompts from ``model``; else the reason it cannot."""
    if getattr(encoder, "multimodal", False):
        return "a multimodal model (the image's tokens enter the prompt)"
    if encoder.prompt_format not in SHARED_PREFIX_FORMATS:
        return f"prompt format {encoder.prompt_format!r} (only {', '.join(SHARED_PREFIX_FORMATS)})"
    if not _accepts(model, "position_ids"):
        return "a model whose forward takes no position_ids"
    if _cache_kwarg(model) is None:
        return "a model whose forward takes no KV cache"
    return None


def prefix_text(encoder: Any, example: Any) -> str | None:
    """The prompt before the answer (``...Answer:``; trailing whitespace is left to the answer, as BPE tokenizers
    attach a space to the word after it); None when the prompt does not start with it."""
    try:
        empty = encoder.prompt(dataclasses.replace(example, answer=""))
    except TypeError:  # not a dataclass with an answer field
        return None
    if not encoder.prompt(example).startswith(empty) or not empty.strip():
        return None
    return empty.rstrip()


def prefix_token_ids(encoder: Any, example: Any) -> list[int] | None:
    """Token ids of ``prefix_text``, tokenized as the plain path tokenizes a whole prompt (BOS included)."""
    text = prefix_text(encoder, example)
    return None if text is None else list(encoder.tokenizer(text, add_special_tokens=True)["input_ids"])


def _eos_set(eos_token_id: "int | Sequence[int] | None") -> set[int]:
    if eos_token_id is None:
        return set()
    return {int(t) for t in eos_token_id} if isinstance(eos_token_id, (list, tuple, set)) else {int(eos_token_id)}


def read_position(ids: Sequence[int], eos_token_id: "int | Sequence[int] | None" = None, drop_eos: bool = False) -> int:
    """The index ``last_token_index`` reads in an unpadded prompt of token ids ``ids``."""
    last = len(ids) - 1
    if drop_eos and last > 0 and int(ids[last]) in _eos_set(eos_token_id):
        last -= 1
    return last


@dataclasses.dataclass
class PrefixGroup:
    """Examples (``members``, indices) whose token ids all start with ``prefix`` and are read after it."""

    prefix: list[int]
    members: list[int]


def plan_shared_prefix(encoder: Any, examples: Sequence, ids: Sequence[Sequence[int]], *, batch_size: int = 8,
                       drop_eos: bool = True, min_group: int = 2) -> tuple[list[list[PrefixGroup]], list[int]]:
    """(batches of prefix groups, indices for the plain path).

    Examples are grouped by their prefix's token ids; an example joins its group only when its own ids ``ids[i]``
    (the plain path's) start with the prefix's and the token read lies after the prefix, else it takes the plain
    path. A group larger than ``batch_size`` is cut into parts of at most ``batch_size``; a part of fewer than
    ``min_group`` examples (nothing to share) takes the plain path. Batches hold at most ``batch_size`` examples,
    parts in order of prefix length, longest first; every choice depends on these examples only (so a shard
    extracts the same way whenever it is extracted).
    """
    eos = getattr(encoder.tokenizer, "eos_token_id", None)
    groups: dict[tuple[int, ...], list[int]] = {}
    plain: list[int] = []
    tokenized: dict[str, tuple[int, ...]] = {}
    for i, example in enumerate(examples):
        text = prefix_text(encoder, example)
        if text is not None and text not in tokenized:
            tokenized[text] = tuple(encoder.tokenizer(text, add_special_tokens=True)["input_ids"])
        prefix = None if text is None else tokenized[text]
        own = ids[i]
        if (prefix is None or len(own) <= len(prefix) or tuple(own[:len(prefix)]) != prefix
                or read_position(own, eos, drop_eos) < len(prefix)):
            plain.append(i)
            continue
        groups.setdefault(prefix, []).append(i)
    parts = []
    for prefix, members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if len(chunk) < min_group:
                plain.extend(chunk)
            else:
                parts.append(PrefixGroup(list(prefix), chunk))
    parts.sort(key=lambda g: -len(g.prefix))  # stable: ties keep the examples' order
    batches: list[list[PrefixGroup]] = []
    size = 0
    for part in parts:
        if batches and size + len(part.members) <= batch_size:
            batches[-1].append(part)
            size += len(part.members)
        else:
            batches.append([part])
            size = len(part.members)
    return batches, sorted(plain)


def _count(stats: dict | None, **counts: int) -> None:
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + int(value)


def _run_plain(capture: HeadCapture, encoder: Any, examples: Sequence, batches: list, out: np.ndarray, *,
               eos: Any, drop_eos: bool, keep_positions: bool, dtype: torch.dtype, float16: bool, bar: Any,
               stats: dict | None) -> None:
    for idx in batches:
        batch = encoder.encode([examples[i] for i in idx])
        if not keep_positions:
            batch.pop("position_ids", None)
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        last = last_token_index(batch["attention_mask"], batch["input_ids"], eos, drop_eos)
        acts = capture.run(batch, last)
        out[idx] = acts.to(torch.float16 if float16 else torch.float32).numpy()
        _count(stats, forward_passes=1, tokens=batch["attention_mask"].sum(), padded_tokens=batch["input_ids"].numel(),
               plain_examples=len(idx))
        bar.update(len(idx))


def _run_packs(capture: HeadCapture, encoder: Any, examples: Sequence, order: Sequence[int], out: np.ndarray, *,
               eos: Any, drop_eos: bool, dtype: torch.dtype, float16: bool, bar: Any, stats: dict | None) -> None:
    """One prompt at a time, packed (``packed.py``): bitwise the activations of ``_run_plain`` at batch size 1; the
    first pack of a model in this process is checked against it, prompt by prompt, and on a difference the rest runs
    one prompt at a time."""
    ids = {int(i): encoder.token_ids(examples[i]) for i in order}
    packs = [[int(order[j]) for j in pack] for pack in packed.plan_packs([len(ids[int(i)]) for i in order])]
    store = torch.float16 if float16 else torch.float32

    def alone(i: int) -> torch.Tensor:
        batch = encoder.encode([examples[i]])
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        last = last_token_index(batch["attention_mask"], batch["input_ids"], eos, drop_eos)
        _count(stats, forward_passes=1, tokens=batch["attention_mask"].sum(), padded_tokens=batch["input_ids"].numel(),
               plain_examples=1)
        return capture.run(batch, last)[0]

    for pack in packs:
        # a pack of one is a prompt alone: it runs as one (and the check waits for a pack of several)
        if len(pack) == 1 or packed.packing_support(capture.model, encoder) is not None:
            acts = torch.stack([alone(i) for i in pack])
        else:
            seqs = [ids[i] for i in pack]
            acts = packed.run_packed(capture, seqs, [read_position(x, eos, drop_eos) for x in seqs])
            n_tokens = sum(len(x) for x in seqs)
            _count(stats, forward_passes=1, tokens=n_tokens, padded_tokens=n_tokens, packed_examples=len(pack))
            if packed.packing_state(capture.model) == "unchecked":  # the model's first pack: also one at a time
                singles = torch.stack([alone(i) for i in pack])
                if not packed.check_packing(capture.model, acts, singles):
                    acts = singles
        out[pack] = acts.to(store).numpy()
        bar.update(len(pack))


def _run_shared(capture: HeadCapture, encoder: Any, ids: Sequence[Sequence[int]], batches: list[list[PrefixGroup]],
                out: np.ndarray, *, eos: Any, drop_eos: bool, float16: bool, bar: Any, stats: dict | None) -> None:
    from .prompts import pad_token_ids

    side, pad = encoder.padding_side, encoder._pad_id()
    for parts in batches:
        prefix = pad_token_ids([g.prefix for g in parts], side, pad)
        cache = capture.prefill(prefix)
        owner = torch.tensor([k for k, g in enumerate(parts) for _ in g.members])
        members = [i for g in parts for i in g.members]
        cache.batch_select_indices(owner.to(next(capture.model.parameters()).device))  # one copy per answer
        lengths = [len(g.prefix) for g in parts]
        rest = [list(ids[i][lengths[k]:]) for k, i in zip(owner.tolist(), members)]
        batch = pad_token_ids(rest, side, pad)
        width = batch["input_ids"].shape[1]
        batch["position_ids"] = batch["position_ids"] + torch.tensor(lengths)[owner][:, None]
        batch["attention_mask"] = torch.cat([prefix["attention_mask"][owner], batch["attention_mask"]], dim=1)
        last = torch.tensor([(0 if side == "right" else width - len(r)) + read_position(ids[i], eos, drop_eos)
                             - lengths[k] for r, k, i in zip(rest, owner.tolist(), members)])
        acts = capture.run(batch, last, cache=cache)
        del cache
        out[members] = acts.to(torch.float16 if float16 else torch.float32).numpy()
        _count(stats, forward_passes=2, tokens=prefix["attention_mask"].sum() + sum(len(r) for r in rest),
               padded_tokens=prefix["input_ids"].numel() + batch["input_ids"].numel(), prefixes=len(parts),
               shared_examples=len(members))
        bar.update(len(members))


def extract_activations(model: nn.Module, encoder: Any, examples: Sequence, *, batch_size: int = 8,
                        drop_eos: bool = True, float16: bool = False, sort_by_length: bool = True,
                        progress: "bool | Any" = True, desc: str = "extracting", shared_prefix: bool = False,
                        min_group: int = 2, stats: dict | None = None, packing: bool = True) -> np.ndarray:
    """(N, L, H, D) head activations at each example's final answer token.

    ``encoder`` is a ``prompts.PromptEncoder``. Examples are batched in order of prompt length (less padding)
    and returned in their original order. ``float16`` stores the result as float16. ``progress`` is a bool
    or an open tqdm bar to advance.

    ``shared_prefix``: run each group of answers' shared prefix once (see the module's docstring) where
    ``shared_prefix_support`` allows, else the plain path; ``min_group``: the smallest group run that way (smaller
    ones, and examples whose tokens merge across the prefix's end, take the plain path). ``stats``, a dict, gets
    counts added: ``tokens`` (real tokens run), ``padded_tokens`` (batch x width, summed), ``forward_passes``,
    ``plain_examples``, ``packed_examples``, ``shared_examples`` and ``prefixes``.

    ``packing`` (batch size 1 only): run several prompts per forward pass with the same activations, bit for bit, as
    one at a time (``packed.py``, checked on the model's first pack in the process); off, or where it does not
    apply, one forward pass per prompt.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise TruthProbeError(f"batch size: expected an integer >= 1, found {batch_size}")
    sites = locate_heads(model)
    n = len(examples)
    out = np.empty((n, sites.num_layers, sites.num_heads, sites.head_dim), dtype=np.float16 if float16 else np.float32)
    if n == 0:
        return out
    eos = getattr(encoder.tokenizer, "eos_token_id", None)
    shared: list[list[PrefixGroup]] = []
    ids: list[list[int]] | None = None
    rest = list(range(n))
    if shared_prefix and shared_prefix_support(model, encoder) is None:
        ids = [encoder.token_ids(e) for e in examples]
        shared, rest = plan_shared_prefix(encoder, examples, ids, batch_size=batch_size, drop_eos=drop_eos,
                                          min_group=min_group)
    order = np.asarray(rest, dtype=np.int64)
    if sort_by_length and len(rest) > batch_size:
        lengths = np.array([len(ids[i]) if ids is not None else len(encoder.token_ids(examples[i])) for i in rest])
        order = order[np.argsort(-lengths, kind="stable")]  # longest first: a memory problem shows up at once
    plain = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    keep_positions = _accepts(model, "position_ids") and not encoder.multimodal
    dtype = next(model.parameters()).dtype
    own_bar = isinstance(progress, bool)
    bar = tqdm(total=n, desc=desc, unit="ex", disable=not progress, leave=False) if own_bar else progress
    try:
        with HeadCapture(model, sites) as capture:
            if shared:
                _run_shared(capture, encoder, ids, shared, out, eos=eos, drop_eos=drop_eos, float16=float16, bar=bar,
                            stats=stats)
            if packing and batch_size == 1 and keep_positions and packed.packing_support(model, encoder) is None:
                _run_packs(capture, encoder, examples, order, out, eos=eos, drop_eos=drop_eos, dtype=dtype,
                           float16=float16, bar=bar, stats=stats)
            else:
                _run_plain(capture, encoder, examples, plain, out, eos=eos, drop_eos=drop_eos,
                           keep_positions=keep_positions, dtype=dtype, float16=float16, bar=bar, stats=stats)
    finally:
        if own_bar:
            bar.close()
    return out


__all__ = ["HeadCapture", "PrefixGroup", "SHARED_PREFIX_FORMATS", "SHARED_PREFIX_VERSION", "extract_activations",
           "last_token_index", "plan_shared_prefix", "prefix_text", "prefix_token_ids", "read_position",
           "shared_prefix_support"]
