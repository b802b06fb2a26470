"""HaluEval QA judge evaluations through lm-eval on one loaded model, one intervention per call.

``truthprobe run``, ``truthprobe ablate`` and ``truthprobe compare-methods`` share this: the model is wrapped once
as ``truthgated`` and each call attaches an intervention (any method), evaluates one row range with lm-eval's task of the chosen protocol and draw
(``halueval_truthprobe_seed<N>``: the TruthProbe paper's protocol, the default; ``halueval_qa_seed<N>``: HaluEval's
own judge) and writes lm-eval's result and per-sample files. Each logged sample also gets a ``truthprobe`` record:
the parsed "Yes" (hallucinated) prediction and the first step's Yes-minus-No log-odds, what paired tests and the
AUROC read back (``per_sample``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .._io import atomic_write_text, read_jsonl
from ..errors import TruthProbeError

if TYPE_CHECKING:
    from ..interventions import Intervention

METRICS = ("acc", "f1", "precision", "recall", "pred_yes_share", "gold_yes_share", "unparseable", "margin_auroc")
LABELS = {"acc": "accuracy", "f1": "F1", "precision": "precision", "recall": "recall",
          "pred_yes_share": "predicted yes", "gold_yes_share": "gold yes", "unparseable": "unparseable",
          "margin_auroc": "margin AUROC"}
PROTOCOLS = {"truthprobe": "halueval_truthprobe_seed{seed}", "halueval": "halueval_qa_seed{seed}"}


@dataclass
class Evaluation:
    name: str
    split: str
    intervention: dict[str, Any]  # its describe(): method, settings, files, label
    metrics: dict[str, float]
    rows: tuple[int, int]  # [first, last + 1)
    seconds: float
    result_file: str
    samples_file: str


@dataclass
class JudgeSettings:
    """How the judge task runs: data (None: the embedded HaluEval), answer draw, prompt and batching."""

    data: str | None = None
    protocol: str = "truthprobe"
    draw_seed: int = 0
    knowledge: bool = True
    chat: bool = False
    batch_size: int = 8
    device: str = "cpu"
    prefix_cache: bool = True
    parse: str = "ours"  # the TruthProbe protocol's reply rule: ours, or paper (the published regex)

    def task(self, draw_seed: int | None = None) -> str:
        if self.protocol not in PROTOCOLS:
            raise TruthProbeError(f"protocol: expected one of {', '.join(PROTOCOLS)}, found {self.protocol!r}")
        return PROTOCOLS[self.protocol].format(seed=self.draw_seed if draw_seed is None else draw_seed)


def predicted_yes(protocol: str, reply: str, parse: str = "ours") -> bool:
    """The protocol's own parse of a reply: did the judge say the answer is hallucinated?"""
    if protocol == "truthprobe":
        from ..tasks.halueval.truthprobe_protocol import parse_reply

        return parse_reply(reply, parse) == "yes"
    from ..tasks.halueval.utils import parse_judgement

    return parse_judgement(reply) == "Yes"


def per_sample(samples_file: "str | Path") -> dict[str, np.ndarray]:
    """Arrays in row order from a judge's samples file: row, seed, gold_yes, pred_yes, correct, margin."""
    records = []
    for number, s in read_jsonl(samples_file, TruthProbeError):
        if "truthprobe" not in s:
            raise TruthProbeError(f"{samples_file}, line {number}: expected samples written by HaluEvalJudge (with a "
                                  "'truthprobe' record), found a sample without one")
        tp = s["truthprobe"]
        margin = tp.get("yes_no_margin")
        records.append((s["doc"]["row"], s["doc"]["seed"], s["doc"]["hallucinated"], tp["pred_yes"],
                        float(s["correct"]), np.nan if margin is None else margin))
    records.sort(key=lambda r: (r[0], r[1]))
    columns = list(zip(*records)) if records else [[]] * 6
    return {"row": np.asarray(columns[0], dtype=np.int64), "seed": np.asarray(columns[1], dtype=np.int64),
            "gold_yes": np.asarray(columns[2], dtype=bool), "pred_yes": np.asarray(columns[3], dtype=bool),
            "correct": np.asarray(columns[4], dtype=float), "margin": np.asarray(columns[5], dtype=float)}


_ENV_INFO: dict[str, Any] | None = None


def simple_evaluate_here(**kwargs: Any) -> dict:
    """lm-eval's ``simple_evaluate`` on a model loaded in this process, its environment record gathered once.

    Every call records the environment (torch's ``collect_env``: a dozen subprocesses, ``pip list`` among them, about
    0.3 s here, more on a slower machine); a job that evaluates ten times in one process records the same one ten
    times. The first record is kept and copied into every later result, which carries it as before."""
    import copy

    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "add_env_info", None)
    if original is None:  # another lm-eval: nothing to share
        return evaluator.simple_evaluate(**kwargs)

    def add_env_info(storage: dict) -> None:
        global _ENV_INFO
        if _ENV_INFO is None:
            record: dict[str, Any] = {}
            original(record)
            _ENV_INFO = record
        storage.update(copy.deepcopy(_ENV_INFO))

    evaluator.add_env_info = add_env_info
    try:
        return evaluator.simple_evaluate(**kwargs)
    finally:
        evaluator.add_env_info = original


def write_lm_eval_outputs(folder: Path, name: str, results: dict) -> tuple[Path, Path]:
    """lm-eval's result dict as ``<name>.json`` and its logged samples as ``<name>.samples.jsonl``."""
    from lm_eval.utils import handle_non_serializable

    from ..interventions import relative_descriptions

    samples = results.pop("samples", {})
    result_file = atomic_write_text(folder / f"{name}.json",
                                    json.dumps(relative_descriptions(results, folder), indent=2,
                                               default=handle_non_serializable, ensure_ascii=False))
    lines = [json.dumps(s, default=handle_non_serializable, ensure_ascii=False)
             for task_samples in samples.values() for s in task_samples]
    samples_file = atomic_write_text(folder / f"{name}.samples.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return result_file, samples_file


class HaluEvalJudge:
    """One loaded model wrapped once as ``truthgated``; each call evaluates one row range under one intervention."""

    def __init__(self, model: Any, tokenizer: Any, settings: JudgeSettings, out: "str | Path",
                 log: Callable[[str], None] = print, lm: Any = None) -> None:
        from ..model_adapters.lm_eval_truthgated import TruthGatedLM

        self.settings, self.out, self.log = settings, Path(out), log
        self.task = settings.task()  # a bad protocol fails before the model is wrapped
        if lm is None:  # one wrapped model can serve several evaluators (HaluEval and TruthfulQA)
            lm = TruthGatedLM(pretrained=model, tokenizer=tokenizer, method="none", batch_size=settings.batch_size,
                              device=settings.device, prefix_cache=settings.prefix_cache)
        self.lm = lm

    def __call__(self, name: str, split: str, offset: int, n: int | None, intervention: "Intervention | dict[str, Any]",
                 draw_seed: int | None = None) -> Evaluation:
        """Evaluate rows ``[offset, offset + n)`` under ``intervention`` (or ``build`` keywords, method default
        truthprobe); answer draw: the settings' unless given."""
        from lm_eval.tasks import TaskManager

        from ..tasks import LM_EVAL_INCLUDE_PATH

        s = self.settings
        task = s.task(draw_seed)
        if isinstance(intervention, dict):
            self.lm.set_intervention(**intervention)
        else:
            self.lm.set_intervention(intervention)
        self.lm.yes_no_margins.clear()
        metadata = {"halueval_offset": offset, "halueval_n": n, "halueval_knowledge": s.knowledge,
                    "halueval_parse": s.parse}
        if s.data is not None:
            metadata["halueval_path"] = str(s.data)
        manager = TaskManager(include_path=LM_EVAL_INCLUDE_PATH, include_defaults=False, metadata=metadata)
        start = time.perf_counter()
        results = simple_evaluate_here(model=self.lm, tasks=[task], task_manager=manager, log_samples=True,
                                       apply_chat_template=s.chat, bootstrap_iters=0)
        seconds = time.perf_counter() - start
        values = results["results"][task]
        metrics = {m: float(values[f"{m},none"]) for m in METRICS if f"{m},none" in values}
        samples = results["samples"][task]
        for sample in samples:
            context = sample["arguments"][0][0]
            sample["truthprobe"] = {"pred_yes": predicted_yes(s.protocol, sample["resps"][0][0], s.parse),
                                    "yes_no_margin": self.lm.yes_no_margins.get(context)}
        from ..paired_stats import margin_auroc

        auroc = margin_auroc([x["doc"]["hallucinated"] for x in samples],
                             [np.nan if x["truthprobe"]["yes_no_margin"] is None else x["truthprobe"]["yes_no_margin"]
                              for x in samples])
        metrics["margin_auroc"] = float("nan") if auroc is None else auroc
        rows = sorted(sample["doc"]["row"] for sample in samples)
        result_file, samples_file = write_lm_eval_outputs(self.out / "lm_eval", name, results)
        described = self.lm.intervention.describe()
        self.log(f"{split:>10} {name:<22} rows {rows[0]}-{rows[-1]}: F1 {100 * metrics['f1']:.1f}, accuracy "
                 f"{100 * metrics['acc']:.1f}, predicted yes {100 * metrics['pred_yes_share']:.1f}, margin AUROC "
                 f"{metrics['margin_auroc']:.3f} ({seconds:.0f} s)")
        return Evaluation(name, split, described, metrics, (rows[0], rows[-1] + 1), round(seconds, 2),
                          str(result_file), str(samples_file))


def paired_comparison(baseline: Evaluation, run: Evaluation, seed: int = 0) -> dict[str, Any]:
    """``compare_paired`` of two judge runs on the same rows, read from their samples files."""
    from ..paired_stats import compare_paired

    a, b = per_sample(baseline.samples_file), per_sample(run.samples_file)
    if not np.array_equal(a["row"], b["row"]) or not np.array_equal(a["gold_yes"], b["gold_yes"]):
        raise TruthProbeError(f"paired test: {baseline.samples_file} and {run.samples_file} do not hold the same rows")
    return compare_paired(a["gold_yes"], a["pred_yes"], b["pred_yes"], a["margin"], b["margin"], seed=seed)


def select_best(evaluations: Sequence[Evaluation]) -> Evaluation:
    """Highest F1; ties go to higher accuracy, then to the earlier grid entry."""
    gated = [e for e in evaluations if not e.intervention.get("identity")]
    if not gated:
        raise TruthProbeError("selection: expected at least one intervened validation run, found none")
    return max(gated, key=lambda e: (round(e.metrics["f1"], 12), round(e.metrics["acc"], 12), -gated.index(e)))



__all__ = ["Evaluation", "HaluEvalJudge", "JudgeSettings", "LABELS", "METRICS", "PROTOCOLS", "paired_comparison",
           "per_sample",
           "predicted_yes", "select_best", "simple_evaluate_here", "write_lm_eval_outputs"]
