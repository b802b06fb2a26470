"""Faster batched greedy generation for judge prompts that share a long prefix, and first-step logits.

``SharedPrefixGenerator`` runs the prompt prefix that every row of a left-padded batch shares (for the
TruthProbe protocol the instruction, about 46 SmolLM2 tokens; for HaluEval's few-shot judge most of the
prompt) once, keeps its KV cache, and generates the batch from a copy of it. The batch is rearranged from
``[pads | prefix | suffix]`` to ``[prefix | pads | suffix]`` of the same width, with the attention mask
moved along; transformers derives position ids from the mask (``cumsum - 1``), so every real token keeps its
position and attends to the same tokens as on the plain path. The outputs equal the plain path's up to float
rounding of the reordered sums (tests compare the generated tokens); the continuation starts at the same
column, so callers that strip ``context.shape[1]`` columns (lm-eval's HFLM) are unaffected.

Hooks on the model (gates, interventions) act during the prefix pass exactly as during the plain pass; the
cache key therefore includes a caller-given ``state`` (the active gate), and ``clear()`` drops everything.

``DecidedReplyStop`` is a per-row stopping criterion for judges whose parsed answer is fixed by the reply's first
characters (the TruthProbe protocol's yes / no): a row stops as soon as ``stable_text`` of its continuation, the
text every longer generation's reply starts with, is decided; the batch stops when every row has. It passes through
``model.generate`` unchanged on both paths (plain and shared prefix).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Hashable, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

MIN_PREFIX_TOKENS = 16  # below this a separate prefix pass does not pay
# What one more generate call costs, in prompt tokens of the same model: its few decoding steps read every weight
# once each (a step of a batch of 8 costs about as much as 50 prompt tokens on a CPU) and its prompt pass has a
# fixed cost of its own. Measured on SmolLM2 (benchmarks/judge_throughput.py); a batch splits only when the padding
# it saves is worth more than this.
SPLIT_COST_TOKENS = 160


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the token prefix that every row's real (unpadded) tokens share, for a left-padded batch.

    At most the shortest row's length minus one, so that every row keeps at least one token to run.
    """
    lengths = attention_mask.sum(dim=1)
    if bool((attention_mask[:, -1] == 0).any()):
        return 0  # not left-padded
    shortest = int(lengths.min())
    width = input_ids.shape[1]
    starts = width - lengths
    rows = torch.stack([input_ids[i, int(s):int(s) + shortest] for i, s in enumerate(starts)])
    same = (rows == rows[:1]).all(dim=0)
    mismatch = torch.nonzero(~same)
    p = int(mismatch[0]) if mismatch.numel() else shortest
    return max(0, min(p, shortest - 1))


def padding_groups(lengths: Sequence[int], split_cost: int = SPLIT_COST_TOKENS) -> list[list[int]]:
    """The rows of a padded batch (their token ``lengths``) in the groups that run the fewest tokens, padding
    included, counting ``split_cost`` for every group after the first.

    A batch whose lengths differ a lot (one long prompt among short ones) pads every row to the longest; split off,
    the long row runs alone and the rest run at their own width. Groups are runs of the rows sorted by length
    (an optimal split of a sorted list is contiguous); each group lists row indices in their original order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j rows of ``order``
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last group is order[i:j]; its width is its first (longest) row's
            cost = best[i] + (j - i) * int(lengths[order[i]]) + (split_cost if i else 0)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(order[cut[j]:j]))
        j = cut[j]
    return groups[::-1]


def move_prefix_left(input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int,
                     pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[pads | prefix | suffix]`` -> ``[prefix | pads | suffix]`` (same width), for ids and mask alike."""
    width = input_ids.shape[1]
    lengths = attention_mask.sum(dim=1)
    ids = torch.full_like(input_ids, pad_token_id)
    mask = torch.zeros_like(attention_mask)
    for i, n in enumerate(lengths.tolist()):
        start = width - n
        ids[i, :p] = input_ids[i, start:start + p]
        mask[i, :p] = 1
        ids[i, start + p:] = input_ids[i, start + p:]
        mask[i, start + p:] = 1
    return ids, mask


class _PrefixPasses:
    """A small LRU of prefix passes: each shared prefix runs once (inside ``prefix_context``) and is reused."""

    def __init__(self, model: torch.nn.Module, max_entries: int = 4, min_prefix: int = MIN_PREFIX_TOKENS,
                 prefix_context: Callable[[], ContextManager] | None = None) -> None:
        self.model = model
        self.max_entries = max_entries
        self.min_prefix = min_prefix
        # entered around the prefix's own forward pass (a position-aware intervention skips it: the prefix's last
        # position is not the prompt's last one)
        self.prefix_context = prefix_context
        self._caches: OrderedDict[tuple, Any] = OrderedDict()
        self.prefix_passes = 0
        self.reused = 0

    def clear(self) -> None:
        self._caches.clear()

    @torch.no_grad()
    def _prefix(self, prefix: torch.Tensor, state: Hashable = None) -> tuple[Any, torch.Tensor]:
        """(KV cache, logits) of the prefix's forward pass, from the LRU when this (tokens, state) ran before."""
        key = (tuple(prefix.tolist()), state)
        if key in self._caches:
            self._caches.move_to_end(key)
            self.reused += 1
            return self._caches[key]
        with self.prefix_context() if self.prefix_context is not None else nullcontext():
            out = self.model(input_ids=prefix[None], attention_mask=torch.ones_like(prefix)[None], use_cache=True)
        entry = (out.cache if hasattr(out, "cache") else out.past_key_values, out.logits)
        self._caches[key] = entry
        self.prefix_passes += 1
        while len(self._caches) > self.max_entries:
            self._caches.popitem(last=False)
        return entry


class SharedPrefixGenerator(_PrefixPasses):
    """Generation from a cached shared prefix; a small LRU of prefix caches keyed by (tokens, state)."""

    def __init__(self, model: torch.nn.Module, max_entries: int = 4, min_prefix: int = MIN_PREFIX_TOKENS,
                 prefix_context: Callable[[], ContextManager] | None = None) -> None:
        super().__init__(model, max_entries, min_prefix, prefix_context)
        self._generate = type(model).generate  # the class's own, even while an instance wrapper routes here

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, pad_token_id: int,
                 state: Hashable = None, **generate_kwargs: Any) -> torch.Tensor:
        """``model.generate`` on a left-padded batch; from the shared prefix's cache where it is long enough."""
        p = common_prefix_length(input_ids, attention_mask)
        if p < self.min_prefix:
            return self._generate(self.model, input_ids=input_ids, attention_mask=attention_mask,
                                  pad_token_id=pad_token_id, **generate_kwargs)
        ids, mask = move_prefix_left(input_ids, attention_mask, p, pad_token_id)
        cache = copy.deepcopy(self._prefix(ids[0, :p], state)[0])
        cache.batch_repeat_interleave(ids.shape[0])
        return self._generate(self.model, input_ids=ids, attention_mask=mask, cache=cache, pad_token_id=pad_token_id,
                              **generate_kwargs)


def shared_columns(inps: torch.Tensor) -> int:
    """How many leading columns every row of a (right-padded) batch shares."""
    same = (inps == inps[:1]).all(dim=0)
    return int(same.long().cumprod(0).sum())


class SharedPrefixScorer(_PrefixPasses):
    """Log-likelihood logits of a right-padded batch from a cached shared prefix (lm-eval's few-shot prompts).

    The columns every row shares run once (cached by their tokens, LRU); the rest of the batch runs on a copy of
    that KV cache. The logits equal one full pass up to float rounding; the prefix's own logits are the cached
    pass's (the same for every row). Hooks act in both passes; ``prefix_context`` is entered around the prefix
    pass and ``suffix_context(p)`` around the rest (position-aware interventions shift their positions by p).
    """

    @torch.no_grad()
    def logits(self, inps: torch.Tensor, max_prefix: int | None = None,
               suffix_context: Callable[[int], ContextManager] | None = None) -> torch.Tensor | None:
        """(B, T, V) logits, or None for a single row (nothing to share) or a shared prefix shorter than
        ``min_prefix``: then the caller runs the batch plainly."""
        if inps.shape[0] < 2:
            return None
        p = min(shared_columns(inps), inps.shape[1] - 1, max_prefix if max_prefix is not None else inps.shape[1])
        if p < self.min_prefix:
            return None
        cache, prefix_logits = self._prefix(inps[0, :p])
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(inps.shape[0])
        with suffix_context(p) if suffix_context is not None else nullcontext():
            out = self.model(input_ids=inps[:, p:], cache=cache)
        return torch.cat([prefix_logits.expand(inps.shape[0], -1, -1), out.logits], dim=1)


class FirstStepLogits(LogitsProcessor):
    """Keeps the logits of the first generation step for a few token ids (it changes nothing)."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        self.logits: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            self.logits = scores[:, self.token_ids.to(scores.device)].detach().float().cpu()
        return scores


def stable_text(text: str, stops: Sequence[str] = ()) -> str:
    """The part of a partly generated, decoded reply that the reply of every longer generation starts with.

    ``text`` is the decoded continuation so far; the reply is what lm-eval keeps of it (cut at the first stop
    sequence). Dropped from the end: replacement characters (an incomplete multi-byte character decodes to U+FFFD
    and becomes another character once its other bytes come) and the longest tail that begins a stop sequence
    (the next tokens may complete it, and the reply is then cut there). Once ``text`` holds a whole stop sequence
    the reply is final: the text before it. Assumes a decoder whose output on a token prefix is a prefix of its
    output on the whole (byte-level BPE, SentencePiece with byte fallback; not ``clean_up_tokenization_spaces``).
    """
    cut = len(text)
    for stop in stops:
        if stop and stop in text:
            cut = min(cut, text.index(stop))
    if cut < len(text):
        return text[:cut]
    text = text.rstrip("\ufffd")
    tail = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), tail, -1):
            if text.endswith(stop[:k]):
                tail = k
                break
    return text[:len(text) - tail]


class DecidedReplyStop(StoppingCriteria):
    """Stops each row of a batch once ``decided(stable_text(decode(its new tokens), stops))`` holds, or once its text
    holds a stop sequence (its reply is then final; lm-eval's own stop-sequence criterion stops a batch only when
    every row has one).

    ``start`` is the column where the continuation begins (the prompt's padded width); ``rows`` (one bool per row,
    default all) says which rows may stop early, the others run to the other criteria. ``steps`` counts the calls
    (one per generated column) and ``stopped_at[i]`` is how many tokens row ``i`` had when it was decided (None:
    not by this criterion).
    """

    def __init__(self, decode: Callable[[list[int]], str], decided: Callable[[str], bool], start: int,
                 stops: Sequence[str] = (), rows: Sequence[bool] | None = None) -> None:
        self.decode = decode
        self.decided = decided
        self.start = start
        self.stops = tuple(stops)
        self.rows = None if rows is None else [bool(r) for r in rows]
        self.steps = 0
        self.stopped_at: list[int | None] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        self.steps += 1
        if not self.stopped_at:
            self.stopped_at = [None] * input_ids.shape[0]
        done = []
        for i, row in enumerate(input_ids):
            if self.stopped_at[i] is None and (self.rows is None or self.rows[i]):
                text = self.decode(row[self.start:].tolist())
                if any(stop and stop in text for stop in self.stops) or self.decided(stable_text(text, self.stops)):
                    self.stopped_at[i] = input_ids.shape[1] - self.start
            done.append(self.stopped_at[i] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def answer_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The distinct first tokens of each word with and without a leading space (" Yes", "Yes", ...)."""
    ids: list[int] = []
    for word in words:
        for text in (word, " " + word):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if encoded and encoded[0] not in ids:
                ids.append(int(encoded[0]))
    return ids


def yes_no_margin(logits: torch.Tensor, n_yes: int) -> torch.Tensor:
    """log P(any "yes" token) - log P(any "no" token) at the first step: logsumexp over each group's logits."""
    return torch.logsumexp(logits[:, :n_yes], dim=1) - torch.logsumexp(logits[:, n_yes:], dim=1)


__all__ = ["DecidedReplyStop", "FirstStepLogits", "SharedPrefixGenerator", "answer_token_ids",
           "common_prefix_length", "move_prefix_left", "padding_groups", "stable_text", "yes_no_margin"]
