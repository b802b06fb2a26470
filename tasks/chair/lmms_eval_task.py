"""CHAIR for lmms-eval from local files: ``chair_local``, detailed captions of COCO val2014 images scored by our
CHAIR scorer (``truthprobe_eval.tasks.chair``), the same protocol as VLMEvalKit's ``CHAIR_local``.

lmms-eval's own ``coco_cap_chair`` reads the hub; this one reads folders named in the environment (lmms-eval's CLI
has no ``--metadata``):

- ``TRUTHPROBE_COCO_IMAGES``: the folder of the ``COCO_val2014_*.jpg`` files;
- ``TRUTHPROBE_COCO_ANNOTATIONS``: the folder with ``instances_val2014.json`` and ``captions_val2014.json``
  (default: ``annotations`` beside the image folder, COCO's own layout).

Images: a seeded sample (seed 0) of 500 annotated images that have a file (``--limit`` takes the first of them);
prompt "Please describe this image in detail."; at most 64 new tokens; a trailing sentence that generation cut off
is dropped (unless it is the only one). A missing folder, annotation file or image fails when the task is built.

Metrics (lower CHAIR is better): ``chair_s`` and ``chair_i`` (fractions), ``chair_recall`` and ``chair_len``
(words), all from one scoring of every caption; each sample also records its caption's objects and a per-caption
``score`` (1 when the caption names an object the image does not hold), which paired tests read (an empty
caption scores 0 there and is counted as skipped by the corpus scores).
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

from lmms_eval.api.task import ConfigurableTask

from ..pope.lmms_eval_task import COCO_IMAGES_ENV, env_folder
from .coco_images import PROMPT, drop_unfinished_sentence, select_images

ANNOTATIONS_ENV = "TRUTHPROBE_COCO_ANNOTATIONS"
N_IMAGES, SEED, SPLIT = 500, 0, "val2014"


def annotations_folder() -> Path:
    images = env_folder(COCO_IMAGES_ENV, None, "COCO val2014 images for CHAIR")
    default = images.parent / "annotations"
    return env_folder(ANNOTATIONS_ENV, default if default.is_dir() else None, "COCO annotations for CHAIR")


def chair_rows() -> list[dict]:
    """The images to caption, checked before evaluation."""
    images = env_folder(COCO_IMAGES_ENV, None, "COCO val2014 images for CHAIR")
    ids, paths = select_images(annotations_folder(), images, SPLIT, N_IMAGES, SEED)
    return [{"image_id": i, "image_path": p, "question": PROMPT} for i, p in zip(ids, paths)]


_BUILDING = threading.Lock()  # lmms-eval scores samples in several threads: build the scorer once


@functools.lru_cache(maxsize=4)
def _evaluator_of(annotations: str):
    from .evaluator import CHAIREvaluator

    return CHAIREvaluator.from_coco(annotations, progress=False)


def _evaluator(annotations: str):
    with _BUILDING:
        return _evaluator_of(annotations)


def evaluator():
    """The CHAIR scorer of the annotations in the environment (its ground truth is cached on disk and here)."""
    return _evaluator(str(annotations_folder()))


class CHAIRLocalTask(ConfigurableTask):
    """The captioning images from local files; prompt, generation and metrics are the YAML's."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}  # ``class`` is not a TaskConfig field
        super().__init__(config=config, **kwargs)

    def download(self, dataset_kwargs=None) -> None:
        import datasets

        rows = chair_rows()
        evaluator()  # the scorer now (annotations, NLTK data), so that nothing missing shows only after generation
        self.dataset = datasets.DatasetDict({self.config.test_split: datasets.Dataset.from_list(rows)})
        self.dataset_no_image = self.dataset


def doc_to_visual(doc: dict) -> list:
    from PIL import Image

    with Image.open(doc["image_path"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list) -> dict:
    """The caption (tidied) under every metric, with its own objects and per-caption score beside it."""
    caption = drop_unfinished_sentence(str(results[0]))
    record = {"image_id": int(doc["image_id"]), "caption": caption, "score": 0.0, "skipped": not caption.strip()}
    if caption.strip():
        (scored,) = evaluator().score([{"image_id": record["image_id"], "caption": caption}])["per_caption"]
        record.update(mentioned=scored["mentioned"], hallucinated=scored["hallucinated"],
                      score=float(bool(scored["hallucinated"])))
    return {name: record for name in ("chair_s", "chair_i", "chair_recall", "chair_len")}


def _corpus(records: list[dict]) -> dict:
    captions = [{"image_id": r["image_id"], "caption": r["caption"]} for r in records]
    return evaluator().score(captions)


def aggregate_chair_s(records: list[dict]) -> float:
    return _corpus(records)["CHAIRs"]


def aggregate_chair_i(records: list[dict]) -> float:
    return _corpus(records)["CHAIRi"]


def aggregate_recall(records: list[dict]) -> float:
    return _corpus(records)["recall"]


def aggregate_len(records: list[dict]) -> float:
    return _corpus(records)["len"]


__all__ = ["ANNOTATIONS_ENV", "CHAIRLocalTask", "aggregate_chair_i", "aggregate_chair_s", "aggregate_len",
           "aggregate_recall", "annotations_folder", "chair_rows", "doc_to_text", "doc_to_visual", "evaluator",
           "process_results"]
