"""Tiny random-initialized models built from transformers configs, one per architecture in the table.

For tests and examples where no real weights exist. ``save_tiny(arch, folder)`` writes a checkpoint that
``truthprobe_eval.load_model(folder)`` loads through the same path users run.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

_TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


def _text(model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **_TEXT)


def _gpt2():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, bos_token_id=1, eos_token_id=2)


def _llava(model_type: str):
    from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig

    return AutoConfig.for_model(model_type, vision_config=CLIPVisionConfig(**_CLIP).to_dict(),
                                text_config=LlamaConfig(**_TEXT).to_dict(), image_token_index=100)


def _qwen_vl(model_type: str):
    from transformers import AutoConfig

    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=32)
    text = dict(_TEXT, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]})
    return AutoConfig.for_model(model_type, vision_config=vision, text_config=text)


def _idefics3():
    from transformers import Idefics3Config

    return Idefics3Config(vision_config=_CLIP, text_config=dict(_TEXT, model_type="llama"))


TINY_CONFIGS: dict[str, Callable[[], object]] = {
    "llama": lambda: _text("llama"),
    "mistral": lambda: _text("mistral"),
    "qwen2": lambda: _text("qwen2"),
    "qwen3": lambda: _text("qwen3"),
    "gemma3_text": lambda: _text("gemma3_text"),
    "phi3": lambda: _text("phi3"),
    "gpt2": _gpt2,
    "llava": lambda: _llava("llava"),
    "llava_next": lambda: _llava("llava_next"),
    "qwen2_vl": lambda: _qwen_vl("qwen2_vl"),
    "qwen2_5_vl": lambda: _qwen_vl("qwen2_5_vl"),
    "idefics3": _idefics3,
}
MULTIMODAL = {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3"}


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-initialized model of ``arch`` (a key of ``TINY_CONFIGS``), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = TINY_CONFIGS[arch]()
    auto = AutoModelForImageTextToText if arch in MULTIMODAL else AutoModelForCausalLM
    model = auto.from_config(config, dtype=dtype)
    # random init leaves o_proj biases (where present) at zero; give them values so baking them is exercised
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 and torch.all(p == 0):
                p.normal_(0, 0.02)
    return model.eval()


def save_tiny(arch: str, folder: "str | os.PathLike", seed: int = 0) -> str:
    """Save a tiny model's checkpoint to ``folder`` and return the path."""
    tiny_model(arch, seed).save_pretrained(folder)
    return str(folder)
