"""Tiny random-initialized models for the tests (no real weights exist offline for most architectures).

Two builders, one CLIP config:
- ``tiny_model(arch)`` / ``save_tiny(arch, folder)``: a random model of every architecture in the table
  (``TINY_CONFIGS``), for hooks, bake and drift tests;
- ``save_tiny_mllm(family, folder)``: MLLM checkpoints with working processors, described below.

No real weights exist offline for LLaVA, Qwen2-VL or Idefics3, so tests build them from transformers configs:
a word-level tokenizer (a few hundred words: yes/no, the COCO object words, function words, each family's
special tokens) keeps the vocabulary tiny, and each processor carries a chat template in its family's
format, so the checkpoint loads through ``truthprobe_eval.load_model`` and runs through the same
chat-template path as a real ``llava-hf`` / ``Qwen/Qwen2-VL`` / ``HuggingFaceTB/SmolVLM`` checkpoint.

``save_tiny_mllm("llava", folder, layers=30, heads=9, kv_heads=3, hidden=576, head_dim=64)`` gives a LLaVA
whose language model has SmolLM2-135M's attention shape (30 x 9 heads), so SmolLM2's Truth Scores fit it.
Also: ``write_synthetic_coco`` (images plus COCO-format annotations) and ``write_pope_questions``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

TINY_MLLM_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")
INIT_RANGE = 0.2  # larger than the usual 0.02: a random model whose replies vary with the input and the gate

_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>",
            "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
            "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
_WORDS = ("yes no Yes No a an the is are there in on of with and or to this that it its image picture photo "
          "Please please answer describe detail detailed question single word phrase Answer Is Are What "
          "USER ASSISTANT User Assistant user assistant system You helpful A The two three some near next "
          "left right top bottom front behind sitting standing white black red blue green small large big "
          "? . , : ! ' \" - ( ) 0 1 2 3 4 5 6 7 8 9").split()


def _vocabulary() -> list[str]:
    """Special tokens, then plain words, then every word of the CHAIR synonym list (deduplicated, ordered)."""
    from importlib import resources

    words = list(_WORDS)
    text = resources.files("truthprobe_eval").joinpath("data/chair_synonyms.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        for word in re.findall(r"[A-Za-z]+", line):
            words.extend([word, word + "s"])
    seen: dict[str, None] = {}
    for token in _SPECIAL + words:
        seen.setdefault(token, None)
    return list(seen)


def tiny_tokenizer(chat_template: str | None = None):
    """A word-level fast tokenizer over ``_vocabulary()``; special tokens match whole, words split on spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=_SPECIAL[4:],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# Chat templates in each family's format (the shapes the real checkpoints' templates produce).
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _text_config(tok, layers: int, heads: int, kv_heads: int, hidden: int, head_dim: int, **extra):
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=max(16, hidden // 4), num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=512,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False,
                initializer_range=INIT_RANGE,
                **extra)


def _clip(image_size: int = 32, patch: int = 8) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=patch)


def _llava_tokenizer(tokenizer, chat_template: str | None):
    """The tiny word-level tokenizer, or a copy of a real one (e.g. SmolLM2's) with an ``<image>`` token added."""
    if tokenizer is None:
        return tiny_tokenizer(chat_template or LLAVA_TEMPLATE)
    import copy

    tok = copy.deepcopy(tokenizer)  # the caller's tokenizer stays as it is
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.chat_template = chat_template or LLAVA_TEMPLATE
    return tok


def _build(family: str, layers: int, heads: int, kv_heads: int, hidden: int, head_dim: int, tokenizer=None,
           chat_template: str | None = None):
    """(config, processor) of a tiny ``family`` model."""
    from transformers import AutoConfig

    if tokenizer is not None and family != "llava":
        raise ValueError(f"tokenizer: only the llava family takes a real tokenizer, found family {family!r}")
    if family in ("llava", "llava_next"):
        from transformers import CLIPVisionConfig, LlamaConfig

        tok = _llava_tokenizer(tokenizer, chat_template)
        ids = tok.get_vocab()
        text = LlamaConfig(**_text_config(tok, layers, heads, kv_heads, hidden, head_dim))
        extra = {"image_grid_pinpoints": [[32, 32]]} if family == "llava_next" else {}
        config = AutoConfig.for_model(family, vision_config=CLIPVisionConfig(**_clip()).to_dict(),
                                      text_config=text.to_dict(), image_token_id=ids["<image>"],
                                      image_token_index=ids["<image>"], vision_feature_layer=-1, **extra)
        if family == "llava":
            from transformers import CLIPImageProcessor, LlavaProcessor

            image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
            processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=tok.chat_template)
        else:
            from transformers import LlavaNextImageProcessor, LlavaNextProcessor

            image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                      image_grid_pinpoints=[[32, 32]])
            processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=LLAVA_TEMPLATE)
        return config, processor
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor

        tok = tiny_tokenizer(QWEN_TEMPLATE)
        ids = tok.get_vocab()
        half = head_dim // 2
        section = [half - 2 * (half // 4), half // 4, half // 4]
        text = _text_config(tok, layers, heads, kv_heads, hidden, head_dim,
                            rope_scaling={"rope_type": "default", "mrope_section": section})
        vision = dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, in_chans=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_5_vl":  # windowed attention blocks, a gated MLP, a merger to the text width
            vision = dict(depth=1, hidden_size=32, out_hidden_size=hidden, intermediate_size=64, num_heads=2,
                          in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                          window_size=112, fullatt_block_indexes=[0])
        config = AutoConfig.for_model(family, vision_config=vision, text_config=text,
                                      image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                      vision_start_token_id=ids["<|vision_start|>"],
                                      vision_end_token_id=ids["<|vision_end|>"])
        image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
        from transformers import Qwen2VLVideoProcessor

        processor_class = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
        processor = processor_class(image_processor=image_processor, tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE)
        return config, processor
    if family == "idefics3":
        from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

        tok = tiny_tokenizer(IDEFICS3_TEMPLATE)
        ids = tok.get_vocab()
        text = _text_config(tok, layers, heads, kv_heads, hidden, head_dim, model_type="llama")
        config = Idefics3Config(vision_config=_clip(32, 8), text_config=text, image_token_id=ids["<image>"],
                                scale_factor=2)
        image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                                 max_image_size={"longest_edge": 32})
        # (32 / 8)^2 = 16 patches, pixel-shuffled by scale_factor 2 -> 4 image tokens
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                      chat_template=IDEFICS3_TEMPLATE)
        return config, processor
    raise ValueError(f"family: expected one of {', '.join(TINY_MLLM_FAMILIES)}, found {family!r}")


def save_tiny_mllm(
    family: str,
    folder: str | os.PathLike,
    *,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    hidden: int = 32,
    head_dim: int = 8,
    seed: int = 0,
    yes_no_boost: float = 4.0,
    tokenizer=None,
    chat_template: str | None = None,
) -> str:
    """Write a random-initialized ``family`` checkpoint with its processor to ``folder``; returns the path.

    ``tokenizer``: a real tokenizer to build on instead of the tiny word-level one (llava only; e.g. SmolLM2's, so
    that prompts tokenize as the base LLM's do); ``chat_template``: instead of the family's."""
    import torch
    from transformers import AutoModelForImageTextToText

    config, processor = _build(family, layers, heads, kv_heads, hidden, head_dim, tokenizer, chat_template)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    # random init leaves some vectors at zero/one; perturb them so that outputs depend on every weight
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.02)
    if yes_no_boost != 1.0:
        # scale the output rows of yes/no: their logits swing wider, so that replies often hold a yes or a no
        ids = processor.tokenizer.convert_tokens_to_ids(["yes", "no", "Yes", "No"])
        with torch.no_grad():
            model.get_output_embeddings().weight[ids] *= yes_no_boost
    model.generation_config.pad_token_id = config.get_text_config().pad_token_id
    model.generation_config.eos_token_id = config.get_text_config().eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


# ---- synthetic COCO -------------------------------------------------------------------------------------
# Real COCO category ids for the classes the synthetic images use.
COCO_CATEGORIES = {"person": 1, "bicycle": 2, "car": 3, "dog": 18, "cat": 17, "chair": 62, "cup": 47,
                   "bottle": 44, "dining table": 67, "couch": 63}


def coco_file_name(image_id: int, split: str = "val2014") -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def write_synthetic_coco(
    root: str | os.PathLike,
    objects: dict[int, Iterable[str]],
    captions: dict[int, Iterable[str]] | None = None,
    split: str = "val2014",
    size: int = 48,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write random images ``root/<split>/COCO_<split>_<id>.jpg`` and COCO-format annotation files.

    ``objects`` maps image id -> class names (instances); ``captions`` image id -> reference captions.
    Returns ``(image_dir, annotations_dir)``.
    """
    from PIL import Image

    root = Path(root)
    image_dir, ann_dir = root / split, root / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, instances, caption_anns = [], [], []
    for image_id in sorted(objects):
        name = coco_file_name(image_id, split)
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for cls in objects[image_id]:
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": COCO_CATEGORIES[cls],
                              "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 0, "segmentation": [[0, 0, 8, 0, 8, 8]]})
        for text in (captions or {}).get(image_id, []):
            caption_anns.append({"id": len(caption_anns) + 1, "image_id": image_id, "caption": text})
    categories = [{"id": cid, "name": name, "supercategory": "thing"} for name, cid in COCO_CATEGORIES.items()]
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": instances, "categories": categories}))
    (ann_dir / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": caption_anns}))
    return image_dir, ann_dir


def shared_pope_rows(shared_dir: "str | os.PathLike", images: Iterable[str]) -> dict[str, list[dict]]:
    """The published COCO POPE questions about ``images`` (file names), per split, from the shared data folder."""
    rows = {}
    for split in ("random", "popular", "adversarial"):
        with open(Path(shared_dir) / "data/pope/coco" / f"coco_pope_{split}.json", encoding="utf-8") as fh:
            rows[split] = [json.loads(line) for line in fh if any(img in line for img in images)]
    return rows


def write_pope_questions(folder: str | os.PathLike, rows: dict[str, list[dict]], prefix: str = "coco") -> Path:
    """Write POPE question files ``<prefix>_pope_<split>.json`` (one JSON object a line), as published."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in rows.items():
        with open(folder / f"{prefix}_pope_{split}.json", "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
    return folder


# ---- tiny models of every architecture in the table --------------------------------------------------
_TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _text(model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **_TEXT)


def _gpt2():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, bos_token_id=1, eos_token_id=2)


def _llava(model_type: str):
    from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig

    return AutoConfig.for_model(model_type, vision_config=CLIPVisionConfig(**_clip()).to_dict(),
                                text_config=LlamaConfig(**_TEXT).to_dict(), image_token_index=100)


def _qwen_vl(model_type: str):
    from transformers import AutoConfig

    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=32)
    text = dict(_TEXT, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]})
    return AutoConfig.for_model(model_type, vision_config=vision, text_config=text)


def _idefics3():
    from transformers import Idefics3Config

    return Idefics3Config(vision_config=_clip(), text_config=dict(_TEXT, model_type="llama"))


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
    """Save a tiny text model's checkpoint, with the tiny tokenizer, to ``folder`` and return the path."""
    tiny_model(arch, seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)
