"""Prompts: probing examples -> padded model inputs whose last non-padding token is the answer's last token.

LLMs (a tokenizer):
- ``text``, the published format: ``Context:\\n{context}\\n\\nQuestion: {question}\\nAnswer: {answer}``.
- ``chat``: the tokenizer's chat template, a user turn with context and question and an assistant turn
  with the answer, rendered with ``continue_final_message`` so nothing follows the answer.
- ``qa``, ITI's probing format: ``Q: {question} A: {answer}`` (no context).

MLLMs (a processor): the image takes the place of (or joins) the context, under one of three conditions,
``image`` (the row's image, from the image folder), ``black`` (a black image of the same size) and ``text``
(no image at all). ``chat`` renders the processor's own chat template with an image content item;
``text`` writes LLaVA-1.5's plain ``USER: <image>\\n{question} ASSISTANT: {answer}``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import ProbeDataError, ProbeExample

PROMPT_FORMATS = ("text", "chat", "qa")
CONDITIONS = ("image", "black", "text")
PADDING_SIDES = ("right", "left")
DEFAULT_BLACK_SIZE = (336, 336)  # only for rows without an image under condition "black"


def is_multimodal(helper: Any) -> bool:
    """A processor with an image processor (an MLLM) rather than a plain tokenizer."""
    return getattr(helper, "image_processor", None) is not None


def tokenizer_of(helper: Any):
    return getattr(helper, "tokenizer", None) or helper


def published_prompt(example: ProbeExample) -> str:
    return f"Context:\n{example.context}\n\nQuestion: {example.question}\nAnswer: {example.answer}"


def qa_prompt(example: ProbeExample) -> str:
    return f"Q: {example.question} A: {example.answer}"


def user_text(example: ProbeExample) -> str:
    """The user turn's text: context and question, or the question alone when the context is empty."""
    if example.context.strip():
        return f"Context:\n{example.context}\n\nQuestion: {example.question}"
    return example.question


def _render_chat(helper: Any, messages: list[dict]) -> str:
    template_error = None
    try:
        return helper.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    except (ValueError, TypeError) as exc:  # no template, or a template that cannot continue a message
        template_error = exc
    raise ProbeDataError(
        f"prompt format 'chat': expected {type(helper).__name__} to have a chat template that renders a user turn "
        f"and an open assistant turn, found: {template_error}. Use --prompt-format text instead"
    )


def chat_prompt(tokenizer: Any, example: ProbeExample) -> str:
    messages = [{"role": "user", "content": user_text(example)}, {"role": "assistant", "content": example.answer}]
    return _render_chat(tokenizer, messages)


def mllm_prompt(processor: Any, example: ProbeExample, with_image: bool, prompt_format: str = "chat") -> str:
    if prompt_format == "text":
        image = f"{processor.image_token}\n" if with_image else ""
        return f"USER: {image}{user_text(example)} ASSISTANT: {example.answer}"
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": user_text(example)})
    messages = [{"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": example.answer}]}]
    return _render_chat(processor, messages)


def image_path(example: ProbeExample, images_dir: "str | os.PathLike | None") -> Path:
    path = Path(example.image or "")
    return path if path.is_absolute() or images_dir is None else Path(images_dir) / path


def open_image(path: Path):
    """An RGB PIL image; a file that does not open raises ``ProbeDataError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ProbeDataError(f"image {path}: expected a readable image file, found: {exc}") from None


def check_images(examples: Sequence[ProbeExample], condition: str, images_dir: "str | os.PathLike | None") -> None:
    """Before any model work: every image the condition needs exists and opens."""
    if condition == "text":
        return
    for i, example in enumerate(examples):
        if example.image is None:
            if condition == "image":
                raise ProbeDataError(f"condition 'image': expected every row to have an 'image', example {i} "
                                     f"(group {example.group}) has none")
            continue
        path = image_path(example, images_dir)
        if not path.is_file():
            raise ProbeDataError(f"example {i} (group {example.group}): image not found at {path}"
                                 + ("" if images_dir else " (pass the image folder with --images DIR)"))
        open_image(path)


class PromptEncoder:
    """Turns a batch of examples into padded model inputs (a dict of tensors)."""

    def __init__(self, helper: Any, prompt_format: str = "text", condition: str | None = None,
                 images_dir: "str | os.PathLike | None" = None, padding_side: str = "right") -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ProbeDataError(f"prompt format: expected one of {', '.join(PROMPT_FORMATS)}, found {prompt_format!r}")
        if padding_side not in PADDING_SIDES:
            raise ProbeDataError(f"padding side: expected one of {', '.join(PADDING_SIDES)}, found {padding_side!r}")
        self.helper = helper
        self.multimodal = is_multimodal(helper)
        if self.multimodal:
            condition = condition or "image"
            if condition not in CONDITIONS:
                raise ProbeDataError(f"condition: expected one of {', '.join(CONDITIONS)}, found {condition!r}")
        elif condition not in (None, "text"):
            raise ProbeDataError(f"condition {condition!r} needs a multimodal model (a processor with images); "
                                 f"{type(helper).__name__} is a text tokenizer: leave --condition out")
        self.prompt_format = prompt_format
        self.condition = condition
        self.images_dir = images_dir
        self.padding_side = padding_side
        self.tokenizer = tokenizer_of(helper)

    def settings(self) -> dict:
        return {"prompt_format": self.prompt_format, "condition": self.condition, "padding_side": self.padding_side,
                "images_dir": None if self.images_dir is None else str(Path(self.images_dir).resolve())}

    def prompt(self, example: ProbeExample) -> str:
        if self.multimodal:
            return mllm_prompt(self.helper, example, self.condition != "text", self.prompt_format)
        if self.prompt_format == "qa":
            return qa_prompt(example)
        return published_prompt(example) if self.prompt_format == "text" else chat_prompt(self.helper, example)

    def token_ids(self, example: ProbeExample) -> list[int]:
        """Text token ids of one prompt (for LLMs, exactly what the model sees; for MLLMs, before image expansion)."""
        add_special = self.prompt_format in ("text", "qa") and not self.multimodal
        return list(self.tokenizer(self.prompt(example), add_special_tokens=add_special)["input_ids"])

    def image(self, example: ProbeExample):
        if self.condition == "text":
            return None
        if example.image is None:  # condition "black" without an image to take the size from
            from PIL import Image

            return Image.new("RGB", DEFAULT_BLACK_SIZE)
        img = open_image(image_path(example, self.images_dir))
        if self.condition == "black":
            from PIL import Image

            return Image.new("RGB", img.size)
        return img

    def encode(self, examples: Sequence[ProbeExample]) -> dict[str, torch.Tensor]:
        if self.multimodal:
            texts = [self.prompt(e) for e in examples]
            images = [self.image(e) for e in examples] if self.condition != "text" else None
            batch = self.helper(text=texts, images=images, return_tensors="pt", padding=True,
                                padding_side=self.padding_side, add_special_tokens=self.prompt_format == "text")
            return dict(batch)
        return pad_token_ids([self.token_ids(e) for e in examples], self.padding_side, self._pad_id())

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0


def pad_token_ids(ids: Sequence[Sequence[int]], padding_side: str = "right", pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad token-id lists into ``input_ids``, ``attention_mask`` and ``position_ids`` (counting real tokens only,
    so that left padding leaves absolute positions as in an unpadded pass)."""
    if any(len(x) == 0 for x in ids):
        raise ProbeDataError("expected every prompt to have at least one token, found an empty one")
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        cols = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        input_ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}


__all__ = ["CONDITIONS", "PADDING_SIDES", "PROMPT_FORMATS", "PromptEncoder", "chat_prompt", "check_images",
           "is_multimodal", "mllm_prompt", "open_image", "pad_token_ids", "published_prompt", "user_text"]
