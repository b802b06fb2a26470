"""``truthgated`` (alias ``intervened``) for lmms-eval: lmms-eval's own Hugging Face model class for the checkpoint's
family, with any registered intervention on its language model.

The family comes from the checkpoint's config (``model_type``): LLaVA-1.5 and LLaVA-NeXT run through lmms-eval's
``llava_hf`` class, Qwen2-VL through ``qwen2_vl``, Qwen2.5-VL through ``qwen2_5_vl`` (``INNER``). Prompts, image
processing, batching and decoding are that class's, unchanged; this wrapper only builds the intervention from the
same ``method=...`` keywords as lm-eval's ``truthgated`` and VLMEvalKit's ``TruthGatedVLM`` take, checks it against
the config before the weights load, and attaches it to the loaded model for the model's lifetime (generation edits
each call's last position, i.e. the prompt's last token, then each new one, as in VLMEvalKit).

    python -m lmms_eval --model truthgated \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,scores=vicuna7b_scores.json,alpha=1.0 \\
        --tasks pope_local --batch_size 1 --log_samples --output_path runs/lmms

Every other keyword (``device``, ``dtype``, ``batch_size``, ``max_pixels`` ...) goes to the lmms-eval class. The
intervention's ``describe()`` goes into lmms-eval's results as ``config.intervention`` (lmms-eval 0.7.3 has no
model-info call of its own; ``lmms_eval_registration`` adds it). Batching is the wrapped class's: lmms-eval's
``qwen2_vl`` batches; its ``llava_hf`` generates one request at a time (its own limit), which this class says
before loading rather than after.
"""
from __future__ import annotations

import importlib
from contextlib import ExitStack
from typing import Any, ClassVar

from lmms_eval.api.model import lmms

from truthprobe_eval.errors import TruthProbeError

from .method_settings import auto_device, check_fits_config, model_config, split_method_settings

# config.model_type -> lmms-eval's Hugging Face class for that family
INNER = {
    "llava": "lmms_eval.models.simple.llava_hf.LlavaHf",
    "llava_next": "lmms_eval.models.simple.llava_hf.LlavaHf",
    "qwen2_vl": "lmms_eval.models.simple.qwen2_vl.Qwen2_VL",
    "qwen2_5_vl": "lmms_eval.models.simple.qwen2_5_vl.Qwen2_5_VL",
}
ONE_AT_A_TIME = {"lmms_eval.models.simple.llava_hf.LlavaHf"}  # their generate_until asserts batch_size == 1


def inner_class(model_type: str) -> type:
    """lmms-eval's class for a checkpoint's ``model_type``; a clear error for a family we do not wrap."""
    if model_type not in INNER:
        raise TruthProbeError(f"truthgated (lmms-eval): expected a checkpoint of {', '.join(sorted(INNER))}, "
                              f"found model_type {model_type!r}")
    module, name = INNER[model_type].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


class TruthGatedLMM(lmms):
    """lmms-eval's Hugging Face class for the checkpoint's family with an intervention; see the module docstring."""

    is_simple = True
    # what each instance of this process recorded (get_model_info), newest last: read into the results' config, and
    # kept apart from the instances so that lmms-eval's clean() can free each model between runs
    recorded: ClassVar[list[dict]] = []

    def __init__(self, pretrained: str, method: str | None = None, device: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.intervention, rest = split_method_settings({"method": method, **kwargs}, "truthgated (lmms-eval)")
        self.pretrained = str(pretrained)
        from truthprobe_eval.models import resolve_model_path

        path = resolve_model_path(self.pretrained)
        config = model_config(self.pretrained)
        cls = inner_class(getattr(config, "model_type", None))
        check_fits_config(self.pretrained, self.intervention)  # before the weights load
        self.inner_name = f"{cls.__module__}.{cls.__name__}"
        if self.inner_name in ONE_AT_A_TIME and str(rest.get("batch_size", 1) or 1) != "1":
            raise TruthProbeError(f"truthgated (lmms-eval): lmms-eval's {cls.__name__} generates one request at a "
                                  f"time; expected batch_size=1, found {rest['batch_size']}")
        self.device_name = auto_device(device)
        if not self.device_name.startswith("cuda"):
            # the classes' device_map defaults ("cuda", "auto"; llava_hf's "" means cuda:<rank> under accelerate)
            # would place the model on a GPU: keep it where the device says
            rest.setdefault("device_map", self.device_name)
        self.inner = cls(pretrained=path, device=self.device_name, **rest)
        self.task_dict = self.inner.task_dict  # the evaluator fills this dict; the inner class reads it
        self._rank, self._world_size = self.inner.rank, self.inner.world_size
        if getattr(self.inner, "accelerator", None) is not None:
            self.accelerator = self.inner.accelerator
        self._edits = ExitStack()
        self._attach()
        TruthGatedLMM.recorded.append(self.get_model_info())

    # ---- the intervention ---------------------------------------------------------------------------
    @property
    def model(self):
        """The Hugging Face model the intervention edits (unwrapped from accelerate)."""
        return self.inner.model

    def _attach(self) -> None:
        made = self.intervention
        if made.identity:
            return
        processor = getattr(self.inner, "processor", None) or getattr(self.inner, "_image_processor", None)
        made.bind_tokenizer(getattr(processor, "tokenizer", None) or self.inner.tokenizer)
        if made.apply == "bake":
            made.bake(self.model)
        else:
            self._edits.enter_context(made.attach(self.model))
        if made.wants_positions:  # generation: the prompt's last position, then each new token
            self._edits.enter_context(made.edit_positions("last"))

    def close(self) -> None:
        """Remove the hooks (a baked model stays changed)."""
        self._edits.close()

    def clean(self) -> None:
        """What lmms-eval calls after a run: the hooks out, then the wrapped class frees its model."""
        self.close()
        self.inner.clean()

    def describe(self) -> dict:
        return {"pretrained": self.pretrained, "lmms_eval_class": self.inner_name, "device": self.device_name,
                "intervention": self.intervention.describe()}

    def get_model_info(self) -> dict:
        """What lmms-eval's results record under ``config`` (the intervention, the wrapped class)."""
        described = self.describe()
        return {"intervention": described["intervention"], "truthgated": described}

    # ---- lmms-eval's interface: the wrapped class does the work --------------------------------------
    def set_cache_hook(self, cache_hook) -> None:
        super().set_cache_hook(cache_hook)
        self.inner.set_cache_hook(cache_hook)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    @property
    def device(self):
        return self.inner.device

    def __getattr__(self, name: str):
        # anything else the evaluator or a task asks of the model (config, eot_token_id, ...): the wrapped class's
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def _sync_rank(self) -> None:
        # the evaluator may set _rank/_world_size on this object (torchrun path); the inner class logs by its own
        self.inner._rank, self.inner._world_size = self._rank, self._world_size

    def generate_until(self, requests: list) -> list:
        self._sync_rank()
        return self.inner.generate_until(requests)

    def generate_until_multi_round(self, requests: list) -> list:
        self._sync_rank()
        return self.inner.generate_until_multi_round(requests)

    def loglikelihood(self, requests: list) -> list:
        if self.intervention.wants_positions:
            raise TruthProbeError("truthgated (lmms-eval): log-likelihood scoring edits every position here; "
                                  f"expected positions=all for {self.intervention.name}, found "
                                  f"positions={self.intervention.settings.get('positions')}")
        self._sync_rank()
        return self.inner.loglikelihood(requests)


__all__ = ["INNER", "TruthGatedLMM", "inner_class"]
