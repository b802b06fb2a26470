"""``truthgated`` (alias ``intervened``): lm-eval's ``hf`` model with any registered intervention.

    lm_eval --model truthgated \\
        --model_args pretrained=smollm2-135m-instruct,scores=scores/smollm2.json,alpha=4.5,norm=centered \\
        --tasks halueval_qa --apply_chat_template
    lm_eval --model intervened \\
        --model_args pretrained=smollm2-135m-instruct,method=iti,directions=iti.json,k=48,alpha=15 \\
        --tasks truthfulqa_local_mc2

``model_args`` are everything ``hf`` takes, plus ``method`` (default ``truthprobe``) and that method's settings
(``truthprobe_eval.interventions``: ``truthprobe`` takes ``scores``, ``alpha``, ``norm``, ``site``, ``gate``,
``seed``; ``iti`` takes ``directions``, ``k``, ``alpha``, ``positions``, ``control``, ``seed``) and ``apply``:
``hook`` (default; hooks around every model call, log-likelihood and generation alike, removed after it) or
``bake`` (folded into the weights once, at load time). Settings are validated, and their files read, before the
model loads. The intervention's ``describe()`` goes into lm-eval's results as ``config.intervention``.

Position-aware methods (ITI with ``positions=answer``) learn which positions to edit from the requests: in
log-likelihood scoring, the continuation's tokens; in generation, the prompt's last position and each new token.

Generation (``generate_until``) adds four things to HFLM's, none of which changes a parsed reply:
- ``prefix_cache`` (default true): the prompt prefix every row of a batch shares runs once and generation
  continues from its KV cache (``truthprobe_eval.generation``); ``prefix_cache=false`` is HFLM's plain path.
  Log-likelihood batches (multiple choice: a few-shot prompt shared by every choice) use the same idea.
- the first step's Yes-minus-No log-odds of every generated request, kept in ``yes_no_margins`` (context string
  -> float) for threshold-free detection metrics (AUROC) without another forward pass.
- ``early_stop`` (default true): requests of the TruthProbe-protocol HaluEval tasks (``TRUTHPROBE_TASKS``, greedy)
  stop generating, row by row, as soon as the parsed yes / no can no longer change
  (``truthprobe_protocol.reply_decided``); the batch stops when every row has. Parsed replies, metrics and margins
  are those of the full generation, but the logged reply (``resps``) is the decided prefix ("Yes," rather than
  "Yes, the answer is"); ``early_stop=false`` generates the full replies. Other tasks are never cut short.
  Recorded in the results as ``config.early_stop``.
- ``split_padding`` (default true): a batch whose prompts differ a lot in length runs as several generate calls,
  each at its own width, where the padding saved outweighs another call (``generation.padding_groups``); greedy
  search only. The same replies, up to float rounding, as one call; ``split_padding=false`` keeps HFLM's batches.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import LogitsProcessorList, StoppingCriteriaList

from ..errors import InterventionError
from ..generation import (
    MIN_PREFIX_TOKENS,
    DecidedReplyStop,
    FirstStepLogits,
    SharedPrefixGenerator,
    SharedPrefixScorer,
    answer_token_ids,
    common_prefix_length,
    padding_groups,
    yes_no_margin,
)
from ..interventions import DEFAULT_METHOD, Intervention, build, split_kwargs
from ..interventions.base import Param
from ..models import resolve_model_path
from ..tasks import TRUTHPROBE_TASKS
from ..tasks.halueval.truthprobe_protocol import PARSE_RULES, reply_decided

ALIASES = ("truthgated", "intervened")


def parse_intervention_args(method: Any = DEFAULT_METHOD, **kwargs: Any) -> Intervention:
    """``model_args`` of any method as its intervention; the same parser as ``interventions.build``."""
    return build(method, **kwargs)


parse_gate_args = parse_intervention_args  # the name of earlier versions, when TruthProbe was the only method


def _config_shape(pretrained: str, **kwargs: Any) -> tuple[int, int, str] | None:
    """(layers, heads, name) from the checkpoint's config, without loading weights; None if it cannot be read."""
    from transformers import AutoConfig

    from ..architectures import text_config

    try:
        config = text_config(AutoConfig.from_pretrained(pretrained, **kwargs))
        return int(config.num_hidden_layers), int(config.num_attention_heads), str(pretrained)
    except Exception:  # HFLM reports unreadable checkpoints itself, with its own message
        return None


def _answer_start(context_enc: list[int], continuation_enc: list[int], max_length: int) -> tuple[tuple[int, ...], int]:
    """HFLM's causal input for one request (``(context + continuation)[-(max_length + 1):][:-1]``) and the index
    of the continuation's first token in it."""
    inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
    return tuple(inp), len(inp) - len(continuation_enc) + 1


def early_stop_applies(request: Any) -> bool:
    """Whether a ``generate_until`` request may stop once its reply is decided: a greedy request of a
    TruthProbe-protocol HaluEval task (``TRUTHPROBE_TASKS``, by lm-eval's task name; its doc names a
    ``truthprobe_protocol`` parse rule), whose reply that module parses from its first characters."""
    doc = getattr(request, "doc", None)
    args = request.args
    gen_kwargs = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    return (getattr(request, "task_name", None) in TRUTHPROBE_TASKS and isinstance(doc, dict)
            and doc.get("parse", "ours") in PARSE_RULES and not gen_kwargs.get("do_sample")
            and (gen_kwargs.get("num_beams") or 1) == 1)


@register_model(*ALIASES)
class TruthGatedLM(HFLM):
    """HFLM with an intervention (default: TruthProbe head gating) attached around every model call."""

    def __init__(
        self,
        pretrained: Any = "smollm2-135m-instruct",
        method: Any = DEFAULT_METHOD,
        intervention: Intervention | None = None,
        device: str | None = None,
        prefix_cache: Any = True,
        early_stop: Any = True,
        split_padding: Any = True,
        **kwargs: Any,
    ) -> None:
        ours, hf_kwargs = split_kwargs({"method": method, **kwargs})
        made = intervention if intervention is not None else build(**ours)  # before anything loads
        use_prefix_cache = Param("prefix_cache", bool, True).parse(prefix_cache, InterventionError)
        self._early_stop = Param("early_stop", bool, True).parse(early_stop, InterventionError)
        self._split_padding = Param("split_padding", bool, True).parse(split_padding, InterventionError)
        self._display_name = pretrained if isinstance(pretrained, str) else None
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
            config_kwargs = {k: hf_kwargs[k] for k in ("trust_remote_code", "revision") if hf_kwargs.get(k)}
            shape = _config_shape(pretrained, **config_kwargs)
            if shape is not None:
                made.check_shape(shape[0], shape[1], self._display_name)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=pretrained, device=device, **hf_kwargs)
        self._enable_cpu_data_parallel()
        self._baked = False
        self._answer_starts: dict[tuple[int, ...], int] = {}
        self._prefix_generator = (SharedPrefixGenerator(self.model, prefix_context=self._prefix_positions)
                                  if use_prefix_cache else None)
        self._prefix_scorer = (SharedPrefixScorer(self.model, prefix_context=self._prefix_positions)
                               if use_prefix_cache else None)
        yes_ids = answer_token_ids(self.tokenizer, ("Yes", "yes"))
        no_ids = [i for i in answer_token_ids(self.tokenizer, ("No", "no")) if i not in yes_ids]
        self._margin_ids = (yes_ids, no_ids)
        self.yes_no_margins: dict[str, float] = {}
        self._batch_contexts: list[str] | None = None
        self._early_stop_contexts: dict[str, bool] = {}  # context -> may stop early (this generate_until call)
        self.generation_counts = self._new_counts()
        self._intervention = made
        made.bind_tokenizer(self.tokenizer)
        self._intervention.check_fits(self.model)
        if made.apply == "bake" and not made.identity:
            made.bake(self.model)
            self._baked = True

    # ---- the intervention ---------------------------------------------------------------------------
    @property
    def intervention(self) -> Intervention:
        return self._intervention

    def set_intervention(self, intervention: Intervention | None = None, **kwargs: Any) -> None:
        """Change the hooked intervention between evaluations: an ``Intervention`` or ``build`` keywords
        (``method`` defaults to truthprobe). Not after ``apply=bake``."""
        if self._baked:
            raise InterventionError("apply=bake: the intervention is folded into the weights; load a new model to "
                                    "change it")
        made = intervention if intervention is not None else build(**{"method": DEFAULT_METHOD, **kwargs})
        if made.apply != "hook":
            raise InterventionError(f"set_intervention: expected apply='hook' (bake works at load time only), found "
                                    f"{made.apply!r}")
        made.bind_tokenizer(self.tokenizer)
        made.check_fits(self.model)
        self._intervention = made
        for cached in (self._prefix_generator, self._prefix_scorer):
            if cached is not None:
                cached.clear()  # prefix caches were computed under the old intervention

    set_gate = set_intervention  # the TruthProbe-only name of earlier versions

    def _attached(self, stack: ExitStack, positions: Any = None) -> None:
        made = self._intervention
        if self._baked or made.identity:
            return
        stack.enter_context(made.attach(self.model))
        if made.wants_positions:
            stack.enter_context(made.edit_positions(positions))

    def _prefix_positions(self):
        made = self._intervention
        if self._baked or not made.wants_positions:
            return ExitStack()
        return made.edit_positions("skip")

    def _row_starts(self, inps: torch.Tensor) -> torch.Tensor | None:
        """Per row of a log-likelihood batch, where its continuation starts (None if a row is not a known request)."""
        starts = []
        for row in inps.tolist():
            n = len(row)
            while n > 0 and row[n - 1] == 0:  # HFLM pads with zeros on the right
                n -= 1
            for length in range(max(n, 1), len(row) + 1):
                start = self._answer_starts.get(tuple(row[:length]))
                if start is not None:
                    starts.append(start)
                    break
            else:
                return None
        return torch.tensor(starts)

    def _loglikelihood_tokens(self, requests, *args: Any, **kwargs: Any):
        if self._intervention.wants_positions and not self._baked:
            self._answer_starts = dict(_answer_start(ctx, cont, self.max_length) for _, ctx, cont in requests)
        try:
            return super()._loglikelihood_tokens(requests, *args, **kwargs)
        finally:
            self._answer_starts = {}

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: Any = None):
        made = self._intervention
        starts = self._row_starts(inps) if self._answer_starts else None
        with ExitStack() as stack:
            positional = made.wants_positions and not self._baked and not made.identity
            if (self._prefix_scorer is not None and attn_mask is None and labels is None and made.uses_prefix_cache
                    and (starts is not None or not positional)):
                self._attached(stack, positions="skip")  # the passes below say which positions to edit
                shifted = positional

                def suffix(p: int):
                    return made.edit_positions(starts.to(inps.device) - p if shifted else None)

                logits = self._prefix_scorer.logits(inps, max_prefix=int(starts.min()) if shifted else None,
                                                    suffix_context=suffix if shifted else None)
                if logits is not None:
                    return logits
                stack.close()
            self._attached(stack, positions=starts)
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    # ---- generation ---------------------------------------------------------------------------------
    @staticmethod
    def _new_counts() -> dict[str, int]:
        """Counts of the last ``generate_until`` call: batches, generation steps (one forward pass of the batch
        each, after the prompt's), generated tokens (each row's, before its trailing padding), and how many
        requests and batches early stopping applied to."""
        return {"batches": 0, "steps": 0, "tokens": 0, "early_stop_requests": 0, "early_stop_batches": 0}

    def early_stop_off_reason(self) -> str | None:
        """Why early stopping cannot be exact with this model (then it stays off), or None."""
        if getattr(self, "think_end_token", None) is not None:
            return "think_end_token is set: the reply is the text after the thinking, not the decoded prefix"
        if getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
            return ("the tokenizer cleans up tokenization spaces: a decoded prefix need not be a prefix of the "
                    "decoded reply")
        return None

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        self.generation_counts = self._new_counts()
        eligible: dict[str, bool] = {}
        if self._early_stop and self.early_stop_off_reason() is None:
            for request in requests:  # a context shared with a request of another task runs in full
                context = request.args[0]
                eligible[context] = eligible.get(context, True) and early_stop_applies(request)
        self._early_stop_contexts = eligible
        self.generation_counts["early_stop_requests"] = sum(eligible.get(r.args[0], False) for r in requests)
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self._early_stop_contexts = {}

    def tok_batch_encode(self, strings: list[str], *args: Any, **kwargs: Any):
        self._batch_contexts = list(strings)  # generate_until encodes a batch, then generates it
        return super().tok_batch_encode(strings, *args, **kwargs)

    def _early_stop_rows(self, contexts: list[str] | None, batch_size: int, kwargs: dict) -> list[bool] | None:
        """Per row of this batch, whether it may stop once decided; None when no row may (or not greedy search)."""
        if not self._early_stop_contexts or contexts is None or len(contexts) != batch_size:
            return None
        if kwargs.get("do_sample") or (kwargs.get("num_beams") or 1) > 1:
            return None
        rows = [self._early_stop_contexts.get(c, False) for c in contexts]
        return rows if any(rows) else None

    def _model_generate(self, *args: Any, **kwargs: Any):
        """HFLM's batch, split where its padding costs more than another generate call (``padding_groups``)."""
        call = {**dict(zip(("context", "max_length", "stop"), args)), **kwargs}
        context, mask = call["context"], call.get("attention_mask")
        groups = self._padding_groups(context, mask, call)
        if len(groups) < 2:
            return self._generate_batch(**call)
        contexts, width = self._batch_contexts, context.shape[1]
        pieces = []
        for rows in groups:  # each group at its own width: its left padding beyond its longest row dropped
            keep = int(mask[rows].sum(dim=1).max())
            index = torch.tensor(rows, device=context.device)
            self._batch_contexts = None if contexts is None else [contexts[i] for i in rows]
            part = {**call, "context": context[index, width - keep:], "attention_mask": mask[index, width - keep:],
                    "max_length": call["max_length"] - (width - keep)}
            pieces.append((index, self._generate_batch(**part)[:, keep:]))
        # reassembled as one generate call returns a batch: the prompt's width, then each row's continuation,
        # padded after its end (where generate pads a row that finished before the others)
        longest = max(piece.shape[1] for _, piece in pieces)
        out = torch.full((context.shape[0], width + longest), self.tokenizer.pad_token_id, dtype=context.dtype,
                         device=context.device)
        out[:, :width] = context
        for index, piece in pieces:
            out[index, width:width + piece.shape[1]] = piece
        return out

    def _padding_groups(self, context: torch.Tensor, mask: torch.Tensor | None, call: dict) -> list[list[int]]:
        """Groups of rows to generate separately (one group: the batch as it is). Greedy search on a left-padded
        batch only: a sampled row's draws would depend on its batch."""
        if (not self._split_padding or mask is None or context.shape[0] < 2 or call.get("do_sample")
                or (call.get("num_beams") or 1) > 1 or bool((mask[:, -1] == 0).any())):
            return [list(range(context.shape[0]))]
        lengths = mask.sum(dim=1)
        if self._prefix_generator is not None and self._intervention.uses_prefix_cache:
            shared = common_prefix_length(context, mask)  # runs once, whatever the groups
            if shared >= MIN_PREFIX_TOKENS:
                lengths = lengths - shared
        return padding_groups(lengths.tolist())

    def _generate_batch(self, **kwargs: Any):
        context, stop = kwargs["context"], kwargs["stop"]
        early_rows = self._early_stop_rows(self._batch_contexts, context.shape[0], kwargs)
        with ExitStack() as stack:
            self._attached(stack, positions="last")
            first_step = stack.enter_context(self._generation_path(early_rows, stop))
            out = super()._model_generate(**kwargs)
        contexts, self._batch_contexts = self._batch_contexts, None
        if first_step.logits is not None and contexts is not None and len(contexts) == first_step.logits.shape[0]:
            margins = yes_no_margin(first_step.logits, len(self._margin_ids[0])).tolist()
            self.yes_no_margins.update(zip(contexts, margins))
        self._count(out[:, context.shape[1]:], early_rows is not None)
        return out

    def _count(self, continuation: torch.Tensor, early: bool) -> None:
        counts = self.generation_counts
        counts["batches"] += 1
        counts["early_stop_batches"] += int(early)
        counts["steps"] += int(continuation.shape[1])
        pad = self.tokenizer.pad_token_id
        for row in continuation.tolist():
            n = len(row)
            while n > 0 and row[n - 1] == pad:
                n -= 1
            counts["tokens"] += n

    @contextmanager
    def _generation_path(self, early_rows: list[bool] | None = None, stop: list[str] | None = None):
        """Route HFLM's ``self.model.generate(...)`` call through the prefix cache, the first-step logits and, for
        the rows in ``early_rows``, the early stop once a reply is decided."""
        first_step = FirstStepLogits([*self._margin_ids[0], *self._margin_ids[1]])
        model = self.model
        generator = self._prefix_generator if self._intervention.uses_prefix_cache else None

        def generate(input_ids, attention_mask=None, logits_processor=None, **kwargs):
            processors = LogitsProcessorList([*(logits_processor or []), first_step])
            if early_rows is not None:  # the continuation starts at the prompt's width on both paths
                decided = DecidedReplyStop(self.tok_decode, reply_decided, start=input_ids.shape[1],
                                           stops=stop or (), rows=early_rows)
                kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []),
                                                                    decided])
            if generator is None or attention_mask is None:
                return type(model).generate(model, input_ids=input_ids, attention_mask=attention_mask,
                                            logits_processor=processors, **kwargs)
            pad = kwargs.pop("pad_token_id")
            return generator.generate(input_ids, attention_mask, pad_token_id=pad, logits_processor=processors,
                                      **kwargs)

        model.generate = generate  # an instance attribute over the class method, removed on exit
        try:
            yield first_step
        finally:
            del model.generate

    # ---- data parallel on CPU ----------------------------------------------------------------------
    def _enable_cpu_data_parallel(self) -> None:
        """Shard requests across CPU processes started by ``accelerate launch`` (HFLM only does this for GPUs).

        HFLM keeps the ``Accelerator`` when several processes run, but enables its data-parallel split only when
        it counts more than one GPU; on CPU every process would evaluate every request. Rank and world size come
        from the same ``Accelerator``, so lm-eval's own sharding, gathering and rank-0 aggregation take over.
        """
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1 or self.world_size > 1:
            return
        if torch.device(accelerator.device).type != "cpu":
            return
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes

    # ---- results metadata --------------------------------------------------------------------------
    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["intervention"] = self._intervention.describe()
        reason = self.early_stop_off_reason() if self._early_stop else None
        counts = self.generation_counts
        info["early_stop"] = {
            "enabled": self._early_stop and reason is None,
            "tasks": list(TRUTHPROBE_TASKS),
            "requests": counts["early_stop_requests"],  # of the last generate_until call
            "logged_reply": "the decided prefix" if self._early_stop and reason is None else "the full reply",
            **({"off_because": reason} if reason else {}),
        }
        info["split_padding"] = self._split_padding
        return info


__all__ = ["ALIASES", "TruthGatedLM", "early_stop_applies", "parse_gate_args", "parse_intervention_args"]
