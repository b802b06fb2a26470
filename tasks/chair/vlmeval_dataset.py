"""CHAIR on COCO val2014 for VLMEvalKit's runner: ``CHAIR_local`` (no download, no API judge).

Images: ``image_list`` (a text file, one COCO image id or file name a line) or a seeded sample of ``n_images``
(default 500) ids from the annotations that have a file in ``image_dir``. Each image gets the prompt "Please
describe this image in detail."; our gated models stop after ``MAX_NEW_TOKENS`` (64, the class's declaration, which
the model's ``dataset_max_new_tokens`` may override). With
``drop_unfinished`` (default on) a caption's last sentence is dropped when generation cut it off (no final
. ! or ?), unless it is the only one. Captions are scored by ``truthprobe_eval.tasks.chair`` against
``instances_val2014.json`` + ``captions_val2014.json`` in ``annotations_dir``.

Returns CHAIRs, CHAIRi and recall in percent and the mean length in words; the full result (fractions,
per-caption objects) goes to ``*_chair.json`` beside the predictions.
"""
from __future__ import annotations

import json
import os

import pandas as pd
from vlmeval.dataset.image_base import ImageBaseDataset
from vlmeval.smp import get_intermediate_file_path, load

from ..vlmeval_local import as_bool, as_int, local_path, setting
from .coco_images import PROMPT, drop_unfinished_sentence, image_id_of, select_images  # noqa: F401 (importable here)


class CHAIRLocal(ImageBaseDataset):
    """Detailed captions of COCO images scored with CHAIR; see the module docstring."""

    TYPE = "Caption"
    DATASET_URL = {"CHAIR_local": ""}
    force_use_dataset_prompt = True
    MAX_NEW_TOKENS = 64  # the protocol's caption length; TruthGatedVLM reads it for this data set's name

    def __init__(
        self,
        dataset: str = "CHAIR_local",
        image_dir: str | None = None,
        annotations_dir: str | None = None,
        image_list: str | None = None,
        n_images: int | None = None,
        seed: int = 0,
        split: str = "val2014",
        prompt: str | None = None,
        drop_unfinished: bool | str | None = None,
        cache_dir: str | None = None,
    ):
        self.image_dir = local_path(image_dir, "CHAIR images (COCO val2014)", "image_dir", kind="dir")
        self.annotations_dir = local_path(annotations_dir, "CHAIR annotations", "annotations_dir", kind="dir")
        listed = setting(image_list)
        self.image_list = local_path(listed, "CHAIR image list", "image_list", kind="file") if listed else None
        self.n_images = as_int(setting(n_images, 500), "n_images")
        self.seed = int(setting(seed, 0))
        self.split = split
        self.prompt = prompt or PROMPT
        self.drop_unfinished = as_bool(setting(drop_unfinished, True))
        self.cache_dir = setting(cache_dir)  # default: $TRUTHPROBE_CACHE/chair
        super().__init__(dataset=dataset)

    @classmethod
    def supported_datasets(cls) -> list[str]:
        return ["CHAIR_local"]

    def load_data(self, dataset: str) -> pd.DataFrame:
        ids, paths = select_images(self.annotations_dir, self.image_dir, self.split, self.n_images, self.seed,
                                   self.image_list)
        return pd.DataFrame({"index": range(1, len(ids) + 1), "image_id": ids, "question": self.prompt, "image_path": paths})

    def build_prompt(self, line) -> list[dict]:
        if isinstance(line, int):
            line = self.data.iloc[line]
        return [dict(type="image", value=line["image_path"]), dict(type="text", value=str(line["question"]))]

    def evaluate(self, eval_file: str, **judge_kwargs) -> dict:
        from truthprobe_eval._io import atomic_write_text

        from .evaluator import CHAIREvaluator

        data = load(eval_file)
        captions = []
        for image_id, prediction in zip(data["image_id"], data["prediction"]):
            text = "" if pd.isna(prediction) else str(prediction)
            captions.append({"image_id": int(image_id), "caption": drop_unfinished_sentence(text) if self.drop_unfinished else text.strip()})
        evaluator = CHAIREvaluator.from_coco(self.annotations_dir, self.cache_dir)
        result = evaluator.score(captions)
        result.update({"dataset": self.dataset_name, "prompt": self.prompt, "drop_unfinished": self.drop_unfinished, "annotations_dir": str(self.annotations_dir)})
        out = get_intermediate_file_path(eval_file, "_chair", "json")
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
        summary = {"CHAIRs": 100 * result["CHAIRs"], "CHAIRi": 100 * result["CHAIRi"], "recall": 100 * result["recall"],
                   "len": result["len"], "n_captions": result["n_captions"],
                   "skipped": int(sum(result["skipped"].values()))}
        print(f"CHAIR ({self.dataset_name}) on {os.path.basename(eval_file)}: " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()) + f" (details: {out})")
        return summary

    @classmethod
    def report_primary_metric(cls, metrics: dict | None) -> dict:
        if not isinstance(metrics, dict):
            return {}
        return {k: metrics[k] for k in ("CHAIRs", "CHAIRi") if k in metrics}


from truthprobe_eval.model_adapters.startup_hook import module_finished  # noqa: E402

module_finished(__name__)  # a registration the start-up hook deferred while this module imported VLMEvalKit
