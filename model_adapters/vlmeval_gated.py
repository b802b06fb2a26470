"""Gated Hugging Face MLLMs as VLMEvalKit models (``vlmeval.vlm.base.BaseModel`` subclasses).

One class, ``TruthGatedVLM``, serves every Hugging Face-native image-text-to-text model: it loads through
``truthprobe_eval.load_model`` (the path users run), builds the prompt with the processor's own chat template
and decodes greedily. The few differences between families sit in ``FAMILIES`` (a fallback template where a
checkpoint ships none, processor call options such as Qwen2-VL's pixel budget).

The gate ``g[l, h] = 1 + alpha * norm(s)[l, h]`` applies to the language model only (``locate_heads`` finds
it inside LLaVA, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM); scores come from any score file of
the same (layers, heads) shape: probed on the base LLM (transfer, e.g. Vicuna-7B -> LLaVA-1.5-7B) or on the
MLLM itself. A shape mismatch raises ``ShapeMismatchError`` naming both, before the weights load.

Every setting is a constructor argument (the keys of a VLMEvalKit JSON ``--config`` model entry) or else an
environment variable (for ``--model <name>`` runs), see ``ENV``; gate ``none`` runs the plain model through
the same code (the baseline).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from vlmeval.vlm.base import BaseModel

from truthprobe_eval.errors import GateConfigError, TruthProbeError
from truthprobe_eval.gating import KINDS, NORMS, SITES, check_gate_settings

# constructor argument -> environment variable
ENV = {
    "model_path": "TRUTHPROBE_MODEL_PATH",
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
DEFAULTS = {"alpha": 4.5, "norm": "centered", "site": "o_proj_output", "gate": "truthprobe", "seed": 0,
            "apply": "hook", "dtype": "auto", "device": "auto", "max_new_tokens": 512}
APPLY = ("hook", "bake")


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


@dataclass(frozen=True)
class GateSettings:
    scores: str | None
    alpha: float
    norm: str
    site: str
    gate: str
    seed: int
    apply: str

    @classmethod
    def resolve(cls, **given: Any) -> "GateSettings":
        """Constructor values, else environment variables, else defaults; validated (no model needed)."""
        v = {k: _from_env(k, given.get(k)) for k in ("scores", "alpha", "norm", "site", "gate", "seed", "apply")}
        if v["gate"] not in KINDS:
            raise GateConfigError(f"gate ({ENV['gate']}): expected one of {', '.join(KINDS)}, found {v['gate']!r}")
        if v["norm"] not in NORMS:
            raise GateConfigError(f"norm ({ENV['norm']}): expected one of {', '.join(NORMS)}, found {v['norm']!r}")
        if v["site"] not in SITES:
            raise GateConfigError(f"site ({ENV['site']}): expected one of {', '.join(SITES)}, found {v['site']!r}")
        if v["apply"] not in APPLY:
            raise GateConfigError(f"apply ({ENV['apply']}): expected one of {', '.join(APPLY)}, found {v['apply']!r}")
        alpha = check_gate_settings(v["alpha"], v["norm"], v["site"], v["gate"])
        try:
            seed = int(v["seed"])
        except (TypeError, ValueError):
            raise GateConfigError(f"seed ({ENV['seed']}): expected an integer, found {v['seed']!r}") from None
        if v["gate"] != "none" and not v["scores"]:
            raise GateConfigError(
                f"scores: expected a score file (config key 'scores' or {ENV['scores']}) for gate {v['gate']!r}, "
                "found none; use gate 'none' for the ungated baseline"
            )
        return cls(str(v["scores"]) if v["scores"] else None, alpha, v["norm"], v["site"], v["gate"], seed, v["apply"])

    @property
    def active(self) -> bool:
        return self.gate != "none"

    def describe(self) -> dict:
        return {"scores": self.scores, "alpha": self.alpha, "norm": self.norm, "site": self.site,
                "gate": self.gate, "seed": self.seed, "apply": self.apply}


def check_scores_fit(model_path: str, settings: GateSettings) -> None:
    """Load the score file and compare its shape with the model's language model config (no weights).

    Raises ``ShapeMismatchError`` naming the scores' model and this model.
    """
    if not settings.active:
        return
    from transformers import AutoConfig

    from truthprobe_eval.architectures import text_config
    from truthprobe_eval.models import resolve_model_path
    from truthprobe_eval.scores import TruthScores

    scores = TruthScores.load(settings.scores)
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_path))
    except OSError as exc:
        raise TruthProbeError(f"could not load a model config from {model_path!r}: {exc}") from None
    tcfg = text_config(config)
    scores.check_fits(int(tcfg.num_hidden_layers), int(tcfg.num_attention_heads), f"the language model of {model_path}")


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
    ``scores`` (score file: ours, published ``.npy`` or ``cv5_head_metrics.csv``), ``alpha``, ``norm``,
    ``site``, ``gate`` (truthprobe, random, inverse, none), ``seed``, ``apply`` (hook or bake, same numbers);
    ``dtype``, ``device`` (auto: CUDA + bfloat16 where available, else CPU + float32); ``max_new_tokens``;
    ``min_pixels`` / ``max_pixels`` (Qwen2-VL family); any other keyword goes to ``generate``.
    """

    INSTALL_REQ = False
    INTERLEAVE = True
    allowed_types = ["text", "image"]

    def __init__(
        self,
        model_path: str | None = None,
        scores: str | None = None,
        alpha: float | str | None = None,
        norm: str | None = None,
        site: str | None = None,
        gate: str | None = None,
        seed: int | str | None = None,
        apply: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        max_new_tokens: int | str | None = None,
        default_model_path: str | None = None,
        system_prompt: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        use_vllm: bool = False,
        **generate_kwargs: Any,
    ):
        super().__init__()
        if use_vllm:
            raise TruthProbeError("TruthGatedVLM: vLLM inference is not supported (the gate hooks run in transformers); drop --use-vllm")
        path = _from_env("model_path", model_path) or default_model_path
        if not path:
            raise TruthProbeError(f"TruthGatedVLM: expected a model (config key 'model_path' or {ENV['model_path']}), found none")
        self.model_path = str(path)
        self.settings = GateSettings.resolve(scores=scores, alpha=alpha, norm=norm, site=site, gate=gate, seed=seed, apply=apply)
        check_scores_fit(self.model_path, self.settings)  # before the weights load

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

    # ---- gating -------------------------------------------------------------------------------------
    def _apply_gate(self) -> None:
        from truthprobe_eval.gating import bake, gate

        s = self.settings
        if not s.active:
            return
        kwargs = dict(alpha=s.alpha, norm=s.norm, site=s.site, kind=s.gate, seed=s.seed)
        if s.apply == "bake":
            bake(self.model, s.scores, **kwargs)
            from truthprobe_eval.gating import gate_values

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.gates = gate_values(s.scores, s.alpha, s.norm, s.gate, s.seed)
        else:
            self.gates = self._gate_stack.enter_context(gate(self.model, s.scores, **kwargs))

    def close(self) -> None:
        """Remove the gate hooks (a baked model stays gated)."""
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
    @torch.inference_mode()
    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        from PIL import Image
        from truthprobe_eval.tasks.vlmeval_common import generation_overrides

        text, paths = self.prompt_text(message)
        images = [Image.open(p).convert("RGB") for p in paths]
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt", **self.processor_kwargs)
        inputs = inputs.to(self.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.model.dtype)
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
                "max_new_tokens": self.max_new_tokens, **self.settings.describe()}


__all__ = ["TruthGatedVLM", "GateSettings", "Family", "FAMILIES", "ENV", "check_scores_fit", "family_of"]
