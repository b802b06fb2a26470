"""POPE for lmms-eval from local files: ``pope_local`` (the group) and ``pope_local_{random,popular,adversarial}``.

lmms-eval's own ``pope`` tasks read the hub (``lmms-lab-encoder/POPE``); these read the published question files
and the COCO val2014 images from two folders that lmms-eval's CLI cannot pass (it has no ``--metadata``), so they
come from the environment:

- ``TRUTHPROBE_POPE_DIR``: the folder of ``coco_pope_{random,popular,adversarial}.json`` (default: the shared data
  beside a checkout, ``../shared/data/pope/coco``);
- ``TRUTHPROBE_COCO_IMAGES``: the folder of the ``COCO_val2014_*.jpg`` files the questions name.

A missing folder, file or image fails when the task is built, before any model call, naming the variable.

Prompt and scoring are lmms-eval's own POPE functions, imported from ``lmms_eval.tasks.pope.utils`` and not
rewritten: the question plus "\\nAnswer the question using a single word or phrase.", and ``pope_accuracy``,
``pope_precision``, ``pope_recall``, ``pope_f1_score``, ``pope_yes_ratio`` on the exact, lower-cased reply (so
"Yes." counts as neither yes nor no there; and lmms-eval's ``pope_yes_ratio`` is the share of *questions whose
answer is yes*, not of yes replies). Beside them, named for what they are, ours: ``pope_parsed_accuracy`` and
``pope_parsed_f1`` read the reply's yes/no as VLMEvalKit does (``truthprobe_eval.tasks.pope.extract_answers``;
an unparseable reply is wrong, as in VLMEvalKit), and ``pope_reply_yes_ratio`` is the share of yes replies.
"""
from __future__ import annotations

import os
from pathlib import Path

from lmms_eval.api.task import ConfigurableTask
from lmms_eval.tasks.pope import utils as lmms_pope

from ..vlmeval_local import LocalDatasetError, check_images
from .metrics import YES, binary_metrics, extract_answers
from .questions import find_question_file, read_question_file

POPE_DIR_ENV = "TRUTHPROBE_POPE_DIR"
COCO_IMAGES_ENV = "TRUTHPROBE_COCO_IMAGES"


def _default_pope_dir() -> Path | None:
    """``../shared/data/pope/coco`` beside the checkout this package runs from, when it is there."""
    here = Path(__file__).resolve()
    for root in here.parents[2:4]:
        candidate = root.parent / "shared" / "data" / "pope" / "coco"
        if candidate.is_dir():
            return candidate
    return None


def env_folder(name: str, default: Path | None, what: str) -> Path:
    """The folder an environment variable names (else ``default``); a clear error when it is not there."""
    raw = os.environ.get(name, "").strip()
    folder = Path(raw).expanduser() if raw else default
    if folder is None:
        raise LocalDatasetError(f"{what}: expected a folder in the environment variable {name}, found it unset")
    if not folder.is_dir():
        raise LocalDatasetError(f"{what}: expected an existing folder at {folder} ({name}), found none")
    return folder.resolve()


def pope_rows(split: str) -> list[dict]:
    """The questions of one split with the full path of each image, checked before evaluation."""
    questions = env_folder(POPE_DIR_ENV, _default_pope_dir(), "POPE question files")
    images = env_folder(COCO_IMAGES_ENV, None, "COCO val2014 images for POPE")
    rows = []
    for i, rec in enumerate(read_question_file(find_question_file(questions, "coco", split))):
        rows.append({"question_id": int(rec.get("question_id", i + 1)), "question": str(rec["text"]),
                     "answer": str(rec["label"]).strip().lower(), "image": str(rec["image"]),
                     "image_path": str(images / rec["image"]), "category": split})
    check_images([r["image_path"] for r in rows], f"POPE {split} images in {images} ({COCO_IMAGES_ENV})")
    return rows


class POPELocalTask(ConfigurableTask):
    """A POPE split (``dataset_name``) from local files; everything else is the YAML's (lmms-eval's POPE)."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}  # ``class`` is not a TaskConfig field
        super().__init__(config=config, **kwargs)

    def download(self, dataset_kwargs=None) -> None:
        import datasets

        rows = pope_rows(self.config.dataset_name)
        self.dataset = datasets.DatasetDict({self.config.test_split: datasets.Dataset.from_list(rows)})
        self.dataset_no_image = self.dataset  # image paths, not pixels: nothing to strip before logging


def doc_to_visual(doc: dict) -> list:
    from PIL import Image

    with Image.open(doc["image_path"]) as image:
        return [image.convert("RGB")]


doc_to_text = lmms_pope.pope_doc_to_text


def process_results(doc: dict, results: list) -> dict:
    """lmms-eval's per-question record for its five metrics, and ours (the parsed reply) beside it."""
    out = lmms_pope.pope_process_results(doc, results)
    answer = str(extract_answers([results[0]])[0])
    parsed = {"question_id": doc["question_id"], "reply": str(results[0]), "parsed": answer, "ground_truth": doc["answer"],
              "score": float(answer.lower() == doc["answer"])}  # the per-question value paired tests read
    out.update({name: parsed for name in ("pope_parsed_accuracy", "pope_parsed_f1", "pope_reply_yes_ratio")})
    return out


def _parsed(results: list[dict]) -> dict:
    return binary_metrics([r["ground_truth"] for r in results], [r["parsed"] for r in results])


def aggregate_parsed_accuracy(results: list[dict]) -> float:
    return _parsed(results)["accuracy"]


def aggregate_parsed_f1(results: list[dict]) -> float:
    return _parsed(results)["f1"]


def aggregate_reply_yes_ratio(results: list[dict]) -> float:
    return sum(r["parsed"] == YES for r in results) / len(results)


__all__ = ["COCO_IMAGES_ENV", "POPELocalTask", "POPE_DIR_ENV", "aggregate_parsed_accuracy", "aggregate_parsed_f1",
           "aggregate_reply_yes_ratio", "doc_to_text", "doc_to_visual", "env_folder", "pope_rows", "process_results"]
