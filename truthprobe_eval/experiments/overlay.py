"""Attention overlays (the paper's Section 5): where do context-truthful heads look in the image?

For one image and one question, the attention of the final query token (the position that produces the first
answer token) to the image tokens, per layer and head of the MLLM's language model, as a share of that head's
attention to the image (so it sums to 1 over the image tokens). The same is computed for a generic query
("Write a general description of the image."), and each head's map is shown relative to it: ``diff`` = query share
minus generic share (default; sums to 0), or ``ratio`` = query share / generic share. The top-k and bottom-k heads
by Truth Score are drawn over the image as a grid of panels.

Image tokens are laid out as the model's patch grid: a square grid (LLaVA-1.5; LLaVA-NeXT's base grid of the
whole image; Idefics3 / SmolVLM's global image) or Qwen2-VL's ``image_grid_thw`` after its spatial merge. The image is shown as the model saw it
(CLIP-style processors crop the centre). Needs eager attention (``attn_implementation="eager"``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import reports
from ..errors import TruthProbeError
from ..scores import TruthScores, load_scores

GENERIC_QUERY = "Write a general description of the image."
MODES = ("diff", "ratio")


class OverlayError(TruthProbeError, ValueError):
    """An overlay that cannot be drawn for this model or input."""


@dataclass
class OverlayResult:
    question: str
    generic: str
    grid: tuple[int, int]  # (rows, cols) of image tokens
    image_mass_query: np.ndarray  # (L, H): share of the final token's attention on image tokens
    image_mass_generic: np.ndarray
    maps_query: np.ndarray  # (L, H, rows, cols): attention share over image tokens
    maps_generic: np.ndarray
    mode: str
    heads: list[tuple[str, int, int, float]]  # (group "top"/"bottom", layer, head, score)
    view: Any = None  # the PIL image region the tokens cover
    notes: list[str] = field(default_factory=list)

    def relative(self, layer: int, head: int) -> np.ndarray:
        q, g = self.maps_query[layer, head], self.maps_generic[layer, head]
        if self.mode == "diff":
            return q - g
        return q / np.maximum(g, 1e-12)


def _prompt(processor: Any, question: str) -> str:
    """The processor's chat template with an image item where it takes one, else LLaVA-1.5's plain prompt."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    try:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if isinstance(text, str) and text.strip():
            return text
    except Exception:  # templates that do not take list content (plain LLM templates) raise various errors
        pass
    image_token = getattr(processor, "image_token", None) or "<image>"
    return f"USER: {image_token}\n{question} ASSISTANT:"


def _image_token_id(model) -> int:
    config = model.config
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise OverlayError(f"{type(model).__name__}: expected config.image_token_id, found none (is this an MLLM?)")


def _grid(inputs: dict, n_tokens: int, processor: Any) -> tuple[int, int]:
    thw = inputs.get("image_grid_thw")
    if thw is not None:
        t, h, w = (int(x) for x in thw[0])
        merge = int(getattr(getattr(processor, "image_processor", None), "merge_size", 2) or 2)
        rows, cols = h // merge, w // merge
        if t * rows * cols == n_tokens:
            return rows, cols
    side = math.isqrt(n_tokens)
    if side * side == n_tokens:
        return side, side
    raise OverlayError(f"{n_tokens} image tokens do not form a square patch grid and no image_grid_thw was given: "
                       "overlays support one-image LLaVA-1.5, Qwen2-VL / Qwen2.5-VL and single-tile Idefics3 layouts")


def _single_grid_positions(model, processor: Any, positions):
    """Image tokens of one patch grid: LLaVA-NeXT puts the base (whole-image) grid first, then high-resolution
    tiles with row-end tokens; Idefics3 / SmolVLM put the global image's ``image_seq_len`` tokens last."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in ("llava_next", "llava_onevision"):
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return positions[: side * side]
    seq_len = getattr(processor, "image_seq_len", None)
    if isinstance(seq_len, int) and 0 < seq_len < positions.numel():
        return positions[-seq_len:]
    return positions


def _view(image, processor: Any):
    """The part of ``image`` the tokens cover: CLIP-style processors resize the short side and crop the centre."""
    ip = getattr(processor, "image_processor", None)
    crop = getattr(ip, "crop_size", None)
    if not (ip is not None and getattr(ip, "do_center_crop", False) and crop):
        return image
    def field_of(obj, key):  # dicts in transformers 4, SizeDict objects in 5
        if isinstance(obj, (int, float)):
            return obj
        value = getattr(obj, key, None)
        if value is None and hasattr(obj, "get"):
            value = obj.get(key)
        return value

    short = field_of(getattr(ip, "size", None), "shortest_edge")
    ch, cw = field_of(crop, "height"), field_of(crop, "width")
    if not short or not ch or not cw:
        return image
    w, h = image.size
    scale = short / min(w, h)
    box_w, box_h = min(w, cw / scale), min(h, ch / scale)
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return image.crop((round(left), round(top), round(left + box_w), round(top + box_h)))


def final_token_attention(model, processor, image, question: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(mass (L, H), maps (L, H, rows, cols)) of the final query token's attention to the image tokens."""
    import torch

    text = _prompt(processor, question)
    inputs = processor(images=image, text=text, return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
    ids = inputs["input_ids"][0]
    image_positions = (ids == _image_token_id(model)).nonzero().ravel()
    if image_positions.numel() == 0:
        raise OverlayError(f"the prompt has no image tokens after processing: {text!r}")
    image_positions = _single_grid_positions(model, processor, image_positions)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, use_cache=False)
    attentions = out.attentions
    if not attentions or attentions[0] is None:
        raise OverlayError("the model returned no attention weights: load it with attn_implementation='eager'")
    rows, cols = _grid(inputs, int(image_positions.numel()), processor)
    last = attentions[0].shape[-2] - 1
    on_image = torch.stack([a[0, :, last, :].float()[:, image_positions] for a in attentions])  # (L, H, n)
    mass = on_image.sum(-1)
    share = on_image / mass.clamp_min(1e-12)[..., None]
    return mass.cpu().numpy(), share.reshape(*share.shape[:2], rows, cols).cpu().numpy(), (rows, cols)


def select_heads(scores: TruthScores, k: int) -> list[tuple[str, int, int, float]]:
    """The k highest- and k lowest-scoring heads: ("top"|"bottom", layer, head, score)."""
    top = [("top", l, h, s) for l, h, s in scores.top_k(k)]
    flat = scores.values.ravel()
    order = np.lexsort((np.arange(flat.size), flat))[:k]
    bottom = [("bottom", int(i // scores.num_heads), int(i % scores.num_heads), float(flat[i])) for i in order]
    return top + bottom


def attention_overlay(model, processor, image, scores: "TruthScores | str | os.PathLike", question: str, k: int = 4,
                      generic: str = GENERIC_QUERY, mode: str = "diff") -> OverlayResult:
    """Everything needed to draw the overlay for one image and question."""
    from ..architectures import locate_heads

    if mode not in MODES:
        raise OverlayError(f"mode: expected one of {', '.join(MODES)}, found {mode!r}")
    scores = load_scores(scores)
    sites = locate_heads(model)
    scores.check_fits(sites.num_layers, sites.num_heads, getattr(model.config, "_name_or_path", "") or "the model")
    if not 1 <= k <= scores.values.size // 2:
        raise OverlayError(f"k: expected 1 <= k <= {scores.values.size // 2} (half the heads), found {k}")
    mass_q, maps_q, grid = final_token_attention(model, processor, image, question)
    mass_g, maps_g, grid_g = final_token_attention(model, processor, image, generic)
    if grid != grid_g:
        raise OverlayError(f"the two prompts produced different image grids {grid} and {grid_g}")
    return OverlayResult(question, generic, grid, mass_q, mass_g, maps_q, maps_g, mode, select_heads(scores, k),
                         _view(image, processor))


def plot_overlay(result: OverlayResult, path: "str | os.PathLike", title: str | None = None) -> Path:
    """A grid of panels: the image, then one row of top-k heads and one of bottom-k heads, maps over the image."""
    plt = reports.pyplot()
    view = np.asarray(result.view.convert("RGB")) if result.view is not None else None
    gray = np.asarray(result.view.convert("L")) if result.view is not None else None  # keeps map colours readable
    top = [x for x in result.heads if x[0] == "top"]
    bottom = [x for x in result.heads if x[0] == "bottom"]
    cols = max(len(top), len(bottom)) + 1
    maps = [result.relative(l, h) for _, l, h, _ in result.heads]
    if result.mode == "diff":
        vmax = max(float(np.abs(m).max()) for m in maps) or 1.0
        norm = dict(vmin=-vmax, vmax=vmax, cmap="bwr")
    else:
        logs = [np.log2(np.maximum(m, 1e-6)) for m in maps]
        vmax = max(float(np.abs(m).max()) for m in logs) or 1.0
        norm = dict(vmin=-vmax, vmax=vmax, cmap="bwr")
    fig, axes = plt.subplots(2, cols, figsize=(2.4 * cols, 5.2), squeeze=False, layout="constrained")
    extent = None
    for r, group in enumerate((top, bottom)):
        ax0 = axes[r, 0]
        if view is not None:
            ax0.imshow(view)
            extent = (-0.5, view.shape[1] - 0.5, view.shape[0] - 0.5, -0.5)
        ax0.set_title("image" if r == 0 else f"relative to:\n{result.generic[:40]}", fontsize=7)
        ax0.axis("off")
        im = None
        for c, (name, layer, head, score) in enumerate(group, start=1):
            ax = axes[r, c]
            rel = result.relative(layer, head)
            shown = rel if result.mode == "diff" else np.log2(np.maximum(rel, 1e-6))
            if gray is not None:
                ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
            im = ax.imshow(shown, alpha=0.65, extent=extent, interpolation="nearest", **norm)
            ax.set_title(f"{name}: L{layer} H{head}\nscore {score:.3f}", fontsize=8)
            ax.axis("off")
        for c in range(len(group) + 1, cols):
            axes[r, c].axis("off")
    label = "query share - generic share" if result.mode == "diff" else "log2(query share / generic share)"
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label=label)
    fig.suptitle(title or f"Final-token attention to image tokens: {result.question[:70]}", fontsize=9)
    return reports.save_figure(fig, path)


HEAD_HEADERS = ["group", "layer", "head", "truth_score", "image_mass_query", "image_mass_generic", "max_relative",
                "min_relative", "peak_row", "peak_col"]


def head_rows(result: OverlayResult) -> list[list]:
    rows = []
    for name, l, h, s in result.heads:
        rel = result.relative(l, h)
        r, c = np.unravel_index(int(np.argmax(rel)), rel.shape)
        rows.append([name, l, h, s, result.image_mass_query[l, h], result.image_mass_generic[l, h], float(rel.max()),
                     float(rel.min()), int(r), int(c)])
    return rows


def write_outputs(result: OverlayResult, out_dir: "str | os.PathLike") -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "plot": plot_overlay(result, out / "overlay.png"),
        "heads": reports.write_csv(out / "overlay_heads.csv", HEAD_HEADERS, head_rows(result)),
        "markdown": reports.write_text(out / "overlay.md", "# Attention overlay\n\n"
                                       f"- question: {result.question}\n- generic query: {result.generic}\n"
                                       f"- image token grid: {result.grid[0]} x {result.grid[1]}; relative = {result.mode}\n\n"
                                       + reports.markdown_table(HEAD_HEADERS, head_rows(result)) + "\n"),
    }
