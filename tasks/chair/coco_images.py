"""Which COCO images a CHAIR run captions, and how a caption is tidied, for any harness (VLMEvalKit's
``CHAIR_local``, lmms-eval's ``chair_local``): a listed set of image ids or a seeded sample of annotated images
that have a file in the image folder; the detailed-caption prompt; a trailing sentence that generation cut off.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..vlmeval_local import LocalDatasetError, check_images

PROMPT = "Please describe this image in detail."
_ID_IN_NAME = re.compile(r"(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def drop_unfinished_sentence(caption: str) -> str:
    """Cut a trailing sentence that has no end mark, when an earlier sentence ended (``"A. B"`` -> ``"A."``)."""
    text = caption.strip()
    if not text or _SENTENCE_END.search(text):
        return text
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s)", text)]
    return text[: ends[-1]].strip() if ends else text


def image_id_of(entry: str) -> int:
    """A COCO image id from ``"42"`` or ``"COCO_val2014_000000000042.jpg"``."""
    entry = entry.strip()
    if entry.isdigit():
        return int(entry)
    match = _ID_IN_NAME.search(entry)
    if not match:
        raise LocalDatasetError(f"image list: expected a COCO image id or file name, found {entry!r}")
    return int(match.group(1))


def _annotation_images(annotations_dir: Path, split: str) -> dict[int, str]:
    path = annotations_dir / f"instances_{split}.json"
    if not path.is_file():
        raise LocalDatasetError(f"CHAIR: expected COCO annotations {path.name} in {annotations_dir}, found none")
    with open(path, encoding="utf-8") as fh:
        images = json.load(fh).get("images", [])
    return {int(im["id"]): str(im["file_name"]) for im in images}


def select_images(annotations_dir: Path, image_dir: Path, split: str = "val2014", n_images: int | None = 500,
                  seed: int = 0, image_list: Path | None = None) -> tuple[list[int], list[str]]:
    """(image ids, image paths): the ids ``image_list`` names (one id or file name a line), else a seeded sample of
    ``n_images`` annotated images that have a file in ``image_dir`` (all of them when fewer); checked to exist."""
    names = _annotation_images(annotations_dir, split)
    if image_list is not None:
        lines = [ln for ln in image_list.read_text(encoding="utf-8").splitlines() if ln.strip()]
        ids = [image_id_of(ln) for ln in lines]
        unknown = [i for i in ids if i not in names]
        if unknown:
            raise LocalDatasetError(f"{image_list}: expected image ids from instances_{split}.json, found {len(unknown)} not there (e.g. {unknown[:3]})")
        if len(set(ids)) != len(ids):
            raise LocalDatasetError(f"{image_list}: expected each image once, found duplicates")
    else:
        present = sorted(i for i, name in names.items() if (image_dir / name).is_file())
        if not present:
            raise LocalDatasetError(f"CHAIR: expected images of instances_{split}.json in {image_dir}, found none")
        n = min(n_images or len(present), len(present))
        if n < (n_images or 0):
            print(f"CHAIR: {len(present)} annotated images in {image_dir}, fewer than n_images={n_images}; using all")
        rng = np.random.default_rng(seed)
        ids = sorted(int(i) for i in rng.choice(present, size=n, replace=False))
    paths = [str(image_dir / names[i]) for i in ids]
    check_images(paths, f"CHAIR images in {image_dir}")
    return ids, paths


__all__ = ["PROMPT", "drop_unfinished_sentence", "image_id_of", "select_images"]
