"""``truthgated``: lm-eval's ``hf`` model with TruthProbe soft head gating.

    lm_eval --model truthgated \\
        --model_args pretrained=smollm2-135m-instruct,scores=scores/smollm2.json,alpha=4.5,norm=centered \\
        --tasks halueval_qa --apply_chat_template

``model_args`` are everything ``hf`` takes, plus ``scores``, ``alpha``, ``norm``, ``site``, ``gate``, ``seed`` and
``apply`` (see ``parse_gate_args``). With ``apply=hook`` (default) forward hooks are added around every model call
(log-likelihood and generation requests alike) and removed after it; ``apply=bake`` folds the gates into the
output-projection weights once, at load time (same numbers, no per-call cost). Gate settings are validated, and
the score file read, before the model loads.

Generation (``generate_until``) adds two things to HFLM's, neither of which changes a reply:
- ``prefix_cache`` (default true): the prompt prefix every row of a batch shares runs once and generation
  continues from its KV cache (``truthprobe_eval.generation``); ``prefix_cache=false`` is HFLM's plain path.
- the first step's Yes-minus-No log-odds of every generated request, kept in ``yes_no_margins`` (context string
  -> float) for threshold-free detection metrics (AUROC) without another forward pass.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import LogitsProcessorList

from ..errors import GateConfigError, ScoreFileError
from ..gating import KINDS, NORMS, SITES, bake, check_gate_settings, gate
from ..generation import FirstStepLogits, SharedPrefixGenerator, answer_token_ids, yes_no_margin
from ..models import resolve_model_path
from ..scores import TruthScores

APPLY_MODES = ("hook", "bake")
NEEDS_SCORES = ("truthprobe", "inverse", "shuffled")


@dataclass
class GateSettings:
    """Validated gate arguments (see ``parse_gate_args``)."""

    scores: TruthScores | None
    alpha: float = 4.5
    norm: str = "centered"
    site: str = "o_proj_output"
    kind: str = "truthprobe"
    seed: int = 0
    apply: str = "hook"
    source: str | None = field(default=None)

    def describe(self) -> dict[str, Any]:
        return {"gate": self.kind, "alpha": self.alpha, "norm": self.norm, "site": self.site, "seed": self.seed,
                "apply": self.apply, "scores": self.source,
                "scores_model": None if self.scores is None else self.scores.model}


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GateConfigError(f"{what}: expected an integer, found {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise GateConfigError(f"{what}: expected an integer, found {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise GateConfigError(f"{what}: expected an integer, found {value!r}")
    return int(number)


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise GateConfigError(f"{what}: expected true or false, found {value!r}")


def parse_gate_args(
    scores: "str | TruthScores | None" = None,
    alpha: Any = 4.5,
    norm: Any = "centered",
    site: Any = "o_proj_output",
    gate: Any = "truthprobe",
    seed: Any = 0,
    apply: Any = "hook",
) -> GateSettings:
    """Check every gate argument and read the score file; raises a ``TruthProbeError`` naming the bad one.

    - ``scores``: our JSON score file, a published ``.npy`` (layers, heads) array or ``cv5_head_metrics.csv``.
      Required for ``gate=truthprobe`` / ``inverse``; ``random`` and ``none`` take the shape from the model.
    - ``alpha`` (4.5): gate strength in ``g = 1 + alpha * norm(s)``.
    - ``norm`` (centered): ``centered``, ``minmax`` or ``raw``, per layer.
    - ``site`` (o_proj_output): ``o_proj_output`` (published) or ``o_proj_input``.
    - ``gate`` (truthprobe): ``truthprobe``, ``inverse`` (1 - alpha * norm(s)), ``random`` (1 + alpha * U[-1, 1]
      from ``seed``), ``shuffled`` (the truthprobe gates permuted among each layer's heads, from ``seed``) or ``none`` (no gating: the plain ``hf`` model).
    - ``seed`` (0): seed of the ``random`` gate.
    - ``apply`` (hook): ``hook`` (forward hooks around each call) or ``bake`` (weights scaled once at load).
    """
    kind = "none" if gate is None else gate  # lm-eval's argument parser turns the string "none" into None
    if isinstance(alpha, bool):
        raise GateConfigError(f"alpha: expected a finite number, found {alpha!r}")
    for name, value, choices in (("norm", norm, NORMS), ("site", site, SITES), ("gate", kind, KINDS)):
        if not isinstance(value, str):
            raise GateConfigError(f"{name}: expected one of {', '.join(choices)}, found {value!r}")
    alpha_f = check_gate_settings(alpha, norm, site, kind)
    seed_i = _as_int(seed, "seed")
    if apply not in APPLY_MODES:
        raise GateConfigError(f"apply: expected one of {', '.join(APPLY_MODES)}, found {apply!r}")
    loaded: TruthScores | None = None
    source = None
    if isinstance(scores, TruthScores):
        loaded, source = scores, str(scores.meta.get("source_file") or "<in memory>")
    elif scores is not None and scores != "":
        if not isinstance(scores, str):
            raise ScoreFileError(f"scores: expected a path to a .json, .npy or .csv score file, found {scores!r}")
        loaded, source = TruthScores.load(scores), scores
    elif kind in NEEDS_SCORES:
        raise GateConfigError(
            f"scores: gate={kind!r} needs Truth Scores, found none; pass scores=PATH (a truthprobe .json, a published "
            f".npy or cv5_head_metrics.csv), or use gate=none / gate=random"
        )
    return GateSettings(loaded, alpha_f, norm, site, kind, seed_i, apply, source)


def _config_shape(pretrained: str, **kwargs: Any) -> tuple[int, int, str] | None:
    """(layers, heads, name) from the checkpoint's config, without loading weights; None if it cannot be read."""
    from transformers import AutoConfig

    from ..architectures import text_config

    try:
        config = text_config(AutoConfig.from_pretrained(pretrained, **kwargs))
        return int(config.num_hidden_layers), int(config.num_attention_heads), str(pretrained)
    except Exception:  # HFLM reports unreadable checkpoints itself, with its own message
        return None


@register_model("truthgated")
class TruthGatedLM(HFLM):
    """HFLM whose attention heads are soft-gated by Truth Scores (``g[l, h] = 1 + alpha * norm(s)[l, h]``)."""

    def __init__(
        self,
        pretrained: Any = "smollm2-135m-instruct",
        scores: "str | TruthScores | None" = None,
        alpha: Any = 4.5,
        norm: Any = "centered",
        site: Any = "o_proj_output",
        gate: Any = "truthprobe",
        seed: Any = 0,
        apply: Any = "hook",
        device: str | None = None,
        prefix_cache: Any = True,
        **kwargs: Any,
    ) -> None:
        settings = parse_gate_args(scores, alpha, norm, site, gate, seed, apply)  # before anything loads
        use_prefix_cache = _as_bool(prefix_cache, "prefix_cache")
        self._display_name = pretrained if isinstance(pretrained, str) else None
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
            config_kwargs = {k: kwargs[k] for k in ("trust_remote_code", "revision") if kwargs.get(k)}
            shape = _config_shape(pretrained, **config_kwargs)
            if shape is not None and settings.scores is not None:
                settings.scores.check_fits(shape[0], shape[1], self._display_name)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self._enable_cpu_data_parallel()
        self._baked = False
        self._gate_settings = settings
        self._hook_scores = self._scores_for_model(settings)
        self._prefix_generator = SharedPrefixGenerator(self.model) if use_prefix_cache else None
        yes_ids = answer_token_ids(self.tokenizer, ("Yes", "yes"))
        no_ids = [i for i in answer_token_ids(self.tokenizer, ("No", "no")) if i not in yes_ids]
        self._margin_ids = (yes_ids, no_ids)
        self.yes_no_margins: dict[str, float] = {}
        self._batch_contexts: list[str] | None = None
        if settings.apply == "bake" and settings.kind != "none":
            bake(self.model, self._hook_scores, settings.alpha, settings.norm, settings.site, settings.kind, settings.seed)
            self._baked = True

    # ---- gate --------------------------------------------------------------------------------------
    @property
    def gate_settings(self) -> GateSettings:
        return self._gate_settings

    def set_gate(self, settings: "GateSettings | None" = None, **gate_args: Any) -> None:
        """Change the hook gate between evaluations (``apply=hook`` only): a ``GateSettings`` or ``parse_gate_args`` keywords."""
        if self._baked:
            raise GateConfigError("apply=bake: the gates are folded into the weights; load a new model to change them")
        settings = settings if settings is not None else parse_gate_args(**gate_args)
        if settings.apply != "hook":
            raise GateConfigError(f"set_gate: expected apply='hook' (bake works at load time only), found {settings.apply!r}")
        scores = self._scores_for_model(settings)  # shape check against the loaded model
        self._gate_settings = settings
        self._hook_scores = scores
        if self._prefix_generator is not None:
            self._prefix_generator.clear()  # prefix caches were computed under the old gate

    def _scores_for_model(self, settings: GateSettings) -> TruthScores:
        from ..architectures import locate_heads, model_name

        sites = locate_heads(self.model)
        name = self._display_name or model_name(self.model)
        if settings.scores is None:  # gate=random / none: only the shape matters
            return TruthScores(np.zeros((sites.num_layers, sites.num_heads)), meta={"model": name})
        settings.scores.check_fits(sites.num_layers, sites.num_heads, name)
        return settings.scores

    def _gated(self):
        s = self._gate_settings
        if self._baked or s.kind == "none":
            return nullcontext()
        return gate(self.model, self._hook_scores, s.alpha, s.norm, s.site, s.kind, s.seed)

    def _model_call(self, *args: Any, **kwargs: Any):
        with self._gated():
            return super()._model_call(*args, **kwargs)

    def tok_batch_encode(self, strings: list[str], *args: Any, **kwargs: Any):
        self._batch_contexts = list(strings)  # generate_until encodes a batch, then generates it
        return super().tok_batch_encode(strings, *args, **kwargs)

    def _model_generate(self, *args: Any, **kwargs: Any):
        with self._gated(), self._generation_path() as first_step:
            out = super()._model_generate(*args, **kwargs)
        contexts, self._batch_contexts = self._batch_contexts, None
        if first_step.logits is not None and contexts is not None and len(contexts) == first_step.logits.shape[0]:
            margins = yes_no_margin(first_step.logits, len(self._margin_ids[0])).tolist()
            self.yes_no_margins.update(zip(contexts, margins))
        return out

    @contextmanager
    def _generation_path(self):
        """Route HFLM's ``self.model.generate(...)`` call through the prefix cache and the first-step logits."""
        first_step = FirstStepLogits([*self._margin_ids[0], *self._margin_ids[1]])
        generator, model = self._prefix_generator, self.model

        def generate(input_ids, attention_mask=None, logits_processor=None, **kwargs):
            processors = LogitsProcessorList([*(logits_processor or []), first_step])
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
        info["truthprobe_gate"] = self._gate_settings.describe()
        return info


__all__ = ["APPLY_MODES", "GateSettings", "TruthGatedLM", "parse_gate_args"]
