"""OmniMedVQA from its published files, for VLMEvalKit's runner: ``OmniMedVQA_local`` (no download).

``root`` is the OmniMedVQA folder as published: ``QA_information/{Open-access,Restricted-access}/<subset>.json``
(each a JSON list of {"question_id", "question", "gt_answer", "option_A".."option_D", "image_path",
"question_type", "modality_type", "dataset"}) and the images under the paths ``image_path`` names, relative
to ``root``. ``subsets`` picks QA files by name (comma-separated, e.g. "SARS-CoV-2 CT-scan"; default: all),
``n_questions`` draws a seeded sample (default 500).

Items become VLMEvalKit multiple-choice rows (options A-D, the answer letter is the option equal to
``gt_answer``), prompted and scored by VLMEvalKit's ``ImageMCQDataset`` (as its own ``OmniMedVQA``), with
exact matching of the chosen option by default (no API judge); category = question type, l2-category =
modality.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import pandas as pd
from vlmeval.dataset.image_mcq import ImageMCQDataset

from ..vlmeval_local import LocalDatasetError, as_int, check_images, judge_kwargs_for, local_path, sample_frame, setting

ACCESS = ("Open-access", "Restricted-access")


def find_subset_files(root: Path, subsets: list[str] | None) -> list[Path]:
    qa = root / "QA_information"
    files = sorted(p for access in ACCESS for p in (qa / access).glob("*.json"))
    if not files:
        raise LocalDatasetError(f"OmniMedVQA: expected QA files in {qa}/Open-access or Restricted-access, found none")
    if not subsets:
        return files
    by_name = {p.stem: p for p in files}
    missing = [s for s in subsets if s not in by_name]
    if missing:
        raise LocalDatasetError(f"OmniMedVQA: expected subsets among {sorted(by_name)[:10]}..., found unknown {missing}")
    return [by_name[s] for s in subsets]


def read_items(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        try:
            items = json.load(fh)
        except json.JSONDecodeError as exc:
            raise LocalDatasetError(f"{path}: expected a JSON list of OmniMedVQA items, found invalid JSON ({exc})") from None
    if not isinstance(items, list):
        raise LocalDatasetError(f"{path}: expected a JSON list of items, found {type(items).__name__}")
    return items


def to_mcq_row(item: dict, path: Path, i: int) -> dict:
    missing = [k for k in ("question", "gt_answer", "image_path", "option_A") if k not in item]
    if missing:
        raise LocalDatasetError(f"{path}: item {i}: expected keys question, gt_answer, image_path, option_A..; missing {', '.join(missing)}")
    row = {"question_id": str(item.get("question_id", i)), "question": item["question"],
           "image_rel": item["image_path"], "subset": item.get("dataset", path.stem),
           "category": item.get("question_type", "unknown"),
           "l2-category": item.get("modality_type", item.get("modality", "unknown"))}
    answer = None
    for letter in string.ascii_uppercase[:6]:
        option = item.get(f"option_{letter}")
        if option is None or str(option).strip() == "":
            continue
        row[letter] = str(option)
        if answer is None and str(option).strip() == str(item["gt_answer"]).strip():
            answer = letter
    if answer is None:
        raise LocalDatasetError(f"{path}: item {i}: expected gt_answer {item['gt_answer']!r} among the options, found it in none")
    row["answer"] = answer
    return row


class OmniMedVQALocal(ImageMCQDataset):
    """OmniMedVQA multiple choice built from the published local files; see the module docstring."""

    TYPE = "MCQ"
    DATASET_URL = {"OmniMedVQA_local": ""}
    DATASET_MD5 = {}
    force_use_dataset_prompt = True

    def __init__(
        self,
        dataset: str = "OmniMedVQA_local",
        root: str | None = None,
        subsets: str | list | None = None,
        n_questions: int | None = None,
        seed: int = 0,
        judge: str | None = None,
    ):
        self.root = local_path(root, "OmniMedVQA folder", "root", kind="dir")
        chosen = setting(subsets)
        self.subsets = [s.strip() for s in (chosen.split(",") if isinstance(chosen, str) else chosen or []) if s.strip()]
        self.n_questions = as_int(setting(n_questions, 500), "n_questions")
        self.seed = int(seed)
        self.judge = judge
        super().__init__(dataset=dataset)

    @classmethod
    def supported_datasets(cls) -> list[str]:
        return ["OmniMedVQA_local"]

    def load_data(self, dataset: str) -> pd.DataFrame:
        rows = []
        for path in find_subset_files(self.root, self.subsets):
            rows.extend(to_mcq_row(item, path, i) for i, item in enumerate(read_items(path)))
        data = sample_frame(pd.DataFrame(rows), self.n_questions, self.seed)
        data["image_path"] = [str(self.root / rel) for rel in data.pop("image_rel")]
        check_images(list(data["image_path"]), f"OmniMedVQA images under {self.root}")
        data.insert(0, "index", range(1, len(data) + 1))
        return data

    def evaluate(self, eval_file: str, **judge_kwargs):
        return self.evaluate_heuristic(eval_file, **judge_kwargs_for(self.judge, judge_kwargs))


from truthprobe_eval.model_adapters.startup_hook import module_finished  # noqa: E402

module_finished(__name__)  # a registration the start-up hook deferred while this module imported VLMEvalKit
