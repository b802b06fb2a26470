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

Every setting is a constructor argument (the keys of a VLMEvalKit JSON ``--config`` model entry) or else an
environment variable (for ``--model <name>`` runs), see ``ENV``; ``method=none`` (or TruthProbe's gate
``none``) runs the plain model through the same code (the baseline).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from .vlmeval_registration import keep_grad_mode

with keep_grad_mode():  # importing vlmeval.vlm turns autograd off process-wide
    from vlmeval.vlm.base import BaseModel

from truthprobe_eval.errors import TruthProbeError
from truthprobe_eval.interventions import Intervention, method_class

# constructor argument -> environment variable (for ``--model <name>`` runs, where no constructor key is given)
ENV = {
    "model_path": "TRUTHPROBE_MODEL_PATH",
    "method": "TRUTHPROBE_METHOD",
    "method_args": "TRUTHPROBE_METHOD_ARGS",  # any method's settings, lm-eval style: "directions=iti.json,k=48"
    "scores": "TRUTHPROBE_SCORES",
    "alpha": "TRUTHPROBE_ALPHA",
    "norm": "TRUTHPROBE_NORM",
    "site": "TRUTHPROBE_SITE",
    "gate": "TRUTHPROBE_GATE",
    "seed": "TRUTHPROBE_SEED",
    "apply": "TRUTHPROBE_APPLY",
    "dtype": "TRUTHPROBE_DTYPE",
    "device": "TRUTHPROBE_DEVICE",
    "max_new_tokens": "TRUTHPROBE_MAX_NEW_TOKENS",
}
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


def _from_env(name: str, value: Any) -> Any:
    if value is not None and value != "":
        return value
    env = os.environ.get(ENV[name], "")
    return env if env != "" else DEFAULTS.get(name)


def _args_string(text: str) -> dict[str, str]:
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep:
                raise TruthProbeError(f"{ENV['method_args']}: expected NAME=VALUE[,NAME=VALUE...], found {part!r}")
            out[key.strip()] = value.strip()
    return out


def resolve_intervention(given: dict[str, Any]) -> Intervention:
    """The intervention from constructor values, else environment variables, else the method's defaults.

    ``given`` holds the constructor's keys (``method`` and any method setting). The same parser as lm-eval's
    ``model_args`` (``interventions.build``); an error names the config key and the environment variable.
    """
    from truthprobe_eval.interventions import method_class

    method = _from_env("method", given.get("method"))
    cls = method_class(method)
    from_env_args = _args_string(os.environ.get(ENV["method_args"], ""))
    settings = {}
    for name in cls.param_names():
        value = given.get(name)
        if value is None or value == "":
            value = os.environ.get(ENV[name], "") if name in ENV else ""
        if value == "":
            value = from_env_args.get(name, "")
        if value != "":
            settings[name] = value
    try:
        return cls.from_kwargs(**settings)
    except TruthProbeError as exc:
        name = str(exc).split(":", 1)[0]
        if name in settings or name in cls.param_names():
            where = f"config key '{name}' or {ENV[name]}" if name in ENV else f"config key '{name}' or {ENV['method_args']}"
            raise type(exc)(f"{name} ({where}):{str(exc).split(':', 1)[1]}") from None
        raise


def check_fits_config(model_path: str, intervention: Intervention) -> None:
    """Compare the intervention's shape with the model's language model config (no weights).

    Raises ``ShapeMismatchError`` naming the scores' (directions') model and this model.
    """
    if intervention.identity:
        return
    from transformers import AutoConfig

    from truthprobe_eval.architectures import text_config
    from truthprobe_eval.models import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_path))
    except OSError as exc:
        raise TruthProbeError(f"could not load a model config from {model_path!r}: {exc}") from None
    tcfg = text_config(config)
    intervention.check_shape(int(tcfg.num_hidden_layers), int(tcfg.num_attention_heads),
                             f"the language model of {model_path}")


def _auto_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _auto_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


class TruthGatedVLM(BaseModel):
    """A Hugging Face MLLM with TruthProbe head gating on its language model, for VLMEvalKit.

    Arguments (each also read from the environment, see ``ENV``): ``model_path`` (hub id, local folder);
    ``method`` (truthprobe, iti, none) and its settings, e.g. TruthProbe's ``scores`` (score file: ours, published
    ``.npy`` or ``cv5_head_metrics.csv``), ``alpha``, ``norm``, ``site``, ``gate`` (truthprobe, random, inverse,
    shuffled, none), ``seed``, and ``apply`` (hook or bake, same numbers);
    ``dtype``, ``device`` (auto: CUDA + bfloat16 where available, else CPU + float32); ``max_new_tokens``;
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
        default_model_path: str | None = None,
        system_prompt: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        use_vllm: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        if use_vllm:
            raise TruthProbeError("TruthGatedVLM: vLLM inference is not supported (the gate hooks run in transformers); drop --use-vllm")
        path = _from_env("model_path", model_path) or default_model_path
        if not path:
            raise TruthProbeError(f"TruthGatedVLM: expected a model (config key 'model_path' or {ENV['model_path']}), found none")
        self.model_path = str(path)
        names = set(method_class(_from_env("method", method)).param_names())
        self.intervention = resolve_intervention({"method": method, **{k: v for k, v in kwargs.items() if k in names}})
        generate_kwargs = {k: v for k, v in kwargs.items() if k not in names}
        check_fits_config(self.model_path, self.intervention)  # before the weights load

        from truthprobe_eval.models import load_model

        self.device = _auto_device(str(_from_env("device", device)))
        self.dtype = _auto_dtype(str(_from_env("dtype", dtype)), self.device)
        self.max_new_tokens = int(_from_env("max_new_tokens", max_new_tokens))
        self.model, self.processor = load_model(self.model_path, dtype=self.dtype, device=self.device)
        if not hasattr(self.processor, "image_processor"):
            raise TruthProbeError(f"TruthGatedVLM: expected a multimodal checkpoint with an image processor at {self.model_path}, "
                                  f"found {type(self.model).__name__} with {type(self.processor).__name__}")
        self.family = family_of(self.model.config.model_type)
        self.system_prompt = system_prompt
        self.processor_kwargs = self._pixel_budget(min_pixels, max_pixels)
        self.generate_kwargs = generate_kwargs
        self._gate_stack = contextlib.ExitStack()
        self.gates = None
        self._apply_gate()

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
    def _apply_gate(self) -> None:
        made = self.intervention
        if made.identity:
            return
        made.bind_tokenizer(getattr(self.processor, "tokenizer", self.processor))
        if made.apply == "bake":
            made.bake(self.model)
        else:
            self._gate_stack.enter_context(made.attach(self.model))
        if made.wants_positions:  # one generation per call: the prompt's last position, then each new token
            self._gate_stack.enter_context(made.edit_positions("last"))
        gates = getattr(made, "gates", None)
        self.gates = gates(self.model) if callable(gates) else None

    def close(self) -> None:
        """Remove the hooks (a baked model stays changed)."""
        self._gate_stack.close()

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

    @torch.inference_mode()
    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        from truthprobe_eval.tasks.vlmeval_common import generation_overrides

        inputs = self.encode(message)
        settings = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs, **generation_overrides(dataset)}
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tokenizer, "pad_token_id", None) is not None:
            settings.setdefault("pad_token_id", tokenizer.pad_token_id)
        output = self.model.generate(**inputs, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                     **settings)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()

    def describe(self) -> dict:
        return {"model_path": self.model_path, "family": self.family.name, "device": self.device, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "intervention": self.intervention.describe()}


__all__ = ["TruthGatedVLM", "Family", "FAMILIES", "ENV", "check_fits_config", "family_of", "resolve_intervention"]

from . import vlmeval_registration as _registration  # noqa: E402

if _registration._deferred:  # the start-up hook fired while this module imported VLMEvalKit: finish it now
    _registration.register()

