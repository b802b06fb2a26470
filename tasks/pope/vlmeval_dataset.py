"""POPE from its published question files and a local image folder, for VLMEvalKit's runner (no download).

Names: ``POPE_local`` (MSCOCO val2014: ``coco_pope_{random,popular,adversarial}.json``), ``POPE_aokvqa_local``
and ``POPE_gqa_local`` (the A-OKVQA and GQA variants, same file format, their own image folders).

A question file holds one JSON object a line: ``question_id``, ``image`` (file name inside the image folder),
``text`` (the question), ``label`` (yes/no). The "yes" questions repeat across the three splits; a repeated
(image, question, label) is asked once and counted in every split it belongs to (greedy decoding makes
that equivalent), the way VLMEvalKit's own POPE table lists them (``category`` "adversarial,popular,random").

Scoring: VLMEvalKit's ``ImageYORNDataset.evaluate`` (its ``YOrN_Extraction`` and ``POPE_rating``), exact
matching by default (no API judge), then ``truthprobe_eval.tasks.pope`` adds per-split accuracy, precision, recall,
F1, yes-ratio and the count of unparseable replies, and the mean over splits.
"""
from __future__ import annotations

import json
import os

import pandas as pd
from vlmeval.dataset.image_yorn import ImageYORNDataset
from vlmeval.smp import dump, get_intermediate_file_path, load

from ..vlmeval_local import (
    LocalDatasetError,
    as_bool,
    as_int,
    check_images,
    judge_kwargs_for,
    local_path,
    sample_frame,
    setting,
)
from .metrics import POPE_SPLITS, format_table, metrics_table, normalize_labels, pope_metrics
from .questions import find_question_file, read_question_file

DEFAULT_SUFFIX = "\nAnswer the question using a single word or phrase."

# dataset name -> question file prefix
VARIANTS = {"POPE_local": "coco", "POPE_aokvqa_local": "aokvqa", "POPE_gqa_local": "gqa"}


class POPELocal(ImageYORNDataset):
    """POPE built from local question files and images; see the module docstring."""

    TYPE = "Y/N"
    DATASET_URL = {name: "" for name in VARIANTS}
    force_use_dataset_prompt = True  # every model gets the same prompt

    def __init__(
        self,
        dataset: str = "POPE_local",
        question_dir: str | None = None,
        image_dir: str | None = None,
        splits: str | list | None = None,
        limit_per_split: int | None = None,
        seed: int = 0,
        prompt_suffix: str | None = None,
        merge_duplicates: bool = True,
        judge: str | None = None,
    ):
        if dataset not in VARIANTS:
            raise LocalDatasetError(f"POPE: expected a dataset name among {', '.join(VARIANTS)}, found {dataset!r}")
        self.prefix = VARIANTS[dataset]
        self.question_dir = local_path(question_dir, f"{dataset} question files", "question_dir", kind="dir")
        self.image_dir = local_path(image_dir, f"{dataset} images", "image_dir", kind="dir")
        chosen = setting(splits, ",".join(POPE_SPLITS))
        self.splits = [s.strip() for s in (chosen.split(",") if isinstance(chosen, str) else chosen) if s.strip()]
        self.limit_per_split = as_int(limit_per_split, "limit_per_split")
        self.seed = int(seed)
        self.prompt_suffix = DEFAULT_SUFFIX if prompt_suffix is None else str(prompt_suffix)
        self.merge_duplicates = as_bool(merge_duplicates)
        self.judge = judge
        super().__init__(dataset=dataset)

    @classmethod
    def supported_datasets(cls) -> list[str]:
        return list(VARIANTS)

    def load_data(self, dataset: str) -> pd.DataFrame:
        frames = []
        for split in self.splits:
            path = find_question_file(self.question_dir, self.prefix, split)
            frame = pd.DataFrame(read_question_file(path))
            frame["answer"] = normalize_labels(frame["label"])
            frame = sample_frame(frame, self.limit_per_split, self.seed)
            frame["category"] = split
            frame["source"] = [f"{split}:{q}" for q in frame.get("question_id", range(len(frame)))]
            frames.append(frame)
        data = pd.concat(frames, ignore_index=True)
        if self.merge_duplicates:
            order = {s: i for i, s in enumerate(self.splits)}
            data = (
                data.groupby(["image", "text", "answer"], sort=False)
                .agg(category=("category", lambda s: ",".join(sorted(set(s), key=order.get))),
                     source=("source", ",".join))
                .reset_index()
            )
        data = data.rename(columns={"text": "question", "image": "image_name"})
        data["image_path"] = [str(self.image_dir / name) for name in data["image_name"]]
        check_images(list(data["image_path"]), f"{dataset} images in {self.image_dir}")
        data.insert(0, "index", range(1, len(data) + 1))
        return data[["index", "question", "answer", "category", "image_path", "image_name", "source"]]

    def build_prompt(self, line) -> list[dict]:
        if isinstance(line, int):
            line = self.data.iloc[line]
        return [dict(type="image", value=line["image_path"]),
                dict(type="text", value=f"{line['question']}{self.prompt_suffix}")]

    def evaluate(self, eval_file: str, **judge_kwargs) -> pd.DataFrame:
        """VLMEvalKit's Y/N evaluation (extraction, ``POPE_rating`` table written to ``*_score.csv``), then the
        per-split metrics and their mean (``*_pope.csv``, ``*_pope.json``); returns the per-split table."""
        from truthprobe_eval._io import atomic_write_text

        vlmeval_table = super().evaluate(eval_file, **judge_kwargs_for(self.judge, judge_kwargs))
        scored = load(get_intermediate_file_path(eval_file, "_auxmatch"))
        result = pope_metrics(scored["answer"], scored["extracted"], scored["category"])
        table = pd.DataFrame(metrics_table(result))
        dump(table, get_intermediate_file_path(eval_file, "_pope", "csv"))
        report = {"dataset": self.dataset_name, "metrics": result, "vlmeval_pope_rating": vlmeval_table.to_dict("records"),
                  "prompt_suffix": self.prompt_suffix, "splits": self.splits}
        atomic_write_text(get_intermediate_file_path(eval_file, "_pope", "json"), json.dumps(report, indent=1) + "\n")
        print(f"POPE ({self.dataset_name}) on {os.path.basename(eval_file)}:\n{format_table(result)}")
        return table

    @classmethod
    def report_primary_metric(cls, metrics: dict | None) -> dict:
        if not isinstance(metrics, dict):
            return {}
        keys = ("split=mean|f1", "split=mean|accuracy")
        return {k: metrics[k] for k in keys if k in metrics}


from truthprobe_eval.model_adapters.startup_hook import module_finished  # noqa: E402

module_finished(__name__)  # a registration the start-up hook deferred while this module imported VLMEvalKit
