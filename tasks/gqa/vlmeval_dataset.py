"""GQA (test-dev balanced) from its published files, for VLMEvalKit's runner: ``GQA_local`` (no download).

Files, as GQA publishes them: ``questions`` is ``testdev_balanced_questions.json`` (a JSON object: question
id -> {"imageId", "question", "answer", "types": {"structural", ...}, ...}); ``image_dir`` holds
``<imageId>.jpg``. ``n_questions`` draws a seeded sample (default: all 12,578).

Prompt and scoring are VLMEvalKit's own for its ``GQA_TestDev_Balanced``: the question plus "Answer the
question using a single word or phrase.", scored by ``ImageVQADataset.evaluate`` (the ``accuracy`` match of
its VQA normalization); the structural type (verify, query, choose, logical, compare) is the category.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from vlmeval.dataset.image_vqa import ImageVQADataset

from ..vlmeval_local import LocalDatasetError, as_int, check_images, local_path, sample_frame


def read_gqa_questions(path: Path) -> pd.DataFrame:
    with open(path, encoding="utf-8") as fh:
        try:
            raw = json.load(fh)
        except json.JSONDecodeError as exc:
            raise LocalDatasetError(f"{path}: expected GQA questions JSON, found invalid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise LocalDatasetError(f"{path}: expected a JSON object question id -> question, found {type(raw).__name__}")
    rows = []
    for qid, rec in raw.items():
        missing = [k for k in ("imageId", "question", "answer") if k not in rec]
        if missing:
            raise LocalDatasetError(f"{path}: question {qid}: expected keys imageId, question, answer; missing {', '.join(missing)}")
        rows.append({"question_id": str(qid), "image_id": str(rec["imageId"]), "question": rec["question"],
                     "answer": str(rec["answer"]), "category": (rec.get("types") or {}).get("structural", "unknown")})
    return pd.DataFrame(rows)


class GQALocal(ImageVQADataset):
    """GQA test-dev balanced built from local files; see the module docstring."""

    TYPE = "VQA"
    DATASET_URL = {"GQA_local": ""}
    force_use_dataset_prompt = True

    def __init__(
        self,
        dataset: str = "GQA_local",
        questions: str | None = None,
        image_dir: str | None = None,
        n_questions: int | None = None,
        seed: int = 0,
    ):
        self.questions = local_path(questions, "GQA questions (testdev_balanced_questions.json)", "questions", kind="file")
        self.image_dir = local_path(image_dir, "GQA images", "image_dir", kind="dir")
        self.n_questions = as_int(n_questions, "n_questions")
        self.seed = int(seed)
        super().__init__(dataset=dataset)

    @classmethod
    def supported_datasets(cls) -> list[str]:
        return ["GQA_local"]

    def load_data(self, dataset: str) -> pd.DataFrame:
        data = sample_frame(read_gqa_questions(self.questions), self.n_questions, self.seed)
        data["image_path"] = [str(self.image_dir / f"{i}.jpg") for i in data["image_id"]]
        check_images(list(data["image_path"]), f"GQA images in {self.image_dir}")
        data.insert(0, "index", range(1, len(data) + 1))
        return data

    def evaluate(self, eval_file: str, **judge_kwargs):
        # VLMEvalKit's heuristic VQA scoring ("GQA" in the name selects its ``accuracy`` method); no judge
        return self.evaluate_heuristic(eval_file, **judge_kwargs)


from truthprobe_eval.model_adapters.startup_hook import module_finished  # noqa: E402

module_finished(__name__)  # a registration the start-up hook deferred while this module imported VLMEvalKit
