"""Gated Hugging Face MLLMs as VLMEvalKit models (``vlmeval.vlm.base.BaseModel`` subclasses).

One class, ``TruthGatedVLM``, serves every Hugging Face-native image-text-to-text model: it loads through
``truthprobe_eval.load_model`` (the path users run), builds the prompt with the processor's own chat template
and decodes greedily. The few differences between families sit in ``FAMILIES`` (a fallback template where a
checkpoint ships none, processor call options such as Qwen2-VL's pixel budget).

The intervention (``method``, default ``truthprobe``; any method of ``truthprobe_eval.interventions``, built by
the same parser as lm-eval's ``model_args``) applies to the language model only (the architecture table finds it
inside LLaVA, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM). TruthProbe's scores come from any score
file of the same (layers, heads) shape: probed on the base LLM (transfer, e.g. Vicuna-7B -> LLaVA-1.5-7B) or on
the MLLM itself. A shape mismatch raises ``ShapeMismatchError`` naming both, before the weights load.

Every setting is a constructor argument: the keys of a VLMEvalKit JSON ``--config`` model entry, which
``truthprobe vlmeval`` writes from its options. ``method=none`` (or TruthProbe's gate ``none``) runs the plain
model through the same code (the baseline).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch

from .startup_hook import keep_grad_mode

with keep_grad_mode():  # importing vlmeval.vlm turns autograd off process-wide
    from vlmeval.vlm.base import BaseModel

from truthprobe_eval.errors import TruthProbeError
from truthprobe_eval.interventions import method_class
from truthprobe_eval.interventions.base import Param

from .method_settings import auto_device, check_fits_config, check_method_keys, resolve_intervention

DEFAULTS = {"method": "truthprobe", "dtype": "auto", "device": "auto", "max_new_tokens": 512}


@dataclass(frozen=True)
class Family:
    """Per-family prompt/processor quirks; everything else is the processor's chat template."""

    name: str
    model_types: tuple[str, ...]
    fallback_template: str | None = None  # used when the checkpoint ships no chat template; {images} {prompt}
    image_token: str = "<image>"
    processor_options: tuple[str, ...] = ()  # constructor kwargs forwarded to the processor call


FAMILIES = (
    Family("llava", ("llava",), "USER: {images}{prompt} ASSISTANT:"),
    Family("llava_next", ("llava_next",), "USER: {images}{prompt} ASSISTANT:"),
    Family("qwen2_vl", ("qwen2_vl", "qwen2_5_vl"), None, "<|vision_start|><|image_pad|><|vision_end|>",
           ("min_pixels", "max_pixels")),
    Family("idefics3", ("idefics3", "smolvlm"), "<|im_start|>User:{images}{prompt}<end_of_utterance>\nAssistant:"),
)
GENERIC = Family("generic", ())


def family_of(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return GENERIC


def _given(value: Any, name: str) -> Any:
    """A constructor value, else the default (an empty string counts as not given)."""
    return DEFAULTS.get(name) if value is None or value == "" else value


@functools.lru_cache(maxsize=None)  # asked once per generation; the registered classes do not change
def dataset_max_new_tokens_default(dataset: str | None) -> int | None:
    """The generation limit a registered local data set declares (``MAX_NEW_TOKENS``, e.g. CHAIR's 64), or None."""
    from ..tasks.vlmeval_datasets import dataset_classes

    for cls in dataset_classes():
        if dataset in cls.supported_datasets():
            return getattr(cls, "MAX_NEW_TOKENS", None)
    return None


def _limit(value: Any, what: str) -> int:
    """A generation limit: a positive integer (from a config's number or string), parsed as method settings are."""
    out = Param(what, int).parse(value, TruthProbeError)
    if out is None or out < 1:
        raise TruthProbeError(f"{what}: expected a positive integer, found {value!r}")
    return out


def _auto_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


class TruthGatedVLM(BaseModel):
    """A Hugging Face MLLM with any registered intervention on its language model, for VLMEvalKit (the name says
    ``gated`` for TruthProbe, the default method; users type it).

    Arguments: ``model_path`` (hub id, local folder);
    ``method`` (any registered method, ``truthprobe_eval.interventions.methods()``, or none) and its settings (the
    method's declared ``params``: TruthProbe's ``scores``, ``alpha``, ``norm``, ...; ITI's ``directions``, ``k``,
    ...), and ``apply`` (hook or bake, same numbers);
    ``dtype``, ``device`` (auto: CUDA + bfloat16 where available, else CPU + float32); ``max_new_tokens``
    (default 512) and ``dataset_max_new_tokens`` (data set name -> limit; a local data set's own declaration,
    CHAIR_local's 64, applies where this names none);
    ``min_pixels`` / ``max_pixels`` (Qwen2-VL family); any other keyword goes to ``generate``.
    """

    INSTALL_REQ = False
    INTERLEAVE = True
    allowed_types = ["text", "image"]

    def __init__(
        self,
        model_path: str | None = None,
        method: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        max_new_tokens: int | str | None = None,
        dataset_max_new_tokens: dict[str, int] | None = None,
        default_model_path: str | None = None,
        system_prompt: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        use_vllm: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        if use_vllm:
            raise TruthProbeError("TruthGatedVLM: vLLM inference is not supported (the interventions' hooks run in transformers); drop --use-vllm")
        path = _given(model_path, "model_path") or default_model_path
        if not path:
            raise TruthProbeError("TruthGatedVLM: expected a model (config key 'model_path', `truthprobe vlmeval --hf-model`), found none")
        self.model_path = str(path)
        check_method_keys({"method": method, **kwargs})
        names = set(method_class(_given(method, "method")).param_names())
        self.intervention = resolve_intervention({"method": method, **{k: v for k, v in kwargs.items() if k in names}})
        generate_kwargs = {k: v for k, v in kwargs.items() if k not in names}
        check_fits_config(self.model_path, self.intervention)  # before the weights load

        from truthprobe_eval.models import load_model

        self.device = auto_device(_given(device, "device"))
        self.dtype = _auto_dtype(str(_given(dtype, "dtype")), self.device)
        self.max_new_tokens = _limit(_given(max_new_tokens, "max_new_tokens"), "max_new_tokens")
        if not isinstance(dataset_max_new_tokens, (dict, type(None))):
            raise TruthProbeError(f"dataset_max_new_tokens: expected an object of data set name -> limit, found {dataset_max_new_tokens!r}")
        self.dataset_max_new_tokens = {str(k): _limit(v, f"dataset_max_new_tokens[{k!r}]")
                                       for k, v in (dataset_max_new_tokens or {}).items()}
        self.model, self.processor = load_model(self.model_path, dtype=self.dtype, device=self.device)
        if not hasattr(self.processor, "image_processor"):
            raise TruthProbeError(f"TruthGatedVLM: expected a multimodal checkpoint with an image processor at {self.model_path}, "
                                  f"found {type(self.model).__name__} with {type(self.processor).__name__}")
        self.family = family_of(self.model.config.model_type)
        self.system_prompt = system_prompt
        self.processor_kwargs = self._pixel_budget(min_pixels, max_pixels)
        self.generate_kwargs = generate_kwargs
        self._edit_stack = contextlib.ExitStack()
        self.gates = None
        self._attach_intervention()

    def _pixel_budget(self, min_pixels: int | None, max_pixels: int | None) -> dict:
        """Qwen2-VL family: the image processor's pixel budget, as its ``size`` call option."""
        if min_pixels is None and max_pixels is None:
            return {}
        if "min_pixels" not in self.family.processor_options:
            raise TruthProbeError(f"min_pixels / max_pixels: only for the Qwen2-VL family, found a {self.family.name} model")
        size = dict(getattr(self.processor.image_processor, "size", None) or {})
        if min_pixels is not None:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels)
        return {"size": size}

    # ---- the intervention ---------------------------------------------------------------------------
    def _attach_intervention(self) -> None:
        made = self.intervention
        if made.identity:
            return
        made.bind_tokenizer(getattr(self.processor, "tokenizer", self.processor))
        if made.apply == "bake":
            made.bake(self.model)
        else:
            self._edit_stack.enter_context(made.attach(self.model))
        if made.wants_positions:  # one generation per call: the prompt's last position, then each new token
            self._edit_stack.enter_context(made.edit_positions("last"))
        gates = getattr(made, "gates", None)
        self.gates = gates(self.model) if callable(gates) else None

    def close(self) -> None:
        """Remove the hooks (a baked model stays changed)."""
        self._edit_stack.close()

    # ---- prompting ----------------------------------------------------------------------------------
    def use_custom_prompt(self, dataset: str | None) -> bool:
        return False  # the data set's own prompt, identical for every model

    def build_prompt(self, line, dataset=None):  # pragma: no cover - never called (use_custom_prompt is False)
        raise NotImplementedError

    def _conversation(self, message: list[dict]) -> tuple[list[dict], list[str]]:
        content, images = [], []
        for item in message:
            if item["type"] == "image":
                content.append({"type": "image"})
                images.append(item["value"])
            else:
                content.append({"type": "text", "text": item["value"]})
        conversation = []
        if self.system_prompt:
            conversation.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        conversation.append({"role": "user", "content": content})
        return conversation, images

    def prompt_text(self, message: list[dict]) -> tuple[str, list[str]]:
        """The model's input text (chat template applied) and the image paths, in order."""
        conversation, images = self._conversation(message)
        template = getattr(self.processor, "chat_template", None) or getattr(getattr(self.processor, "tokenizer", None), "chat_template", None)
        if template:
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False), images
        if self.family.fallback_template is None:
            raise TruthProbeError(f"{self.model_path}: expected a chat template in the processor (or a {self.family.name} "
                                  "fallback template), found none")
        prompt = "\n".join(item["value"] for item in message if item["type"] == "text")
        marks = "".join(f"{self.family.image_token}\n" for _ in images)
        return self.family.fallback_template.format(images=marks, prompt=prompt), images

    # ---- generation ---------------------------------------------------------------------------------
    def encode(self, message: list[dict]):
        """The model inputs (ids, pixels) of one VLMEvalKit message: chat template, images, the processor."""
        from PIL import Image

        text, paths = self.prompt_text(message)
        images = [Image.open(p).convert("RGB") for p in paths]
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt", **self.processor_kwargs)
        inputs = inputs.to(self.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.model.dtype)
        return inputs

    def max_new_tokens_for(self, dataset: str | None) -> int:
        """This data set's limit: ``dataset_max_new_tokens``, else the data set's declaration, else ``max_new_tokens``."""
        if dataset in self.dataset_max_new_tokens:
            return self.dataset_max_new_tokens[dataset]
        declared = dataset_max_new_tokens_default(dataset)
        return self.max_new_tokens if declared is None else int(declared)

    @torch.inference_mode()
    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        inputs = self.encode(message)
        settings = {**self.generate_kwargs, "max_new_tokens": self.max_new_tokens_for(dataset)}
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tokenizer, "pad_token_id", None) is not None:
            settings.setdefault("pad_token_id", tokenizer.pad_token_id)
        output = self.model.generate(**inputs, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                     **settings)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()

    def describe(self) -> dict:
        return {"model_path": self.model_path, "family": self.family.name, "device": self.device, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "dataset_max_new_tokens": self.dataset_max_new_tokens,
                "intervention": self.intervention.describe()}


__all__ = ["TruthGatedVLM", "Family", "FAMILIES", "DEFAULTS", "check_fits_config", "check_method_keys", "dataset_max_new_tokens_default",
           "family_of", "resolve_intervention"]

from .startup_hook import module_finished  # noqa: E402

module_finished(__name__)  # a registration the start-up hook deferred while this module imported VLMEvalKit

