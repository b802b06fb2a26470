"""HaluEval QA judge evaluations through lm-eval on one loaded model, one gate per call.

``truthprobe run`` and ``truthprobe ablate`` share this: the model is wrapped once as ``truthgated`` and each call
sets a gate, evaluates one row range with lm-eval's ``halueval_qa_seed<N>`` task and writes lm-eval's result and
per-sample files.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ._io import atomic_write_text
from .errors import TruthProbeError

METRICS = ("acc", "f1", "precision", "recall", "yes_ratio", "unparseable")
LABELS = {"acc": "accuracy", "f1": "F1", "precision": "precision", "recall": "recall", "yes_ratio": "yes-ratio",
          "unparseable": "unparseable"}


@dataclass
class Evaluation:
    name: str
    split: str
    gate: dict[str, Any]
    metrics: dict[str, float]
    rows: tuple[int, int]  # [first, last + 1)
    seconds: float
    result_file: str
    samples_file: str


@dataclass
class JudgeSettings:
    """How the judge task runs: data (None: the embedded HaluEval), answer draw, prompt and batching."""

    data: str | None = None
    draw_seed: int = 0
    knowledge: bool = True
    chat: bool = False
    batch_size: int = 8
    device: str = "cpu"


def write_lm_eval_outputs(folder: Path, name: str, results: dict) -> tuple[Path, Path]:
    """lm-eval's result dict as ``<name>.json`` and its logged samples as ``<name>.samples.jsonl``."""
    from lm_eval.utils import handle_non_serializable

    samples = results.pop("samples", {})
    result_file = atomic_write_text(folder / f"{name}.json",
                                    json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    lines = [json.dumps(s, default=handle_non_serializable, ensure_ascii=False)
             for task_samples in samples.values() for s in task_samples]
    samples_file = atomic_write_text(folder / f"{name}.samples.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return result_file, samples_file


class HaluEvalJudge:
    """One loaded model wrapped once as ``truthgated``; each call evaluates one row range under one gate."""

    def __init__(self, model: Any, tokenizer: Any, settings: JudgeSettings, out: "str | Path",
                 log: Callable[[str], None] = print) -> None:
        from .model_adapters.lm_eval_truthgated import TruthGatedLM

        self.settings, self.out, self.log = settings, Path(out), log
        self.lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, gate="none", batch_size=settings.batch_size,
                               device=settings.device)
        self.task = f"halueval_qa_seed{settings.draw_seed}"

    def __call__(self, name: str, split: str, offset: int, n: int | None, gate_args: dict[str, Any]) -> Evaluation:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        from .tasks import TASKS_DIR

        s = self.settings
        self.lm.set_gate(**gate_args)
        metadata = {"halueval_offset": offset, "halueval_n": n, "halueval_knowledge": s.knowledge}
        if s.data is not None:
            metadata["halueval_path"] = str(s.data)
        manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
        start = time.perf_counter()
        results = simple_evaluate(model=self.lm, tasks=[self.task], task_manager=manager, log_samples=True,
                                  apply_chat_template=s.chat, bootstrap_iters=0)
        seconds = time.perf_counter() - start
        values = results["results"][self.task]
        metrics = {m: float(values[f"{m},none"]) for m in METRICS}
        rows = sorted(sample["doc"]["row"] for sample in results["samples"][self.task])
        result_file, samples_file = write_lm_eval_outputs(self.out / "lm_eval", name, results)
        gate = self.lm.gate_settings.describe()
        self.log(f"{split:>10} {name:<22} rows {rows[0]}-{rows[-1]}: F1 {100 * metrics['f1']:.1f}, accuracy "
                 f"{100 * metrics['acc']:.1f}, yes-ratio {100 * metrics['yes_ratio']:.1f} ({seconds:.0f} s)")
        return Evaluation(name, split, gate, metrics, (rows[0], rows[-1] + 1), round(seconds, 2),
                          str(result_file), str(samples_file))


def select_best(evaluations: Sequence[Evaluation]) -> Evaluation:
    """Highest F1; ties go to higher accuracy, then to the earlier grid entry."""
    gated = [e for e in evaluations if e.gate["gate"] != "none"]
    if not gated:
        raise TruthProbeError("selection: expected at least one gated validation run, found none")
    return max(gated, key=lambda e: (round(e.metrics["f1"], 12), round(e.metrics["acc"], 12), -gated.index(e)))



__all__ = ["Evaluation", "HaluEvalJudge", "JudgeSettings", "LABELS", "METRICS", "select_best", "write_lm_eval_outputs"]
