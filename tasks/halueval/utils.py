"""HaluEval QA as an lm-eval task: the published HaluEval judge protocol, with seeded answer draws.

Each row gives one judged answer: the hallucinated one or the right one, drawn per row from ``seed`` (so a row's
draw does not depend on which slice is evaluated). The model answers "Yes" (hallucinated) or "No". Replies are
parsed as HaluEval's ``evaluate.py`` parses them: dots removed, then "Yes" xor "No" must occur; otherwise the reply
is unparseable (counted, and wrong for accuracy; not a "Yes" for precision, recall, F1 and the yes-ratio).

Data options reach ``load_halueval_docs`` from the task's ``dataset_kwargs`` or from lm-eval's ``--metadata``:
``halueval_path`` (default ``$TRUTHPROBE_HALUEVAL_PATH``, else the embedded copy), ``halueval_offset`` (first row,
default 292: rows 0-291 are the probing rows), ``halueval_n`` (rows, default all after the offset) and
``halueval_knowledge`` (default true: the row's knowledge goes into the prompt; false gives HaluEval's own prompt)
and ``halueval_parse`` (``ours`` or ``paper``: the TruthProbe protocol's reply rule, ``truthprobe_protocol.py``).
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np
from lm_eval.api.task import ConfigurableTask

from truthprobe_eval.datasets import draw_hallucinated  # noqa: F401  (one rule for every draw)

PATH_ENV = "TRUTHPROBE_HALUEVAL_PATH"
DEFAULT_OFFSET = 292  # rows 0..291 are what `truthprobe probe` trains on by default
POSITIVE = "Yes"  # the judge says the answer is hallucinated

# HaluEval's system prompt lives once, as the task YAML's ``description`` (_halueval_qa_template.yaml).

# HaluEval's QA judge instruction (evaluation/qa/qa_evaluation_instruction.txt, RUCAIBox/HaluEval, MIT license:
# see truthprobe_eval/data/HALUEVAL_LICENSE), verbatim including its typos and escaped quotes.
JUDGE_INSTRUCTION = """I want you act as an answer judge. Given a question and an answer, your objective is to determine if the provided answer contains non-factual or hallucinated information. You SHOULD give your judgement based on the following hallucination types and the world knowledge.

You are trying to determine if the answer misunderstands the question context and intention.
#Question#: What is a rare breed of dog that was derived as a variant of Rat Terrier, Shiloh Shepherd dog or American Hairless Terrier?
#Answer#: American Hairless Terrier
#Your Judgement#: No

You are trying to determine if there is a factual contradiction between the answer and the world knowledge. Some information in the answer might be fabricated.
#Question#: Are the New Orleans Outfall Canals the same length as the Augusta Canal?
#Answer#: No, the New Orleans Outfall Canals and the Augusta Canal are not the same length. The Orleans Canal is approximately 3.6 miles (5.8 kilometers) long while the Augusta Canal is approximately 7 miles (11.3 kilometers) long.
#Your Judgement#: Yes
#Question#: What U.S Highway gives access to Zilpo Road, and is also known as Midland Trail?
#Answer#: U.S Highway 70
#Your Judgement#: Yes

You are trying to determine if the answer is too general or too specific to answer the question at an appropriate level of specificity.
#Question#: What genre do Superheaven and Oceansize belong to?
#Answer#: Superheaven and Oceansize belong to the rock genre.
#Your Judgement#: No
#Question#: What profession do Kōbō Abe and Agatha Christie share?
#Answer#: Playwright.
#Your Judgement#: No

You are trying to determine if the answer can be correctly inferred from the knowledge.
#Question#: Which band has more members, Muse or The Raconteurs?
#Answer#: Muse has more members than The Raconteurs.
#Your Judgement#: Yes
#Question#: Which is currently more valuable, Temagami-Lorrain Mine or Meadowbank Gold Mine?
#Answer#: Meadowbank Gold Mine, since Meadowbank Gold Mine is still producing gold and the TemagamiLorrain Mine has been inactive for years.
#Your Judgement#: No

You should try your best to determine if the answer contains non-factual or hallucinated information according to the above hallucination types. The answer you give MUST be \\"Yes\\" or \\"No\\"\"."""


class HaluEvalTaskError(ValueError):
    """Bad HaluEval task options (subclassed from TruthProbeError when truthprobe_eval is importable)."""


try:  # the task folder also works as a plain --include_path folder; prefer the package's error base class
    from truthprobe_eval.errors import TruthProbeError

    class HaluEvalTaskError(TruthProbeError, ValueError):  # type: ignore[no-redef]  # noqa: F811
        """Bad HaluEval task options."""
except ImportError:  # pragma: no cover
    pass


class HaluEvalJudgeTask(ConfigurableTask):
    """The published prompt in both of HaluEval's forms.

    With ``--apply_chat_template`` the system prompt (the task's ``description``) is a system message and the
    judge text the user message, as in HaluEval's chat-model call. Without it the prompt is HaluEval's completion
    prompt, which has no system text: the description is left out instead of being glued in front of it.
    """

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        # lm-eval 0.4.13 hands the YAML's own `class` key on to TaskConfig, which does not take it
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False, **kwargs):
        if apply_chat_template or not self.config.description:
            return super().fewshot_context(doc, num_fewshot, system_instruction=system_instruction,
                                           apply_chat_template=apply_chat_template, **kwargs)
        description, self.config.description = self.config.description, ""
        try:
            return super().fewshot_context(doc, num_fewshot, system_instruction=system_instruction,
                                           apply_chat_template=apply_chat_template, **kwargs)
        finally:
            self.config.description = description


# ---- data --------------------------------------------------------------------------------------------

def judge_prompt(question: str, answer: str, knowledge: str | None = None) -> str:
    """The user turn: HaluEval's instruction, then (optionally) the knowledge, the question and the answer."""
    knowledge_line = f"\n#Knowledge#: {knowledge}" if knowledge else ""
    return f"{JUDGE_INSTRUCTION}\n{knowledge_line}\n#Question#: {question}\n#Answer#: {answer}\n#Your Judgement#:"


def doc_to_text(doc: dict) -> str:
    """lm-eval ``doc_to_text``: the judge prompt of one doc."""
    return judge_prompt(doc["question"], doc["answer"], doc["knowledge"] if doc["show_knowledge"] else None)


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise HaluEvalTaskError(f"{what}: expected true or false, found {value!r}")


def _as_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise HaluEvalTaskError(f"{what}: expected an integer >= {minimum}, found {value!r}")
    number = int(value)
    if number < minimum:
        raise HaluEvalTaskError(f"{what}: expected an integer >= {minimum}, found {number}")
    return number


def build_docs(rows: Sequence[dict], seeds: Iterable[int], offset: int = 0, knowledge: bool = True,
               parse: str = "ours") -> list[dict]:
    """One doc per (row, seed), row-major, so that ``--limit 3k`` covers k rows under every seed. ``parse``: the
    TruthProbe protocol's reply rule (``ours`` or ``paper``; HaluEval's own judge has one rule)."""
    seeds = [int(s) for s in seeds]
    index = np.arange(offset, offset + len(rows))
    draws = {seed: draw_hallucinated(seed, index) for seed in seeds}
    docs = []
    for i, row in enumerate(rows):
        for seed in seeds:
            hallucinated = bool(draws[seed][i])
            answer = row["hallucinated_answer"] if hallucinated else row["right_answer"]
            docs.append({
                "row": int(offset + i),
                "seed": seed,
                "knowledge": row["knowledge"],
                "question": row["question"],
                "answer": answer,
                "hallucinated": hallucinated,
                "label": "Yes" if hallucinated else "No",
                "show_knowledge": bool(knowledge),
                "parse": parse,
            })
    return docs


def load_halueval_docs(
    draw_seeds: Sequence[int] = (0,),
    halueval_path: str | None = None,
    halueval_offset: Any = DEFAULT_OFFSET,
    halueval_n: Any = None,
    halueval_knowledge: Any = True,
    halueval_parse: str = "ours",
    **_lm_eval_metadata: Any,
):
    """lm-eval ``custom_dataset``: a ``DatasetDict`` with a ``test`` split of judge docs.

    lm-eval passes its metadata (model_args, ``--metadata``, the task's version) as further keywords: ignored.
    """
    import datasets

    from truthprobe_eval.datasets import load_halueval

    if isinstance(draw_seeds, (int, str)):
        draw_seeds = [draw_seeds]
    seeds = [_as_int(s, "draw_seeds", 0) for s in draw_seeds]
    if not seeds:
        raise HaluEvalTaskError("draw_seeds: expected at least one seed, found none")
    offset = _as_int(halueval_offset, "halueval_offset", 0)
    n = None if halueval_n is None else _as_int(halueval_n, "halueval_n", 1)
    path = halueval_path or os.environ.get(PATH_ENV) or None
    rows = load_halueval(path, offset=offset, n=n)
    if not rows:
        raise HaluEvalTaskError(f"HaluEval rows from {offset} on: expected at least one row after halueval_offset={offset}, "
                                f"found none in {path or 'the embedded HaluEval QA set'}")
    if halueval_parse not in ("ours", "paper"):
        raise HaluEvalTaskError(f"halueval_parse: expected ours or paper, found {halueval_parse!r}")
    docs = build_docs(rows, seeds, offset, _as_bool(halueval_knowledge, "halueval_knowledge"), halueval_parse)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


# ---- replies and metrics -------------------------------------------------------------------------------

def parse_judgement(reply: str) -> str | None:
    """"Yes", "No", or None when the reply has both or neither (HaluEval's rule, after removing dots)."""
    text = (reply or "").replace(".", "")
    has_yes, has_no = "Yes" in text, "No" in text
    if has_yes == has_no:
        return None
    return "Yes" if has_yes else "No"


def judgement_record(doc: dict, reply: str) -> tuple[int, bool, str | None]:
    """(seed, gold is "Yes", parsed judgement): what every metric of one doc aggregates."""
    return int(doc["seed"]), bool(doc["hallucinated"]), parse_judgement(reply)


SINGLE_METRICS = ("acc", "precision", "recall", "f1", "yes_ratio", "pred_yes_share", "gold_yes_share", "unparseable")
STD_METRICS = ("acc_std", "precision_std", "recall_std", "f1_std", "yes_ratio_std")


def is_correct(record: Sequence) -> float:
    """1.0 when the parsed judgement equals the gold one, else 0.0 (unparseable replies are wrong)."""
    _seed, gold_yes, pred = record
    return float(pred == ("Yes" if gold_yes else "No"))


def process_results(doc: dict, results: list[str]) -> dict[str, Any]:
    """Every corpus metric aggregates the doc's record; ``correct`` is the per-sample 0/1 that paired tests use."""
    record = judgement_record(doc, results[0])
    return {**{name: record for name in SINGLE_METRICS}, "correct": is_correct(record)}


def process_results_seeds(doc: dict, results: list[str]) -> dict[str, Any]:
    record = judgement_record(doc, results[0])
    return {**{name: record for name in SINGLE_METRICS + STD_METRICS}, "correct": is_correct(record)}


def confusion(records: Iterable[Sequence]) -> dict[str, int]:
    """Counts with "Yes" (hallucinated) as the positive class; an unparseable reply is never a positive."""
    c = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "correct": 0, "unparseable": 0, "n": 0}
    for _seed, gold_yes, pred in records:
        pred_yes = pred == POSITIVE
        c["n"] += 1
        c["unparseable"] += pred is None
        c["correct"] += pred == ("Yes" if gold_yes else "No")
        c["tp" if gold_yes and pred_yes else "fp" if pred_yes else "fn" if gold_yes else "tn"] += 1
    return c


def scores_from_confusion(c: dict[str, int]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio as fractions (0 where a ratio is undefined); P/R/F1 from
    ``truthprobe_eval.metrics`` (scikit-learn), an unparseable reply counting as wrong for the accuracy."""
    from truthprobe_eval.metrics import precision_recall_f1

    n = c["n"]
    gold = [True] * (c["tp"] + c["fn"]) + [False] * (c["fp"] + c["tn"])
    pred = [True] * c["tp"] + [False] * c["fn"] + [True] * c["fp"] + [False] * c["tn"]
    precision, recall, f1 = precision_recall_f1(gold, pred)
    return {"acc": c["correct"] / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (c["tp"] + c["fp"]) / n if n else 0.0,
            "pred_yes_share": (c["tp"] + c["fp"]) / n if n else 0.0, "gold_yes_share": (c["tp"] + c["fn"]) / n if n else 0.0}


def per_seed_scores(records: Iterable[Sequence]) -> dict[int, dict[str, float]]:
    """Metric values for each seed present in ``records``."""
    by_seed: dict[int, list] = defaultdict(list)
    for record in records:
        by_seed[int(record[0])].append(record)
    return {seed: scores_from_confusion(confusion(recs)) for seed, recs in sorted(by_seed.items())}


def _mean_over_seeds(metric: str, records) -> float:
    values = [s[metric] for s in per_seed_scores(records).values()]
    return float(np.mean(values)) if values else 0.0


def _std_over_seeds(metric: str, records) -> float:
    """Population standard deviation (ddof=0) over seeds; 0 for a single seed."""
    values = [s[metric] for s in per_seed_scores(records).values()]
    return float(np.std(values)) if values else 0.0


def acc_agg(records) -> float:
    return _mean_over_seeds("acc", records)


def precision_agg(records) -> float:
    return _mean_over_seeds("precision", records)


def recall_agg(records) -> float:
    return _mean_over_seeds("recall", records)


def f1_agg(records) -> float:
    return _mean_over_seeds("f1", records)


def yes_ratio_agg(records) -> float:
    return _mean_over_seeds("yes_ratio", records)


def pred_yes_share_agg(records) -> float:
    """The share of "Yes" replies (the same number as ``yes_ratio``, named as in the TruthProbe-protocol tasks)."""
    return _mean_over_seeds("pred_yes_share", records)


def gold_yes_share_agg(records) -> float:
    """The share of gold "Yes" labels (what the TruthProbe paper's code calls ``yes_ratio``)."""
    return _mean_over_seeds("gold_yes_share", records)


def unparseable_count(records) -> int:
    """How many replies (over all docs, all seeds) were neither a clear "Yes" nor a clear "No"."""
    return int(sum(1 for _seed, _gold, pred in records if pred is None))


def acc_std(records) -> float:
    return _std_over_seeds("acc", records)


def precision_std(records) -> float:
    return _std_over_seeds("precision", records)


def recall_std(records) -> float:
    return _std_over_seeds("recall", records)


def f1_std(records) -> float:
    return _std_over_seeds("f1", records)


def yes_ratio_std(records) -> float:
    return _std_over_seeds("yes_ratio", records)
