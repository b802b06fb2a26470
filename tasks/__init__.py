"""truthprobe_eval.tasks: the benchmarks, one folder each, with its loader, prompt and metric together.

- ``halueval/``, ``truthfulqa/``: lm-evaluation-harness task configs and their ``utils.py`` (HaluEval QA under
  HaluEval's own judge protocol and under the TruthProbe paper's protocol; TruthfulQA from a local CSV). The folder
  is an lm-eval ``--include_path``; after ``pip install truthprobe-eval`` the ``lm_eval`` command indexes it by
  itself (see ``truthprobe_eval.model_adapters.lm_eval_registration``).
- ``pope/``, ``chair/``, ``gqa/``, ``omnimedvqa/``: offline VLMEvalKit data sets (``vlmeval_dataset.py``) and, for
  POPE and CHAIR, our metric beside them (importable without VLMEvalKit); ``vlmeval_local.py`` holds what the
  local data sets share (paths, sampling, judges). ``pope/lmms_eval/`` and ``chair/lmms_eval/`` hold the same
  benchmarks as lmms-eval tasks (``pope_local``, ``chair_local``; their code in ``lmms_eval_task.py`` beside).
  Each harness is given only its own folders (``LM_EVAL_TASK_DIRS``, ``LMMS_EVAL_TASK_DIRS``).

This top-level folder is installed as ``truthprobe_eval.tasks`` (``package-dir`` in pyproject.toml), so a relative
``from ..errors import ...`` here means ``truthprobe_eval/errors.py``; import it as ``truthprobe_eval.tasks``.
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
# each harness indexes only its own task folders (both harnesses read every *.yaml under the folders they are given)
LM_EVAL_TASK_DIRS = (TASKS_DIR / "halueval", TASKS_DIR / "truthfulqa")
LMMS_EVAL_TASK_DIRS = (TASKS_DIR / "pope" / "lmms_eval", TASKS_DIR / "chair" / "lmms_eval")
LM_EVAL_INCLUDE_PATH = [str(p) for p in LM_EVAL_TASK_DIRS]  # lm-eval's TaskManager(include_path=...)
HALUEVAL_TASKS = ("halueval_qa", "halueval_qa_seed0", "halueval_qa_seed1", "halueval_qa_seed2")
HALUEVAL_GROUP = "halueval_qa_seeds"
TRUTHPROBE_TASKS = ("halueval_truthprobe", "halueval_truthprobe_seed0", "halueval_truthprobe_seed1",
                    "halueval_truthprobe_seed2")
TRUTHPROBE_GROUP = "halueval_truthprobe_seeds"
TRUTHFULQA_TASKS = ("truthfulqa_local_mc1", "truthfulqa_local_mc2", "truthfulqa_local_gen")

__all__ = ["HALUEVAL_GROUP", "HALUEVAL_TASKS", "LMMS_EVAL_TASK_DIRS", "LM_EVAL_INCLUDE_PATH", "LM_EVAL_TASK_DIRS", "TASKS_DIR", "TRUTHFULQA_TASKS", "TRUTHPROBE_GROUP", "TRUTHPROBE_TASKS"]
