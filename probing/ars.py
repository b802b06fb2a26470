"""ARS (action-relation sensitivity) of every attention head, for RVE.

Input pairs share the evidence (an image, or a context paragraph) and differ in one phrase of the text: the verb
("a man holding a surfboard" / "a man riding a surfboard"), or for text the answer under test. For each head, A
is the last token's post-softmax attention over the span (the image tokens, the context tokens) for one text
and A' for the other; ``ARS = ||A - A'|| / (0.5 * (||A|| + ||A'||))``, averaged over the pairs (the RVE paper
does not say how pairs are combined; the mean is our choice and is recorded in the file's meta).

Pair files (JSONL, one object per line)::

    {"image": "images/0001.jpg", "text": "A man holding a surfboard.", "text_swapped": "A man riding a surfboard.",
     "group": "hold/ride"}

``image`` is resolved against the file's folder; omit it for text pairs (the span is then the marked context).
The scores go to the TruthScores format with ``meta.kind = "ars"``, so heatmaps and the analyses read them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._io import read_jsonl
from ..architectures import describe, locate_heads
from ..attention_edit import edit_attention
from ..errors import TruthProbeError

AVERAGING = "mean over pairs of ||A - A'|| / (0.5 (||A|| + ||A'||)), A = last token's attention over the span"


class PairFileError(TruthProbeError, ValueError):
    """A pair file line that cannot be used."""


@dataclass(frozen=True)
class ARSPair:
    text: str
    text_swapped: str
    image: str | None = None
    group: str | None = None


def read_pairs(path: "str | os.PathLike") -> list[ARSPair]:
    """The pairs of a JSONL file; each error names the line."""
    path = Path(path)
    if not path.is_file():
        raise PairFileError(f"pairs: expected a JSONL file at {path}, found none")
    pairs = []
    for number, row in read_jsonl(path, PairFileError):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k] for k in ("text", "text_swapped")):
            raise PairFileError(f"{path}, line {number}: expected non-empty 'text' and 'text_swapped', found {row!r}")
        image = row.get("image")
        if image is not None:
            image = str((path.parent / image).resolve()) if not os.path.isabs(image) else image
            if not Path(image).is_file():
                raise PairFileError(f"{path}, line {number}: expected an image file at {image}, found none")
        pairs.append(ARSPair(row["text"], row["text_swapped"], image, row.get("group")))
    if not pairs:
        raise PairFileError(f"{path}: expected at least one pair, found none")
    return pairs


def halueval_pairs(rows: Sequence[dict]) -> list[ARSPair]:
    """Text pairs from HaluEval QA rows: the TruthProbe prompt with the right and with the hallucinated answer
    (the knowledge paragraph, the span, is the same in both)."""
    from ..tasks.halueval.truthprobe_protocol import prompt

    return [ARSPair(prompt(r["question"], r["right_answer"], r["knowledge"]),
                    prompt(r["question"], r["hallucinated_answer"], r["knowledge"]), None, "halueval") for r in rows]


def span_attention(model: nn.Module, inputs: dict[str, Any], find: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """(L, H, N) post-softmax attention of the last position over the span's N positions (batch of one)."""
    ids = inputs["input_ids"]
    span = find(ids)[0]
    if not span.any():
        raise PairFileError("span: expected span tokens in the input, found none (no image tokens / markers)")
    idx = span.nonzero().squeeze(-1)
    sites = locate_heads(model)
    seen: dict[int, torch.Tensor] = {}

    class Record:  # reads the last query row only (on sdpa models only that row is computed eagerly)
        def __init__(self, layer: int) -> None:
            self.layer = layer

        def rows(self, q_len: int, k_len: int) -> range:
            return range(q_len - 1, q_len)

        def __call__(self, scores: torch.Tensor, _module: nn.Module) -> torch.Tensor:
            probs = torch.softmax(scores[0, :, -1].float(), dim=-1)
            seen[self.layer] = probs[:, idx.to(probs.device)].double().cpu()
            return scores

    with torch.no_grad(), edit_attention(model, {layer: Record(layer) for layer in range(sites.num_layers)}):
        model(**inputs)
    return torch.stack([seen[layer] for layer in range(sites.num_layers)]).numpy()


def ars_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(L, H) ARS of two (L, H, N) attention maps."""
    if a.shape != b.shape:
        raise PairFileError(f"span: expected the same span length in both texts, found {a.shape[-1]} and {b.shape[-1]}")
    num = np.linalg.norm(a - b, axis=-1)
    den = 0.5 * (np.linalg.norm(a, axis=-1) + np.linalg.norm(b, axis=-1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def ars_scores(model: nn.Module, encode: Callable[[ARSPair, str], dict[str, Any]], pairs: Sequence[ARSPair],
               find: Callable[[torch.Tensor], torch.Tensor], *, progress: bool = True, meta: dict | None = None):
    """The (L, H) ARS map as ``TruthScores`` with ``meta.kind = "ars"``; ``encode(pair, text)`` gives the model
    inputs (ids and pixels) of one text of a pair."""
    from tqdm.auto import tqdm

    from ..scores import TruthScores

    per_pair = []
    for pair in tqdm(pairs, desc="ARS pairs", disable=not progress):
        a = span_attention(model, encode(pair, pair.text), find)
        b = span_attention(model, encode(pair, pair.text_swapped), find)
        per_pair.append(ars_of(a, b))
    values = np.mean(per_pair, axis=0)
    return TruthScores(values, meta={**describe(model), "kind": "ars", "metric": "ars", "averaging": AVERAGING,
                                     "n_pairs": len(per_pair), "ars_std": float(np.std(per_pair)), **(meta or {})})


__all__ = ["ARSPair", "AVERAGING", "PairFileError", "ars_of", "ars_scores", "halueval_pairs", "read_pairs",
           "span_attention"]
